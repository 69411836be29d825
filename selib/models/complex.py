"""Complex-valued building blocks and complex masking (lessons ``02_stft_and_masks`` and ``03_dccrn``).

A complex feature map is stored as one real tensor whose channel axis (dim 1, or the last axis for
sequences) holds the real parts followed by the imaginary parts, as the DCCRN author code does. A
complex layer ``W = A + iB`` is built from two real layers ``A`` (``real``) and ``B`` (``imag``):
``W(x + iy) = (A x - B y) + i (B x + A y)``. Each real layer keeps its own bias, so the bias of the
real output is ``b_A - b_B`` and of the imaginary output ``b_A + b_B`` (the author's layout, which the
published parameter counts assume).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from selib.models.blocks import rnn_sequence


def _complex_apply(real: nn.Module, imag: nn.Module, x: torch.Tensor, dim: int) -> torch.Tensor:
    """``(A + iB)(x_r + i x_i)`` for ``x`` holding ``[x_r, x_i]`` along ``dim``; one call per layer."""
    batch = x.shape[0]
    parts = torch.cat(x.chunk(2, dim), 0)  # [x_r; x_i] stacked on the batch axis
    a, b = real(parts), imag(parts)
    a_r, a_i, b_r, b_i = a[:batch], a[batch:], b[:batch], b[batch:]
    return torch.cat([a_r - b_i, b_r + a_i], dim)


def complex_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two complex feature maps: real parts together, then imaginary parts."""
    a_r, a_i = a.chunk(2, 1)
    b_r, b_i = b.chunk(2, 1)
    return torch.cat([a_r, b_r, a_i, b_i], 1)


class ComplexConv2d(nn.Module):
    """Complex 2-D convolution; ``in_channels``/``out_channels`` count real + imaginary channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        if in_channels % 2 or out_channels % 2:
            raise ValueError(f"complex layers need even channel counts (real + imaginary), got "
                             f"{in_channels} -> {out_channels}")
        args = (in_channels // 2, out_channels // 2, kernel_size, stride, padding)
        self.real, self.imag = nn.Conv2d(*args), nn.Conv2d(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _complex_apply(self.real, self.imag, x, 1)


class ComplexConvTranspose2d(nn.Module):
    """Complex 2-D transposed convolution; channel counts are real + imaginary totals."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0):
        super().__init__()
        if in_channels % 2 or out_channels % 2:
            raise ValueError(f"complex layers need even channel counts (real + imaginary), got "
                             f"{in_channels} -> {out_channels}")
        args = (in_channels // 2, out_channels // 2, kernel_size, stride, padding, output_padding)
        self.real, self.imag = nn.ConvTranspose2d(*args), nn.ConvTranspose2d(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _complex_apply(self.real, self.imag, x, 1)


class LSTM(nn.Module):
    """A one-layer unidirectional LSTM on ``[B, T, input]`` that returns only its output sequence. With
    ``states`` (a dict; streaming, lesson ``11_results_and_deployment``) it starts from ``states[self]``
    and leaves its final state there."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x: torch.Tensor, states: dict | None = None) -> torch.Tensor:
        if states is None:
            return rnn_sequence(self.lstm, x)
        y, states[self] = self.lstm(x, states.get(self))
        return y


class ComplexLSTM(nn.Module):
    """DCCRN-CL's "naive" complex LSTM layer on ``[B, T, 2 * input]`` sequences.

    Two real LSTMs ``A`` and ``B`` (``hidden_size / 2`` units each) are combined like a complex
    product: real out ``A(x_r) - B(x_i)``, imaginary out ``B(x_r) + A(x_i)``. With ``projection`` set,
    a complex-style pair of linear layers maps each part to ``projection / 2`` features (no mixing of
    real and imaginary parts, as in the author code).
    """

    def __init__(self, input_size: int, hidden_size: int, projection: int | None = None):
        super().__init__()
        if input_size % 2 or hidden_size % 2 or (projection or 0) % 2:
            raise ValueError(f"complex LSTM sizes count real + imaginary parts and must be even, got "
                             f"input {input_size}, hidden {hidden_size}, projection {projection}")
        self.real = LSTM(input_size // 2, hidden_size // 2)
        self.imag = LSTM(input_size // 2, hidden_size // 2)
        self.projection = projection
        if projection:
            self.proj_real = nn.Linear(hidden_size // 2, projection // 2)
            self.proj_imag = nn.Linear(hidden_size // 2, projection // 2)

    def forward(self, x: torch.Tensor, states: dict | None = None) -> torch.Tensor:
        """``states``: as in :class:`LSTM`, for both real LSTMs."""
        out = _complex_apply(partial(self.real, states=states), partial(self.imag, states=states), x, -1)
        if not self.projection:
            return out
        real, imag = out.chunk(2, -1)
        return torch.cat([self.proj_real(real), self.proj_imag(imag)], -1)


MASK_MODES = ("E", "C", "R")


def apply_mask(spec: torch.Tensor, mask: torch.Tensor, mode: str = "E", eps: float = 1e-8) -> torch.Tensor:
    """Apply a complex mask ``mask`` to the complex spectrum ``spec`` (same shape, complex dtype).

    - ``E``: bounded polar mask, ``tanh(|M|) |Y| exp(i(angle Y + angle M))``, computed as
      ``Y * M * tanh(|M|) / |M|`` (the same value without ``atan2``);
    - ``C``: complex product ``Y * M``;
    - ``R``: real and imaginary parts scaled separately, ``Re Y Re M + i Im Y Im M``.
    """
    if mode == "E":
        magnitude = torch.sqrt(mask.real ** 2 + mask.imag ** 2 + eps)
        return spec * mask * (torch.tanh(magnitude) / magnitude)
    if mode == "C":
        return spec * mask
    if mode == "R":
        return torch.complex(spec.real * mask.real, spec.imag * mask.imag)
    raise ValueError(f"unknown masking mode {mode!r}; choose one of {MASK_MODES}")

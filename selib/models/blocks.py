"""Real-valued building blocks shared by the models (lesson ``04_convtasnet_dptnet``).

Written once here: the three layer norms of the Conv-TasNet paper (global ``gLN``, cumulative
``cLN``, channel-wise ``chLN``), the learned waveform encoder/decoder pair padded to its stride,
dual-path chunking with overlap-add, the mask activations, and the one way every model runs its
recurrent layers (:func:`rnn_sequence`, which keeps the time axis dynamic under ``torch.export``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class GlobalLayerNorm(nn.GroupNorm):
    """gLN: normalise ``[B, C, T]`` over channels *and all frames*; non-causal (uses the future)."""

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__(1, channels, eps=eps)


class CumulativeLayerNorm(nn.Module):
    """cLN, causal: frame ``t`` (axis 2) of ``[B, C, T]`` or ``[B, C, T, F]`` is normalised with the
    statistics of frames ``0..t`` over the channels (and every bin), or with ``per_channel`` over the bins
    of each channel alone (the causal instance norm of ``[B, C, T, F]``, causal DPDCRN, lesson
    ``05_dpdcrn``); then a per-channel affine map. :meth:`moments` and :meth:`normalise` let a streamer
    (:mod:`selib.streaming`) keep the running sums itself."""

    def __init__(self, channels: int, eps: float = 1e-8, per_channel: bool = False):
        super().__init__()
        self.eps, self.per_channel = eps, per_channel
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-frame sums of ``x`` and ``x**2`` over the normalised axes, and how many values each has."""
        dims = (() if self.per_channel else (1,)) + tuple(range(3, x.dim()))
        count = math.prod(x.shape[d] for d in dims)
        return x.sum(dims, keepdim=True), x.pow(2).sum(dims, keepdim=True), count

    def normalise(self, x: torch.Tensor, total: torch.Tensor, power: torch.Tensor, count) -> torch.Tensor:
        """``x`` normalised with the running sums ``total``, ``power`` of ``count`` values."""
        mean, power = total / count, power / count
        x = (x - mean) / torch.sqrt((power - mean.pow(2)).clamp_min(0) + self.eps)
        affine = (-1,) + (1,) * (x.dim() - 2)
        return x * self.weight.view(affine) + self.bias.view(affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total, power, count = self.moments(x)
        frames = torch.arange(1, x.shape[2] + 1, device=x.device, dtype=x.dtype).view((-1,) + (1,) * (x.dim() - 3))
        return self.normalise(x, total.cumsum(2), power.cumsum(2), count * frames)


class ChannelLayerNorm(nn.LayerNorm):
    """chLN: normalise every frame of ``[B, C, T]`` over its channels alone; causal."""

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, -1)).transpose(1, -1)


NORMS = {"gLN": GlobalLayerNorm, "cLN": CumulativeLayerNorm, "chLN": ChannelLayerNorm}
CAUSAL_NORMS = ("cLN", "chLN")


def make_norm(kind: str, channels: int) -> nn.Module:
    """The norm named ``kind`` (``gLN``, ``cLN`` or ``chLN``) for ``channels`` channels."""
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; choose one of {sorted(NORMS)}")
    return NORMS[kind](channels)


MASKS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def mask_activation(name: str) -> nn.Module:
    """The activation that turns network outputs into a real mask: ``sigmoid`` (bounded) or ``relu``."""
    if name not in MASKS:
        raise ValueError(f"unknown mask activation {name!r}; choose one of {sorted(MASKS)}")
    return MASKS[name]()


class WaveCodec(nn.Module):
    """Learned filterbank pair: ``encode`` a waveform into frames, ``decode`` frames back.

    The encoder is a bias-free ``Conv1d(1, N, L, stride=L/2)`` and the decoder its transposed
    counterpart, both padded by one stride at each end (torchaudio's Conv-TasNet layout). The input is
    zero-padded at the end to a whole number of strides, so ``decode`` returns exactly ``T`` samples.
    Output sample ``n`` depends on inputs up to ``n + L - 1``: :attr:`lookahead` is ``L - 1``.
    """

    def __init__(self, n_filters: int, kernel_size: int, relu: bool = False):
        super().__init__()
        if kernel_size < 2 or kernel_size % 2:
            raise ValueError(f"encoder window must be even and >= 2 (stride = window / 2), got {kernel_size}")
        self.stride = kernel_size // 2
        self.lookahead = kernel_size - 1
        self.relu = relu
        self.encoder = nn.Conv1d(1, n_filters, kernel_size, self.stride, padding=self.stride, bias=False)
        self.decoder = nn.ConvTranspose1d(n_filters, 1, kernel_size, self.stride, padding=self.stride,
                                          bias=False)

    def frames(self, length: int) -> int:
        """Number of encoder frames for a waveform of ``length`` samples."""
        return -(-length // self.stride) + 1

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, T] -> [B, N, frames(T)]``."""
        if wav.dim() != 2:
            raise ValueError(f"models take waveforms [B, T], got shape {tuple(wav.shape)}")
        wav = F.pad(wav, (0, (-wav.shape[-1]) % self.stride))
        feats = self.encoder(wav.unsqueeze(1))
        return F.relu(feats) if self.relu else feats

    def decode(self, feats: torch.Tensor, length: int) -> torch.Tensor:
        """``[B, N, frames] -> [B, length]``."""
        return self.decoder(feats)[:, 0, :length]


def chunk(x: torch.Tensor, size: int) -> torch.Tensor:
    """Split ``[B, C, T]`` into 50 %-overlapping chunks ``[B, C, size, S]`` (dual-path processing).

    The sequence is zero-padded by ``size // 2`` at both ends (and at the end to a whole hop), so every
    frame lies in exactly two chunks; :func:`overlap_add` sums them back.
    """
    if size < 2 or size % 2:
        raise ValueError(f"chunk size must be even and >= 2 (hop = size / 2), got {size}")
    hop = size // 2
    batch, channels, length = x.shape
    x = F.pad(x, (hop, hop + (-length) % hop))
    chunks = F.unfold(x.unsqueeze(2), kernel_size=(1, size), stride=(1, hop))
    return chunks.view(batch, channels, size, -1)


def overlap_add(chunks: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`chunk` up to the sum of overlaps: ``[B, C, size, S] -> [B, C, length]``."""
    batch, channels, size, n_chunks = chunks.shape
    hop = size // 2
    padded = (n_chunks - 1) * hop + size
    x = F.fold(chunks.reshape(batch, channels * size, n_chunks), output_size=(1, padded),
               kernel_size=(1, size), stride=(1, hop))
    return x.view(batch, channels, padded)[..., hop:hop + length]


@torch.library.custom_op("selib::recurrent", mutates_args=())
def _recurrent(x: torch.Tensor, weights: list[torch.Tensor], mode: str, bidirectional: bool) -> torch.Tensor:
    """One batch-first LSTM/GRU layer (zero initial state) on ``[B, T, I]``: its output sequence."""
    directions = 2 if bidirectional else 1
    h0 = x.new_zeros(directions, x.shape[0], weights[1].shape[1])
    run = {"LSTM": lambda: torch.lstm(x, (h0, h0), weights, True, 1, 0.0, False, bidirectional, True),
           "GRU": lambda: torch.gru(x, h0, weights, True, 1, 0.0, False, bidirectional, True)}
    return run[mode]()[0]


@_recurrent.register_fake
def _(x, weights, mode, bidirectional):
    return x.new_empty(x.shape[0], x.shape[1], (2 if bidirectional else 1) * weights[1].shape[1])


def rnn_sequence(rnn: nn.LSTM | nn.GRU, x: torch.Tensor) -> torch.Tensor:
    """The output sequence ``[B, T, D * H]`` of a one-layer batch-first ``nn.LSTM``/``nn.GRU`` on ``[B, T, I]``.

    Eagerly this is ``rnn(x)[0]``. Under ``torch.export`` the layer becomes one ``selib::recurrent``
    operator, because export otherwise unrolls the recurrence over the example's time steps and the
    exported model would accept that length only (lesson ``11_results_and_deployment``);
    :mod:`selib.export` maps the operator to the ONNX ``LSTM``/``GRU`` operators.
    """
    if rnn.num_layers != 1 or not rnn.batch_first or not rnn.bias:
        raise ValueError("rnn_sequence runs one-layer, batch-first recurrent layers with biases")
    if torch.compiler.is_exporting():
        weights = [w for layer in rnn.all_weights for w in layer]
        return torch.ops.selib.recurrent(x, weights, rnn.mode, rnn.bidirectional)
    return rnn(x)[0]

"""DPDCRN: dual-path dilated convolutional recurrent network, lesson ``05_dpdcrn``.

The teacher/student network of I²S-TFCKD (layer layout of the authors' ``DPDCRN.py``, re-implemented):
a 512/256 Hann STFT gives ``[B, 2, T, 257]`` real/imaginary input; the encoder halves the frequency axis
twice (257 -> 129 -> 64) and runs a causal dilated dense block; the middle stacks dual-path layers, each
a frequency-path and a time-path transformer layer (multi-head attention, then a GRU in place of the
feed-forward block) added back with learned weights ``k1``/``k2``; the decoder runs a second dilated
dense block and two transposed convolutions back to 257 bins, giving a 2-channel complex mask applied
in DCCRN-E style (bounded magnitude, phase rotation). There are no encoder-decoder skips.

By default non-causal: the time-path attention is unmasked and the norms use whole-utterance
statistics. ``causal=True`` (a selib option; the paper's model is non-causal) masks the time-path
attention to past frames and replaces instance norm and gLN by their cumulative versions
(:class:`~selib.models.blocks.CumulativeLayerNorm`); every other layer already sees only the current and
past frames, so the causal model streams frame by frame (:mod:`selib.streaming`, lesson 11).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from selib.audio import STFT
from selib.models.base import SEModel
from selib.models.blocks import CumulativeLayerNorm, GlobalLayerNorm, rnn_sequence
from selib.models.complex import apply_mask


def _conv_block(conv: nn.Module, channels: int, causal: bool) -> nn.Sequential:
    norm = CumulativeLayerNorm(channels, 1e-5, per_channel=True) if causal else nn.InstanceNorm2d(channels, affine=True)
    return nn.Sequential(conv, norm, nn.PReLU(channels))


def _layer_norm(channels: int, causal: bool) -> nn.Module:
    return CumulativeLayerNorm(channels) if causal else GlobalLayerNorm(channels)


class DilatedDenseNet(nn.Module):
    """Densely connected causal convolutions (2 frames x 3 bins, time dilations 1, 2, 4, ...) on
    ``[B, C, T, F]``; layer ``i`` sees the concatenated outputs of all earlier layers."""

    def __init__(self, channels: int, depth: int = 4, causal: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            _conv_block(nn.Conv2d(channels * (i + 1), channels, (2, 3), dilation=(2 ** i, 1)), channels, causal)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            out = layer(F.pad(x, (1, 1, 2 ** i, 0)))  # past-only time padding: causal
            x = torch.cat([out, x], 1)
        return out


class PathLayer(nn.Module):
    """One transformer-style layer on ``[N, L, d]`` sequences: pre-norm multi-head attention with a
    residual, then a GRU (hidden ``2d``) + ReLU + linear with a residual, each followed by LayerNorm;
    ``causal`` masks the attention to the current and earlier positions."""

    def __init__(self, d_model: int, heads: int, bidirectional: bool, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.norm_in, self.norm_attn, self.norm_out = (nn.LayerNorm(d_model) for _ in range(3))
        self.attention = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.gru = nn.GRU(d_model, 2 * d_model, batch_first=True, bidirectional=bidirectional)
        self.linear = nn.Linear(2 * d_model * (2 if bidirectional else 1), d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_in(x)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1) if self.causal else None
        x = self.norm_attn(x + self.attention(y, y, y, need_weights=False, attn_mask=mask, is_causal=self.causal)[0])
        return self.norm_out(x + self.linear(F.relu(rnn_sequence(self.gru, x))))


class DualPath(nn.Module):
    """The middle stage: 1x1 conv ``C -> C/2``, ``layers`` dual-path layers (frequency path:
    bidirectional, time path: unidirectional GRU), and a shared PReLU + 1x1 conv ``C/2 -> C`` after
    every layer; returns the list of those per-layer outputs. ``causal``: masked time-path attention and
    cumulative norms."""

    def __init__(self, channels: int, layers: int, heads: int = 4, causal: bool = False):
        super().__init__()
        d_model = channels // 2
        self.input = nn.Sequential(nn.Conv2d(channels, d_model, 1), nn.PReLU())
        self.k1 = nn.Parameter(torch.ones(1))
        self.k2 = nn.Parameter(torch.ones(1))
        self.freq_paths = nn.ModuleList(PathLayer(d_model, heads, True) for _ in range(layers))
        self.time_paths = nn.ModuleList(PathLayer(d_model, heads, False, causal) for _ in range(layers))
        self.freq_norms = nn.ModuleList(_layer_norm(d_model, causal) for _ in range(layers))
        self.time_norms = nn.ModuleList(_layer_norm(d_model, causal) for _ in range(layers))
        self.output = nn.Sequential(nn.PReLU(), nn.Conv2d(d_model, channels, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.input(x)
        batch, channels, frames, bins = x.shape
        outputs = []
        for freq, time, freq_norm, time_norm in zip(self.freq_paths, self.time_paths, self.freq_norms,
                                                    self.time_norms):
            rows = freq(x.permute(0, 2, 3, 1).reshape(batch * frames, bins, channels))
            rows = rows.reshape(batch, frames, bins, channels).permute(0, 3, 1, 2)
            cols = time(x.permute(0, 3, 2, 1).reshape(batch * bins, frames, channels))
            cols = cols.reshape(batch, bins, frames, channels).permute(0, 3, 2, 1)
            x = x + self.k1 * freq_norm(rows) + self.k2 * time_norm(cols)
            outputs.append(self.output(x))
        return outputs


class DPDCRN(SEModel):
    """DPDCRN with ``channels`` feature maps and ``layers`` dual-path layers (teacher: 128 / 4,
    student: 64 / 1) on a Hann STFT (``n_fft`` 512, hop 256); ``causal=True`` for the streaming variant
    (module docstring; its look-ahead is the STFT window).

    ``return_features=True`` adds the I²S-TFCKD taps, ``[B, C, T', F']`` on the STFT frame axis:
    ``encoder`` = conv_1 (129 bins), conv_2 (64), dilated dense block (64); ``middle`` = every
    dual-path layer's output after the shared output conv (64); ``decoder`` = dilated dense block (64),
    first transposed conv (129), the 2-channel mask (257).
    """

    def __init__(self, channels: int = 128, layers: int = 4, heads: int = 4, n_fft: int = 512,
                 hop_length: int = 256, causal: bool = False):
        super().__init__()
        if channels % 2 or (channels // 2) % heads:
            raise ValueError(f"DPDCRN needs channels / 2 divisible by heads, got channels={channels}, "
                             f"heads={heads}")
        self.stft = STFT(n_fft, hop_length)
        self.causal = causal
        # a periodic window's first sample is zero: the last frame that reaches sample n starts at n - 1
        self.lookahead = n_fft - 2 if causal else None
        c = channels
        self.encoder = nn.ModuleList([
            _conv_block(nn.Conv2d(2, c, (1, 3), (1, 2), padding=(0, 1)), c, causal),
            _conv_block(nn.Conv2d(c, c, (1, 3), (1, 2)), c, causal),
            DilatedDenseNet(c, causal=causal),
        ])
        self.middle = DualPath(c, layers, heads, causal)
        self.decoder = nn.ModuleList([
            DilatedDenseNet(c, causal=causal),
            _conv_block(nn.ConvTranspose2d(c, c, (1, 3), (1, 2)), c, causal),
            nn.ConvTranspose2d(c, 2, (1, 3), (1, 2)),
        ])

    def forward(self, noisy: torch.Tensor, return_features: bool = False):
        if noisy.dim() != 2:
            raise ValueError(f"DPDCRN takes noisy waveforms [B, T], got shape {tuple(noisy.shape)}")
        spec = self.stft(noisy).transpose(1, 2)  # [B, T', 257]
        x = torch.stack([spec.real, spec.imag], 1)
        encoder = []
        for layer in self.encoder:
            x = layer(x)
            encoder.append(x)
        middle = self.middle(x)
        x = middle[-1]
        decoder = []
        for layer in self.decoder:
            x = layer(x)
            decoder.append(x)
        decoder[-1] = x[..., :spec.shape[-1]]  # 259 -> 257 bins: the mask
        x = decoder[-1].to(spec.real.dtype)  # under autocast the decoder may run in half precision
        mask = torch.complex(x[:, 0], x[:, 1])
        enhanced = self.stft.inverse(apply_mask(spec, mask, "E").transpose(1, 2), noisy.shape[-1])
        if return_features:
            return enhanced, {"encoder": encoder, "middle": middle, "decoder": decoder}
        return enhanced


MODEL = DPDCRN

PRESETS = {
    "paper-teacher": dict(channels=128, layers=4),
    "paper-student": dict(channels=64, layers=1),
    "tiny-teacher": dict(channels=32, layers=2),
    "tiny-student": dict(channels=16, layers=1),
}

"""DCCRN: deep complex convolution recurrent network (Hu et al., 2020), lesson ``03_dccrn``.

The layer layout follows the author code (``huyanxin/DeepComplexCRN``), so the published parameter
counts hold: a 400/100/512 periodic-Hann STFT with the DC bin dropped, six complex conv encoder blocks
(kernel 2 frames x 5 bins, frequency stride 2, one frame of causal padding) with BatchNorm + PReLU, a
two-layer LSTM in the middle (complex for DCCRN-CL, real + linear for DCCRN-E/R/C), six complex
transposed-conv decoder blocks fed with the matching encoder output (real parts and imaginary parts
concatenated separately), and a complex mask (modes E, C, R) applied to the noisy spectrum.

Tensors are laid out ``[B, C, T, F]``: channel axis = real channels then imaginary channels.

Latency: each decoder block drops its first output frame, so it looks one hop ahead; with the frame
length of the STFT this gives a look-ahead of ``depth * hop + win_length - 2`` samples (998 at the
paper set-up: 6 x 100 from the decoder, 37.5 ms, plus 398 inside the 400-sample window whose first
periodic-Hann sample is zero). The model is otherwise causal (BatchNorm in eval mode).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from selib.audio import STFT
from selib.models.base import SEModel
from selib.models.complex import (LSTM, MASK_MODES, ComplexConv2d, ComplexConvTranspose2d, ComplexLSTM,
                                  apply_mask, complex_cat)


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.PReLU())


class DCCRN(SEModel):
    """DCCRN-CL (``complex_lstm=True``) or DCCRN-E/R/C (real LSTM, ``masking_mode`` E/R/C).

    ``kernel_num`` lists the encoder channel counts as real + imaginary totals (DCCRN-CL:
    ``[32, 64, 128, 256, 256, 256]``); ``rnn_units`` is the LSTM width (for the complex LSTM: real +
    imaginary, ``rnn_units / 2`` each).

    ``return_features=True`` adds ``{"encoder": the 6 encoder block outputs, "middle": the output of
    every LSTM layer but the last as [B, H, T', 1], then the last one (after its linear map) reshaped to
    the bottleneck [B, C, T', F'], "decoder": the 6 decoder block outputs, the last being the 2-channel
    mask without its DC bin}``, all ``[B, C, T', F']`` on the STFT frame axis.
    """

    causal = True

    def __init__(self, kernel_num=(16, 32, 64, 128, 256, 256), rnn_units: int = 256, rnn_layers: int = 2,
                 complex_lstm: bool = False, masking_mode: str = "E", kernel_size: int = 5,
                 n_fft: int = 512, hop_length: int = 100, win_length: int = 400):
        super().__init__()
        if masking_mode not in MASK_MODES:
            raise ValueError(f"unknown DCCRN masking_mode {masking_mode!r}; choose one of {MASK_MODES}")
        channels = [2, *kernel_num]
        bins = n_fft // 2  # the DC bin is dropped
        if bins % 2 ** len(kernel_num):
            raise ValueError(f"n_fft // 2 = {bins} must be divisible by 2**{len(kernel_num)} "
                             f"(one halving per encoder block); change n_fft or kernel_num")
        self.masking_mode = masking_mode
        self.stft = STFT(n_fft, hop_length, win_length, center=False)
        self.lookahead = len(kernel_num) * hop_length + win_length - 2
        self.bottleneck_bins = bins // 2 ** len(kernel_num)
        kernel = (2, kernel_size)  # (time, frequency)
        self.encoder = nn.ModuleList(
            _block(ComplexConv2d(c_in, c_out, kernel, stride=(1, 2), padding=(0, kernel_size // 2)), c_out)
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        features = channels[-1] * self.bottleneck_bins
        if complex_lstm:
            self.rnn = nn.ModuleList(
                ComplexLSTM(features if i == 0 else rnn_units, rnn_units,
                            projection=features if i == rnn_layers - 1 else None)
                for i in range(rnn_layers)
            )
            self.rnn_out = nn.Identity()
        else:
            self.rnn = nn.ModuleList(
                LSTM(features if i == 0 else rnn_units, rnn_units)
                for i in range(rnn_layers)
            )
            self.rnn_out = nn.Linear(rnn_units, features)
        decoder = []
        for i in range(len(kernel_num), 0, -1):
            conv = ComplexConvTranspose2d(2 * channels[i], channels[i - 1], kernel, stride=(1, 2),
                                          padding=(0, kernel_size // 2), output_padding=(0, 1))
            decoder.append(_block(conv, channels[i - 1]) if i > 1 else nn.Sequential(conv))
        self.decoder = nn.ModuleList(decoder)

    def forward(self, noisy: torch.Tensor, return_features: bool = False):
        if noisy.dim() != 2:
            raise ValueError(f"DCCRN takes noisy waveforms [B, T], got shape {tuple(noisy.shape)}")
        spec = self.stft(noisy).transpose(1, 2)  # [B, T', 257]
        x = torch.stack([spec.real, spec.imag], 1)[..., 1:]  # [B, 2, T', 256]: DC bin dropped
        encoder = []
        for block in self.encoder:
            x = block(F.pad(x, (0, 0, 1, 0)))  # one frame of padding in the past: causal
            encoder.append(x)
        batch, channels, frames, bins = x.shape
        seq = x.transpose(1, 2).reshape(batch, frames, channels * bins)
        middle = []
        for i, rnn in enumerate(self.rnn):
            seq = rnn(seq)
            if i < len(self.rnn) - 1:
                middle.append(seq.transpose(1, 2).unsqueeze(-1))  # [B, H, T', 1]
        seq = self.rnn_out(seq)
        x = seq.reshape(batch, frames, channels, bins).transpose(1, 2)
        middle.append(x)
        decoder = []
        for block, skip in zip(self.decoder, reversed(encoder)):
            x = block(complex_cat(x, skip))[:, :, 1:]  # drop the first frame: one hop of look-ahead
            decoder.append(x)
        x = x.to(spec.real.dtype)  # under autocast the decoder may run in half precision
        x = F.pad(x, (1, 0))  # DC bin re-padded with a zero mask (on real parts: ONNX has no complex pad)
        mask = torch.complex(x[:, 0], x[:, 1])
        enhanced = self.stft.inverse(apply_mask(spec, mask, self.masking_mode).transpose(1, 2),
                                     noisy.shape[-1])
        if return_features:
            return enhanced, {"encoder": encoder, "middle": middle, "decoder": decoder}
        return enhanced


MODEL = DCCRN

_PAPER_E = dict(kernel_num=(16, 32, 64, 128, 256, 256), rnn_units=256)
_COURSE_STFT = dict(n_fft=512, hop_length=256, win_length=512)
PRESETS = {
    "paper-teacher": dict(kernel_num=(32, 64, 128, 256, 256, 256), rnn_units=256, complex_lstm=True),
    "paper-student": dict(kernel_num=(16, 32, 64, 128, 128, 128), rnn_units=128, complex_lstm=True),
    "paper-e": dict(_PAPER_E, masking_mode="E"),
    "paper-r": dict(_PAPER_E, masking_mode="R"),
    "paper-c": dict(_PAPER_E, masking_mode="C"),
    # The course presets keep the paper widths' shape but use a 512/256 STFT (16 ms hop): 2.5x fewer
    # frames than 400/100, which is what lets the quick start train them on 2 CPU cores.
    "tiny-teacher": dict(kernel_num=(16, 32, 64, 64, 64, 64), rnn_units=64, complex_lstm=True, **_COURSE_STFT),
    "tiny-student": dict(kernel_num=(8, 16, 32, 32, 32, 32), rnn_units=32, complex_lstm=True, **_COURSE_STFT),
}

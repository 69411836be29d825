"""Conv-TasNet for speech enhancement (Luo & Mesgarani 2019), lesson ``04_convtasnet_dptnet``.

A learned encoder turns the waveform into frames; a temporal convolutional network (TCN) of ``R``
repeats of ``X`` dilated depthwise-separable blocks estimates a real mask on them; the decoder turns the
masked frames back into a waveform. Hyper-parameters keep the paper's letters: ``N`` filters of length
``L`` (stride ``L/2``), bottleneck ``B``, hidden ``H`` and skip ``Sc`` channels, depthwise kernel ``P``.

The layer layout is torchaudio's ``ConvTasNet(num_sources=1)``: :func:`load_torchaudio_state_dict` loads
its weights. With ``norm="gLN"`` the model is non-causal; with ``causal=True`` (which needs ``cLN`` or
``chLN``) the depthwise convolutions only look back, and the only look-ahead left is the encoder
window: ``L - 1`` samples.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from selib.models.base import SEModel
from selib.models.blocks import CAUSAL_NORMS, WaveCodec, make_norm, mask_activation


class TCNBlock(nn.Module):
    """1x1 conv -> PReLU -> norm -> dilated depthwise conv -> PReLU -> norm -> residual and skip 1x1 convs."""

    def __init__(self, io_channels: int, hidden: int, skip: int, kernel: int, dilation: int, norm: str,
                 causal: bool, residual: bool):
        super().__init__()
        self.conv_in = nn.Conv1d(io_channels, hidden, 1)
        self.act_in = nn.PReLU()
        self.norm_in = make_norm(norm, hidden)
        self.dconv = nn.Conv1d(hidden, hidden, kernel, dilation=dilation, groups=hidden)
        self.act_d = nn.PReLU()
        self.norm_d = make_norm(norm, hidden)
        self.res_out = nn.Conv1d(hidden, io_channels, 1) if residual else None
        self.skip_out = nn.Conv1d(hidden, skip, 1)
        context = (kernel - 1) * dilation
        self.padding = (context, 0) if causal else (context // 2, context - context // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        y = self.norm_in(self.act_in(self.conv_in(x)))
        y = self.norm_d(self.act_d(self.dconv(F.pad(y, self.padding))))
        return (self.res_out(y) if self.res_out is not None else None), self.skip_out(y)


class ConvTasNet(SEModel):
    """Conv-TasNet with one output source; see the module docstring for the hyper-parameters.

    ``return_features=True`` adds the taps for feature distillation, all ``[B, C, frames, 1]``:
    ``encoder`` = [encoder output (N), bottleneck (B)], ``middle`` = [sum of the skip outputs after each
    of the R repeats (Sc)], ``decoder`` = [mask (N), masked representation (N)].
    """

    def __init__(self, N: int = 512, L: int = 16, B: int = 128, H: int = 512, Sc: int = 128, P: int = 3,
                 X: int = 8, R: int = 3, norm: str = "gLN", causal: bool = False, mask: str = "sigmoid"):
        super().__init__()
        if causal and norm not in CAUSAL_NORMS:
            raise ValueError(
                f"norm {norm!r} uses future frames; a causal Conv-TasNet needs norm in {CAUSAL_NORMS}")
        self.X = X
        self.causal = causal
        self.codec = WaveCodec(N, L)
        self.lookahead = self.codec.lookahead if causal else None
        self.input_norm = make_norm(norm, N)
        self.bottleneck = nn.Conv1d(N, B, 1)
        self.blocks = nn.ModuleList(
            TCNBlock(B, H, Sc, P, 2 ** x, norm, causal, residual=(r, x) != (R - 1, X - 1))
            for r in range(R) for x in range(X)
        )
        self.output_prelu = nn.PReLU()
        self.output_conv = nn.Conv1d(Sc, N, 1)
        self.mask = mask_activation(mask)

    def forward(self, noisy: torch.Tensor, return_features: bool = False):
        enc = self.codec.encode(noisy)
        bottleneck = x = self.bottleneck(self.input_norm(enc))
        skips, repeats = 0.0, []
        for i, block in enumerate(self.blocks):
            residual, skip = block(x)
            if residual is not None:
                x = x + residual
            skips = skips + skip
            if (i + 1) % self.X == 0:
                repeats.append(skips)
        mask = self.mask(self.output_conv(self.output_prelu(skips)))
        masked = enc * mask
        enhanced = self.codec.decode(masked, noisy.shape[-1])
        if not return_features:
            return enhanced
        stages = {"encoder": [enc, bottleneck], "middle": repeats, "decoder": [mask, masked]}
        return enhanced, {stage: [f.unsqueeze(-1) for f in feats] for stage, feats in stages.items()}


# torchaudio's ConvBlock keeps its six layers in one Sequential; these are their names here.
_TORCHAUDIO_BLOCK_LAYERS = ("conv_in", "act_in", "norm_in", "dconv", "act_d", "norm_d")


def load_torchaudio_state_dict(model: ConvTasNet, state_dict: dict[str, torch.Tensor]) -> ConvTasNet:
    """Load the weights of ``torchaudio.models.ConvTasNet(num_sources=1, ...)`` into ``model``.

    Only parameter names differ; shapes are the same, so the outputs agree.
    """
    renamed = {}
    for key, value in state_dict.items():
        key = key.removeprefix("mask_generator.")
        key = re.sub(r"^(encoder|decoder)\.", r"codec.\1.", key)
        key = re.sub(r"^conv_layers\.(\d+)\.conv_layers\.(\d)\.",
                     lambda m: f"blocks.{m[1]}.{_TORCHAUDIO_BLOCK_LAYERS[int(m[2])]}.", key)
        key = re.sub(r"^conv_layers\.", "blocks.", key).replace("input_conv.", "bottleneck.")
        renamed[key] = value
    model.load_state_dict(renamed)
    return model


MODEL = ConvTasNet
_PAPER = dict(N=512, L=16, B=128, H=512, Sc=128, P=3, X=8, R=3)
PRESETS = {
    "paper-teacher": _PAPER,
    "paper-student": {**_PAPER, "N": 256, "B": 64, "H": 256, "Sc": 64},
    "paper-causal": {**_PAPER, "norm": "cLN", "causal": True},
    "tiny-teacher": dict(N=128, L=16, B=64, H=128, Sc=64, P=3, X=4, R=2),
    "tiny-student": dict(N=64, L=16, B=32, H=64, Sc=32, P=3, X=4, R=2),
}

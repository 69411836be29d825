"""Causal Conv-TasNet streamed one encoder frame at a time (lesson ``11_results_and_deployment``)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from selib.streaming.engine import NormStep


class ConvTasNetStreamer:
    """Causal Conv-TasNet, one encoder frame (``L / 2`` samples) per step."""

    def __init__(self, model):
        if not model.causal:
            raise ValueError("this Conv-TasNet is not causal (norm gLN); stream a model built with "
                             "causal=True, e.g. the paper-causal preset")
        self.model, codec = model, model.codec
        self.hop = codec.stride
        self.latency = codec.lookahead  # one block of wait + the other half of the window
        self.previous = None  # the last input block: the first half of the next frame
        self.input_norm = NormStep(model.input_norm)
        self.norms = [(NormStep(b.norm_in), NormStep(b.norm_d)) for b in model.blocks]
        self.history = [None] * len(model.blocks)  # past inputs of each dilated depthwise conv
        self.overlap = None  # the second half of the last decoded frame

    def _frame(self, block: torch.Tensor) -> torch.Tensor:
        """Encode, mask and decode one frame; returns the ``hop`` samples that became final."""
        model, codec = self.model, self.model.codec
        if self.previous is None:
            self.previous = torch.zeros_like(block)
            self.overlap = block.new_zeros(block.shape[0], self.hop)
        frame = torch.cat([self.previous, block], -1)[:, None]  # [B, 1, L]
        self.previous = block
        enc = F.conv1d(frame, codec.encoder.weight)  # [B, N, 1]
        enc = F.relu(enc) if codec.relu else enc
        x = model.bottleneck(self.input_norm(enc))
        skips = 0.0
        for i, (tcn, (norm_in, norm_d)) in enumerate(zip(model.blocks, self.norms)):
            y = norm_in(tcn.act_in(tcn.conv_in(x)))
            past = self.history[i]
            if past is None:
                past = y.new_zeros(y.shape[0], y.shape[1], tcn.padding[0])
            window = torch.cat([past, y], -1)
            self.history[i] = window[..., 1:]
            y = norm_d(tcn.act_d(tcn.dconv(window)))
            if tcn.res_out is not None:
                x = x + tcn.res_out(y)
            skips = skips + tcn.skip_out(y)
        mask = model.mask(model.output_conv(model.output_prelu(skips)))
        samples = F.conv_transpose1d(enc * mask, codec.decoder.weight, stride=self.hop)[:, 0]  # [B, L]
        final = self.overlap + samples[:, :self.hop]
        self.overlap = samples[:, self.hop:]
        return final

    def step(self, block: torch.Tensor) -> torch.Tensor:
        first = self.previous is None
        final = self._frame(block)
        return final[:, :0] if first else final  # the first frame's first half precedes sample 0

    def flush(self) -> torch.Tensor:
        return self._frame(torch.zeros_like(self.previous))

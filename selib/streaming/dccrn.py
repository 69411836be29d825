"""DCCRN streamed one STFT frame at a time (lesson ``11_results_and_deployment``)."""
from __future__ import annotations

from collections import deque

import torch
from torch.nn import functional as F

from selib.models.complex import apply_mask, complex_cat
from selib.streaming.engine import STFTStreamer


class DCCRNStreamer(STFTStreamer):
    """DCCRN, one STFT frame per step; each of the ``depth`` decoder blocks looks one frame ahead, so
    the mask of frame ``t`` is known after frame ``t + depth``."""

    def __init__(self, model):
        self.depth = self.delay = len(model.encoder)
        super().__init__(model)
        self.encoder_inputs = [None] * self.depth  # the previous input frame of each encoder block
        self.rnn_states = {}  # LSTM -> its (h, c) after the last frame
        self.decoder_inputs = [None] * self.depth  # the pending input frame of each decoder block
        self.skips = [deque() for _ in range(self.depth)]  # encoder outputs waiting for their decoder
        self.spectra = deque()  # noisy spectra waiting for their mask

    def _decode(self, level: int, frame: torch.Tensor) -> None:
        """Give decoder block ``level`` its next input frame; it outputs the frame before it."""
        pending, self.decoder_inputs[level] = self.decoder_inputs[level], frame
        if pending is None:
            return
        x = self.model.decoder[level](torch.cat([pending, frame], 2))[:, :, 1:2]
        if level + 1 < self.depth:
            self._decode(level + 1, complex_cat(x, self.skips[level + 1].popleft()))
        else:  # the mask of the oldest waiting frame
            x = F.pad(x.to(torch.float32), (1, 0))
            mask = torch.complex(x[:, 0], x[:, 1])  # [B, 1, 257]
            self._overlap_add(apply_mask(self.spectra.popleft(), mask, self.model.masking_mode))

    def _frame(self, block: torch.Tensor) -> None:
        """Analyse one STFT frame (ending with ``block``) and run it through the network."""
        model = self.model
        spec = self._analyse(block)
        self.spectra.append(spec)
        x = torch.stack([spec.real, spec.imag], 1)[..., 1:]  # [B, 2, 1, 256]
        for i, block_module in enumerate(model.encoder):
            previous = self.encoder_inputs[i]
            previous = torch.zeros_like(x) if previous is None else previous
            self.encoder_inputs[i] = x
            x = block_module(torch.cat([previous, x], 2))
            self.skips[self.depth - 1 - i].append(x)
        batch, channels, _, bins = x.shape
        seq = x.transpose(1, 2).reshape(batch, 1, channels * bins)
        for rnn in model.rnn:       # each LSTM carries its state from frame to frame
            seq = rnn(seq, states=self.rnn_states)
        x = model.rnn_out(seq).reshape(batch, 1, channels, bins).transpose(1, 2)
        self._decode(0, complex_cat(x, self.skips[0].popleft()))

    def _drain(self) -> None:
        # the decoder blocks see zero frames after the last one
        for level in range(self.depth):
            self._decode(level, torch.zeros_like(self.decoder_inputs[level]))

"""The streaming engine: a norm stepped one frame at a time (:class:`NormStep`) and the STFT side of a
spectral-mask streamer (:class:`STFTStreamer`); the per-family streamers build on them (lesson
``11_results_and_deployment``)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from selib.models.blocks import ChannelLayerNorm, CumulativeLayerNorm


class NormStep:
    """One frame (``[B, C, 1]`` or ``[B, C, 1, F]``) through cLN, which keeps running sums, or chLN
    (stateless)."""

    def __init__(self, norm: torch.nn.Module):
        if not isinstance(norm, (CumulativeLayerNorm, ChannelLayerNorm)):
            raise ValueError(f"{type(norm).__name__} uses future frames and cannot stream; build the "
                             "model with causal=True and norm cLN or chLN")
        self.norm, self.sums = norm, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, ChannelLayerNorm):
            return self.norm(x)
        sums = self.norm.moments(x)
        if self.sums is not None:
            sums = tuple(seen + new for seen, new in zip(self.sums, sums))
        self.sums = sums
        return self.norm.normalise(x, *sums)


class STFTStreamer:
    """The STFT side of a spectral-mask streamer: one frame (``hop_length`` samples) per step.

    ``_analyse`` turns each block into the spectrum of the frame it completes and ``_overlap_add``
    outputs the samples an enhanced frame makes final; a subclass's ``_frame(block)`` runs the network
    between them and ``_drain()`` empties what it still holds when the input ends. Frame ``k`` of the
    offline STFT must end with block ``k``: its padding before sample 0 is ``win - hop`` (plus the
    window's offset in the ``n_fft`` frame), true of DCCRN's ``center=False`` STFT and of DPDCRN's
    centred 512/256 one.
    """

    delay = 0  # frames between a frame's analysis and its enhanced spectrum

    def __init__(self, model):
        self.model, stft = model, model.stft
        self.hop, self.n_fft, self.win = stft.hop_length, stft.n_fft, stft.win_length
        self.offset = (self.n_fft - self.win) // 2
        self.left = stft.pads(0)[0] + (self.n_fft // 2 if stft.center else 0)  # padding before sample 0
        if self.left != self.offset + self.win - self.hop:
            raise ValueError(f"{type(model).__name__}: an STFT of n_fft {self.n_fft}, window {self.win}, hop "
                             f"{self.hop}, center={stft.center} has frames that do not end on a hop; it cannot "
                             "stream (use center=False, or a centred STFT with hop = n_fft / 2)")
        self.latency = (self.delay + 1) * self.hop + self.left - 1
        self.window = stft.frame_window(torch.float32)
        self.samples = None  # the last win input samples
        self.ola = self.envelope = None
        self.to_drop = self.left  # padded positions before sample 0 are never output
        self.frames_in = self.blocks_in = 0
        self.out = []

    def _analyse(self, block: torch.Tensor) -> torch.Tensor:
        """The complex spectrum ``[B, 1, n_fft // 2 + 1]`` of the frame that ends with ``block``."""
        if self.samples is None:
            self.samples = block.new_zeros(block.shape[0], self.win)
        self.samples = torch.cat([self.samples[:, self.hop:], block], -1)
        frame = F.pad(self.samples, (self.offset, self.n_fft - self.win - self.offset)) * self.window
        self.frames_in += 1
        return torch.fft.rfft(frame, dim=-1)[:, None]

    def _overlap_add(self, spec: torch.Tensor) -> None:
        """Overlap-add the enhanced spectrum of the oldest pending frame; its first hop becomes final."""
        frame = torch.fft.irfft(spec, n=self.n_fft, dim=-1)[:, 0] * self.window
        if self.ola is None:
            self.ola = frame.new_zeros(frame.shape[0], self.n_fft)
            self.envelope = frame.new_zeros(self.n_fft)
        self.ola = self.ola + frame
        self.envelope = self.envelope + self.window ** 2
        env = self.envelope[:self.hop]
        final = self.ola[:, :self.hop] / torch.where(env > 1e-11, env, torch.ones_like(env))
        self.ola = F.pad(self.ola[:, self.hop:], (0, self.hop))
        self.envelope = F.pad(self.envelope[self.hop:], (0, self.hop))
        drop = min(self.to_drop, self.hop)
        self.to_drop -= drop
        self.out.append(final[:, drop:])

    def _take(self) -> torch.Tensor:
        out, self.out = self.out, []
        return torch.cat(out, -1) if out else self.samples.new_zeros(self.samples.shape[0], 0)

    def _drain(self) -> None:
        """Finish the frames the network still holds after the last one (none by default)."""

    def step(self, block: torch.Tensor) -> torch.Tensor:
        self._frame(block)
        self.blocks_in += 1
        return self._take()

    def flush(self) -> torch.Tensor:
        # The offline STFT has frames past the last block (its zero padding) ...
        for _ in range(self.model.stft.frames(self.blocks_in * self.hop) - self.frames_in):
            self._frame(torch.zeros_like(self.samples[:, :self.hop]))
        self._drain()
        # ... and the overlap-add buffer holds the last frame's remaining samples.
        final = self.ola / torch.where(self.envelope > 1e-11, self.envelope, torch.ones_like(self.envelope))
        self.out.append(final[:, min(self.to_drop, final.shape[-1]):])
        return self._take()

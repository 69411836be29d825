"""The Frequency Adapter of DFKD: a per-frame low/high split of the teacher's spectrum.

Lesson ``08_frequency_adapter``. The adapter has no learnable parameters; it is a rule applied to the
teacher output's STFT magnitude ``A [B, F, T]`` (docs/kd.md#frequency-adapter):

- ``max-slope`` (default, [reimpl]): running maximum of ``A`` along frequency from DC, relative first
  difference ``(Fo[f+1] - Fo[f]) / (Fo[f] + eps)``, split bin = argmax (ties to the lowest bin, so a
  silent frame gets bin 0). On voiced speech this lands near F0 (docs/kd.md#the-split-lands-near-f0).
- ``energy`` (selib's ablation): the first bin where the cumulative energy reaches ``rho`` of the frame's
  energy (silent frame -> 0).
- ``fixed`` (selib's ablation): one cut-off in Hz for every frame, ``round(cutoff_hz * n_fft / sr)``.

The low band is ``f <= m`` and the high band ``f >= m``: the split bin belongs to both.
"""
from __future__ import annotations

import torch
from torch import nn

from selib.constants import SAMPLE_RATE

RULES = ("max-slope", "energy", "fixed")


class FrequencyAdapter(nn.Module):
    """``adapter(spec [B, F, T] complex or magnitude) -> (low, high, split)``.

    ``low``/``high`` are ``[B, F, T]`` bool masks and ``split`` the ``[B, T]`` split bins.
    """

    def __init__(self, rule: str = "max-slope", rho: float = 0.9, cutoff_hz: float = 1000.0,
                 n_fft: int = 512, sample_rate: int = SAMPLE_RATE, eps: float = 1e-8):
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown Frequency Adapter rule {rule!r}; choose one of {list(RULES)}")
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"Frequency Adapter rho={rho} must be in (0, 1] (the energy share below the split)")
        if not 0.0 <= cutoff_hz <= sample_rate / 2:
            raise ValueError(f"Frequency Adapter cutoff_hz={cutoff_hz} must be in [0, {sample_rate / 2}] "
                             f"(0 to Nyquist at sample_rate={sample_rate})")
        self.rule, self.rho, self.cutoff_hz, self.eps = rule, rho, cutoff_hz, eps
        self.n_fft, self.sample_rate = n_fft, sample_rate

    @property
    def bin_hz(self) -> float:
        return self.sample_rate / self.n_fft

    @torch.no_grad()
    def split_bins(self, spec: torch.Tensor) -> torch.Tensor:
        """Split bin ``m`` per frame, ``[B, T]`` long, from a spectrum ``[B, F, T]`` (computed in float64)."""
        if spec.dim() != 3:
            raise ValueError(f"Frequency Adapter takes a spectrum [B, F, T], got shape {tuple(spec.shape)}")
        mag = spec.abs().double()
        n_bins = mag.shape[1]
        if n_bins != self.n_fft // 2 + 1:
            raise ValueError(f"Frequency Adapter expects {self.n_fft // 2 + 1} bins (n_fft={self.n_fft}), "
                             f"got {n_bins}; build the adapter with the STFT's n_fft")
        if self.rule == "max-slope":
            run_max = mag.cummax(dim=1).values
            slope = (run_max[:, 1:] - run_max[:, :-1]) / (run_max[:, :-1] + self.eps)
            return slope.argmax(dim=1)  # first maximum: ties go to the lowest bin
        if self.rule == "energy":
            cum = (mag ** 2).cumsum(dim=1)
            reached = cum >= self.rho * cum[:, -1:]
            split = reached.to(torch.uint8).argmax(dim=1)  # first bin reaching rho
            return torch.where(cum[:, -1] > 0, split, torch.zeros_like(split))
        fixed = min(round(self.cutoff_hz * self.n_fft / self.sample_rate), n_bins - 1)
        return torch.full((mag.shape[0], mag.shape[2]), fixed, dtype=torch.long, device=spec.device)

    @staticmethod
    def masks(split: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Low (``f <= m``) and high (``f >= m``) band masks ``[B, F, T]`` for split bins ``[B, T]``."""
        bins = torch.arange(n_bins, device=split.device)[None, :, None]
        return bins <= split[:, None, :], bins >= split[:, None, :]

    def forward(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        split = self.split_bins(spec)
        low, high = self.masks(split, spec.shape[1])
        return low, high, split

    def split_hz(self, split: torch.Tensor) -> torch.Tensor:
        """Split bins converted to Hz (bin centre frequency)."""
        return split.double() * self.bin_hz

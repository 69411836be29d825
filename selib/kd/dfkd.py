"""DFKD: dynamic frequency-adaptive, output-level KD (arXiv 2502.04711; equations: docs/kd.md#dfkd-loss).

Lesson ``09_dfkd``. Teacher and student outputs go through the KD STFT (512/128 Hann by default); the
:class:`~selib.kd.adapter.FrequencyAdapter` splits every teacher frame into a low and a high band, and
the bands get different losses:

- low band: ``L_low = mean_n D_cos(T_l, S_l)_n`` (the "modified cosine loss");
- high band: ``L_high = beta * mean_n D_cos(T_h, S_h)_n + (1 - beta) * MSE(|T_h|, |S_h|)``;
- ``KD = low_weight * L_low + high_weight * L_high`` (both weights 1 by default; docs/kd.md,
  "Total loss, SE loss and temperature").

Two ablation switches (selib's own, docs/kd.md#dfkd-ablations): ``spectrum="magnitude"`` takes the cosine
distances on ``|T|`` and ``|S|`` instead of the complex spectra (no phase to match), and
``frame_weighting="energy"`` replaces the plain mean over frames by a mean weighted with each frame's share
of the utterance's teacher energy in that band (silent frames, whose cosine is meaningless, then count for
nothing).
"""
from __future__ import annotations

import torch
from torch import nn

from selib.audio import STFT
from selib.constants import SAMPLE_RATE
from selib.kd.adapter import FrequencyAdapter

SPECTRA = ("complex", "magnitude")
FRAME_WEIGHTINGS = ("uniform", "energy")


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Complex (or real) cosine distance across frequency, per frame: ``[B, F, T] x2 -> [B, T]``.

    Real and imaginary parts are vector components:
    ``1 - sum_f Re(a conj b) / (sqrt(sum|a|^2 + eps) sqrt(sum|b|^2 + eps) + eps)``.
    """
    dot = (a * b.conj()).real.sum(dim=1)   # Re(a conj b); for real spectra the plain dot product
    norm_a = (a.abs().pow(2).sum(dim=1) + eps).sqrt()
    norm_b = (b.abs().pow(2).sum(dim=1) + eps).sqrt()
    return 1.0 - dot / (norm_a * norm_b + eps)


class DFKDLoss(nn.Module):
    """``loss(student_out [B, L], teacher_out [B, L]) -> (KD, parts)`` with parts ``low``, ``high``,
    ``split_hz_mean``; the teacher side (its STFT and the split) carries no gradient.

    ``last_split_hz`` holds the split frequencies (Hz, 1-D, CPU) of the last batch;
    :meth:`step_counts` and :meth:`epoch_summary` turn them into the epoch's split histogram
    (lesson ``08_dfkd``).
    """

    needs_features = False

    def __init__(self, rule: str = "max-slope", beta: float = 0.5, low_weight: float = 1.0,
                 high_weight: float = 1.0, rho: float = 0.9, cutoff_hz: float = 1000.0, n_fft: int = 512,
                 hop_length: int = 128, win_length: int | None = None, window: str = "hann",
                 sample_rate: int = SAMPLE_RATE, eps: float = 1e-8, spectrum: str = "complex",
                 frame_weighting: str = "uniform"):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"DFKD beta={beta} must be in [0, 1] (weight of the cosine term in the high band)")
        if spectrum not in SPECTRA:
            raise ValueError(f"DFKD spectrum={spectrum!r}; choose one of {list(SPECTRA)}")
        if frame_weighting not in FRAME_WEIGHTINGS:
            raise ValueError(f"DFKD frame_weighting={frame_weighting!r}; choose one of {list(FRAME_WEIGHTINGS)}")
        self.spectrum, self.frame_weighting = spectrum, frame_weighting
        self.stft = STFT(n_fft, hop_length, win_length, window)
        self.adapter = FrequencyAdapter(rule, rho, cutoff_hz, n_fft, sample_rate, eps)
        self.beta, self.low_weight, self.high_weight, self.eps = beta, low_weight, high_weight, eps
        self.last_split: torch.Tensor | None = None
        self.last_split_hz: torch.Tensor | None = None

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, student_features=None,
                teacher_features=None) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            teacher_spec = self.stft(teacher_out.detach())
            low, high, split = self.adapter(teacher_spec)
        student_spec = self.stft(student_out)
        teacher_cos, student_cos = ((teacher_spec.abs(), student_spec.abs()) if self.spectrum == "magnitude"
                                    else (teacher_spec, student_spec))
        loss_low = self._over_frames(cosine_distance(teacher_cos * low, student_cos * low, self.eps), teacher_spec, low)
        cos_high = self._over_frames(cosine_distance(teacher_cos * high, student_cos * high, self.eps),
                                     teacher_spec, high)
        mse_high = ((teacher_spec.abs() - student_spec.abs()) * high).pow(2).mean()
        loss_high = self.beta * cos_high + (1.0 - self.beta) * mse_high
        split_hz = self.adapter.split_hz(split)
        self.last_split = split.flatten().cpu()
        self.last_split_hz = split_hz.flatten().float().cpu()
        parts = {"low": float(loss_low.detach()), "high": float(loss_high.detach()),
                 "split_hz_mean": float(split_hz.mean())}
        return self.low_weight * loss_low + self.high_weight * loss_high, parts

    def step_counts(self) -> torch.Tensor | None:
        """How many frames of the last batch split at each STFT bin (``n_fft // 2 + 1`` counts)."""
        if self.last_split is None:
            return None
        return torch.bincount(self.last_split.long(), minlength=self.adapter.n_fft // 2 + 1)

    def epoch_summary(self, counts: torch.Tensor) -> dict:
        """``split_hz_q10/_q50/_q90`` (Hz) and ``split_hz_hist`` (counts per bin) of an epoch's summed
        :meth:`step_counts`."""
        if counts.sum() == 0:
            return {}
        cdf = counts.cumsum(0).double() / counts.sum()
        out = {f"split_hz_q{int(q * 100)}": float(torch.searchsorted(cdf, q).item() * self.adapter.bin_hz)
               for q in (0.1, 0.5, 0.9)}
        out["split_hz_hist"] = counts.tolist()
        return out

    def _over_frames(self, distance: torch.Tensor, teacher_spec: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """Per-frame distances ``[B, T]`` to one number: the plain mean, or (``frame_weighting="energy"``)
        each utterance's mean weighted by the frames' shares of its teacher energy in ``band``."""
        if self.frame_weighting == "uniform":
            return distance.mean()
        energy = (teacher_spec.abs().pow(2) * band).sum(dim=1)
        weights = energy / (energy.sum(dim=1, keepdim=True) + self.eps)
        return (weights * distance).sum(dim=1).mean()

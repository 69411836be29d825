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

The knowledge-gap mask (``gap_mask=True``, after DISPATCH's idea, arXiv 2509.15922; docs/kd.md#knowledge-gap-mask)
distils a band of a frame only where the teacher is closer to the clean reference than the student:
``m_b[t] = 1`` if ``sum_{f in b} |T - C|^2 < sum_{f in b} |S - C|^2`` (complex spectra; magnitudes with
``spectrum="magnitude"``), else 0. Both band losses multiply each frame's term by its ``m_b[t]`` and keep
their mean over all frames, so the KD term shrinks as the student catches up; ``gap_share`` logs the share
of (band, frame) pairs distilled. Rows without a clean reference (a transfer set) are distilled everywhere.
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
    return _banded_distance(_dot(a, b), a.abs().pow(2), b.abs().pow(2), None, eps)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Re(a conj b)`` per bin (for real spectra the plain product)."""
    return (a * b.conj()).real if a.is_complex() else a * b


def _banded_distance(dot: torch.Tensor, energy_a: torch.Tensor, energy_b: torch.Tensor,
                     band: torch.Tensor | None, eps: float) -> torch.Tensor:
    """:func:`cosine_distance` from the per-bin products it sums, over the bins of ``band`` (a 0/1 mask
    ``[B, F, T]``; None: all bins): the distance of ``a * band`` and ``b * band`` without forming them, so
    that one set of products serves both bands."""
    if band is not None:
        dot, energy_a, energy_b = dot * band, energy_a * band, energy_b * band
    norm_a, norm_b = (energy_a.sum(dim=1) + eps).sqrt(), (energy_b.sum(dim=1) + eps).sqrt()
    return 1.0 - dot.sum(dim=1) / (norm_a * norm_b + eps)


class DFKDLoss(nn.Module):
    """``loss(student_out [B, L], teacher_out [B, L]) -> (KD, parts)`` with parts ``low``, ``high``,
    ``split_hz_mean``; the teacher side (its STFT and the split) carries no gradient.

    ``last_split_hz`` holds the split frequencies (Hz, 1-D, CPU) of the last batch;
    :meth:`step_counts` and :meth:`epoch_summary` turn them into the epoch's split histogram
    (lesson ``08_dfkd``).
    """

    needs_features = False

    @property
    def needs_clean(self) -> bool:
        """Whether the loss reads the clean reference (the knowledge-gap mask)."""
        return self.gap_mask

    def __init__(self, rule: str = "max-slope", beta: float = 0.5, low_weight: float = 1.0,
                 high_weight: float = 1.0, rho: float = 0.9, cutoff_hz: float = 1000.0, n_fft: int = 512,
                 hop_length: int = 128, win_length: int | None = None, window: str = "hann",
                 sample_rate: int = SAMPLE_RATE, eps: float = 1e-8, spectrum: str = "complex",
                 frame_weighting: str = "uniform", gap_mask: bool = False):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"DFKD beta={beta} must be in [0, 1] (weight of the cosine term in the high band)")
        if spectrum not in SPECTRA:
            raise ValueError(f"DFKD spectrum={spectrum!r}; choose one of {list(SPECTRA)}")
        if frame_weighting not in FRAME_WEIGHTINGS:
            raise ValueError(f"DFKD frame_weighting={frame_weighting!r}; choose one of {list(FRAME_WEIGHTINGS)}")
        self.spectrum, self.frame_weighting, self.gap_mask = spectrum, frame_weighting, bool(gap_mask)
        self.stft = STFT(n_fft, hop_length, win_length, window)
        self.adapter = FrequencyAdapter(rule, rho, cutoff_hz, n_fft, sample_rate, eps)
        self.beta, self.low_weight, self.high_weight, self.eps = beta, low_weight, high_weight, eps
        self.last_split: torch.Tensor | None = None
        self.last_split_hz: torch.Tensor | None = None

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, student_features=None,
                teacher_features=None, clean: torch.Tensor | None = None, labelled: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """``clean`` (``[B, L]``) and ``labelled`` (``[B]`` bool, rows whose ``clean`` is a reference;
        None: all) serve the knowledge-gap mask only."""
        with torch.no_grad():
            teacher_spec = self.stft(teacher_out.detach())
            teacher_mag = teacher_spec.abs()
            low, high, split = self.adapter(teacher_mag)
            low, high = low.to(teacher_mag.dtype), high.to(teacher_mag.dtype)
        student_spec = self.stft(student_out)
        student_mag = student_spec.abs()
        # the per-bin products of both cosine distances, formed once and summed over each band
        teacher_cos, student_cos = ((teacher_mag, student_mag) if self.spectrum == "magnitude"
                                    else (teacher_spec, student_spec))
        dot, teacher_energy, student_energy = _dot(teacher_cos, student_cos), teacher_mag.pow(2), student_mag.pow(2)
        gaps = self._gap_masks(teacher_cos, student_cos, clean, labelled, (low, high))

        def over_band(band, gap):
            distance = _banded_distance(dot, teacher_energy, student_energy, band, self.eps)
            return self._over_frames(distance if gap is None else distance * gap, teacher_energy, band)

        loss_low, cos_high = over_band(low, gaps[0]), over_band(high, gaps[1])
        high_error = (teacher_mag - student_mag) * (high if gaps[1] is None else high * gaps[1][:, None])
        mse_high = high_error.pow(2).mean()
        loss_high = self.beta * cos_high + (1.0 - self.beta) * mse_high
        split_hz = self.adapter.split_hz(split)
        self.last_split = split.flatten().cpu()
        self.last_split_hz = split_hz.flatten().float().cpu()
        parts = {"low": float(loss_low.detach()), "high": float(loss_high.detach()),
                 "split_hz_mean": float(split_hz.mean())}
        if self.gap_mask:
            parts["gap_share"] = float(torch.stack(gaps).mean())
        return self.low_weight * loss_low + self.high_weight * loss_high, parts

    @torch.no_grad()
    def _gap_masks(self, teacher_spec, student_spec, clean, labelled, bands):
        """The knowledge-gap masks ``[B, T]`` of the low and high band (None without ``gap_mask``)."""
        if not self.gap_mask:
            return None, None
        if clean is None:
            raise ValueError("DFKD with gap_mask=True needs the clean reference: call it with clean=...")
        clean_spec = self.stft(clean.detach())
        if self.spectrum == "magnitude":
            clean_spec = clean_spec.abs()
        teacher_error = (teacher_spec - clean_spec).abs().pow(2)
        student_error = (student_spec.detach() - clean_spec).abs().pow(2)
        masks = []
        for band in bands:
            gap = ((teacher_error * band).sum(dim=1) < (student_error * band).sum(dim=1)).to(band.dtype)
            if labelled is not None:
                gap[~labelled.to(gap.device)] = 1.0
            masks.append(gap)
        return tuple(masks)

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

    def _over_frames(self, distance: torch.Tensor, teacher_energy: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """Per-frame distances ``[B, T]`` to one number: the plain mean, or (``frame_weighting="energy"``)
        each utterance's mean weighted by the frames' shares of its teacher energy in ``band``."""
        if self.frame_weighting == "uniform":
            return distance.mean()
        energy = (teacher_energy * band).sum(dim=1)
        weights = energy / (energy.sum(dim=1, keepdim=True) + self.eps)
        return (weights * distance).sum(dim=1).mean()

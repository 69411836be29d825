"""DFKD: dynamic frequency-adaptive, output-level KD (spec ``dfkd.md`` §5, §6, §10).

Lesson ``09_dfkd``. Teacher and student outputs go through the KD STFT (512/128 Hann by default); the
:class:`~selib.kd.adapter.FrequencyAdapter` splits every teacher frame into a low and a high band, and
the bands get different losses:

- low band: ``L_low = mean_n D_cos(T_l, S_l)_n`` (the "modified cosine loss", §6);
- high band: ``L_high = beta * mean_n D_cos(T_h, S_h)_n + (1 - beta) * MSE(|T_h|, |S_h|)`` (§6);
- ``KD = low_weight * L_low + high_weight * L_high`` (§7, §10: both weights 1 by default).
"""
from __future__ import annotations

import torch
from torch import nn

from selib.audio import STFT
from selib.kd.adapter import FrequencyAdapter


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Complex cosine distance across frequency, per frame: ``[B, F, T] x2 -> [B, T]`` (§6).

    Real and imaginary parts are vector components:
    ``1 - sum_f Re(a conj b) / (sqrt(sum|a|^2 + eps) sqrt(sum|b|^2 + eps) + eps)``.
    """
    dot = (a.real * b.real + a.imag * b.imag).sum(dim=1)
    norm_a = (a.abs().pow(2).sum(dim=1) + eps).sqrt()
    norm_b = (b.abs().pow(2).sum(dim=1) + eps).sqrt()
    return 1.0 - dot / (norm_a * norm_b + eps)


class DFKDLoss(nn.Module):
    """``loss(student_out [B, L], teacher_out [B, L]) -> (KD, parts)`` with parts ``low``, ``high``,
    ``split_hz_mean``; the teacher side (its STFT and the split) carries no gradient.

    ``last_split_hz`` holds the split frequencies (Hz, 1-D, CPU) of the last batch for histograms.
    """

    needs_features = False

    def __init__(self, rule: str = "max-slope", beta: float = 0.5, low_weight: float = 1.0,
                 high_weight: float = 1.0, rho: float = 0.9, cutoff_hz: float = 1000.0, n_fft: int = 512,
                 hop_length: int = 128, win_length: int | None = None, window: str = "hann",
                 sample_rate: int = 16000, eps: float = 1e-8):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"DFKD beta={beta} must be in [0, 1] (weight of the cosine term in the high band)")
        self.stft = STFT(n_fft, hop_length, win_length, window)
        self.adapter = FrequencyAdapter(rule, rho, cutoff_hz, n_fft, sample_rate, eps)
        self.beta, self.low_weight, self.high_weight, self.eps = beta, low_weight, high_weight, eps
        self.last_split_hz: torch.Tensor | None = None

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, student_features=None,
                teacher_features=None) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            teacher_spec = self.stft(teacher_out.detach())
            low, high, split = self.adapter(teacher_spec)
        student_spec = self.stft(student_out)
        loss_low = cosine_distance(teacher_spec * low, student_spec * low, self.eps).mean()
        cos_high = cosine_distance(teacher_spec * high, student_spec * high, self.eps).mean()
        mse_high = ((teacher_spec.abs() - student_spec.abs()) * high).pow(2).mean()
        loss_high = self.beta * cos_high + (1.0 - self.beta) * mse_high
        split_hz = self.adapter.split_hz(split)
        self.last_split_hz = split_hz.flatten().float().cpu()
        parts = {"low": float(loss_low.detach()), "high": float(loss_high.detach()),
                 "split_hz_mean": float(split_hz.mean())}
        return self.low_weight * loss_low + self.high_weight * loss_high, parts

"""Logit-level (output-level) KD baselines (docs/kd.md#logit-baselines).

Lesson ``07_logit_kd``. The student output is pulled towards the frozen teacher's output:

- ``logits-mse``: time-domain MSE between student and teacher waveforms; with ``normalise`` it is
  divided, per utterance, by the teacher's mean energy, so that the term no longer depends on the
  arbitrary gain of a teacher trained with a scale-invariant loss (SI-SNR);
- ``logits-sisnr``: negative SI-SNR of the student output against the teacher output;
- ``logits-spec``: full-band STFT magnitude MSE (the KD STFT, 512/128 Hann by default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selib.audio import STFT
from selib.losses import neg_si_snr

KINDS = ("mse", "sisnr", "spec")


class LogitKD(nn.Module):
    """``loss(student_out [B, L], teacher_out [B, L]) -> (KD, {})`` for one of :data:`KINDS`."""

    needs_features = False

    def __init__(self, kind: str, n_fft: int = 512, hop_length: int = 128, win_length: int | None = None,
                 window: str = "hann", normalise: bool = False, eps: float = 1e-8):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown logit KD kind {kind!r}; choose one of {list(KINDS)}")
        if normalise and kind != "mse":
            raise ValueError(f"KD option normalise is for logits-mse only, not logits-{kind}")
        self.kind, self.normalise, self.eps = kind, bool(normalise), eps
        self.stft = STFT(n_fft, hop_length, win_length, window) if kind == "spec" else None

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, student_features=None,
                teacher_features=None) -> tuple[torch.Tensor, dict[str, float]]:
        teacher_out = teacher_out.detach()
        if self.kind == "mse" and self.normalise:
            error = (student_out - teacher_out).pow(2).mean(dim=-1)
            return (error / (teacher_out.pow(2).mean(dim=-1) + self.eps)).mean(), {}
        if self.kind == "mse":
            return F.mse_loss(student_out, teacher_out), {}
        if self.kind == "sisnr":
            return neg_si_snr(student_out, teacher_out), {}
        return F.mse_loss(self.stft(student_out).abs(), self.stft(teacher_out).abs()), {}

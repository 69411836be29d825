"""Logit-level (output-level) KD baselines (spec ``dfkd.md`` §10, "Logit-level KD baselines").

Lesson ``07_logit_kd``. The student output is pulled towards the frozen teacher's output:

- ``logits-mse``: time-domain MSE between student and teacher waveforms;
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
                 window: str = "hann"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown logit KD kind {kind!r}; choose one of {list(KINDS)}")
        self.kind = kind
        self.stft = STFT(n_fft, hop_length, win_length, window) if kind == "spec" else None

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, student_features=None,
                teacher_features=None) -> tuple[torch.Tensor, dict[str, float]]:
        teacher_out = teacher_out.detach()
        if self.kind == "mse":
            return F.mse_loss(student_out, teacher_out), {}
        if self.kind == "sisnr":
            return neg_si_snr(student_out, teacher_out), {}
        return F.mse_loss(self.stft(student_out).abs(), self.stft(teacher_out).abs()), {}

"""Speech-enhancement training losses (lesson ``06_training_teacher_student``).

Every loss maps ``(est [B, T], ref [B, T])`` to a scalar that is minimised:

- ``sisnr`` (the default for every model): negative zero-mean SI-SNR from
  :func:`selib.metrics.si_sdr_torch`, eps-guarded so it stays finite for silent targets;
- ``sisnr-nozm``: the same without mean removal (the DCCRN author's variant);
- ``spec-mse`` / ``spec-mae``: mean squared / absolute difference of the STFTs
  (:class:`selib.audio.STFT`, configurable), on complex values or, with ``magnitude=True``, magnitudes.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from selib.audio import STFT
from selib.constants import LOSSES
from selib.metrics import si_sdr_torch



def neg_si_snr(est: torch.Tensor, ref: torch.Tensor, zero_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Negative SI-SNR in dB, averaged over the batch."""
    return -si_sdr_torch(est, ref, zero_mean=zero_mean, eps=eps).mean()


class SpectralLoss(nn.Module):
    """Mean ``|S_est - S_ref| ** power`` over batch, bins and frames, ``S`` the STFT of a waveform
    (complex, or its magnitude when ``magnitude=True``). The STFT follows the input's device."""

    def __init__(self, power: int, magnitude: bool = False, **stft_options):
        super().__init__()
        if power not in (1, 2):
            raise ValueError(f"SpectralLoss power must be 1 (MAE) or 2 (MSE), got {power!r}")
        self.power, self.magnitude = power, magnitude
        self.stft = STFT(**stft_options)

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if est.shape != ref.shape:
            raise ValueError(f"spectral loss: estimate {tuple(est.shape)} and reference {tuple(ref.shape)} "
                             "must have the same shape [B, T].")
        self.stft.to(est.device)
        spec_est, spec_ref = self.stft(est), self.stft(ref)
        if self.magnitude:
            spec_est, spec_ref = spec_est.abs(), spec_ref.abs()
        return (spec_est - spec_ref).abs().pow(self.power).mean()


def spectral_mse(est: torch.Tensor, ref: torch.Tensor, magnitude: bool = False, **stft_options) -> torch.Tensor:
    """Spectral MSE; ``stft_options`` go to :class:`selib.audio.STFT` (default 512/128 Hann)."""
    return SpectralLoss(2, magnitude, **stft_options)(est, ref)


def spectral_mae(est: torch.Tensor, ref: torch.Tensor, magnitude: bool = False, **stft_options) -> torch.Tensor:
    """Spectral MAE; ``stft_options`` go to :class:`selib.audio.STFT` (default 512/128 Hann)."""
    return SpectralLoss(1, magnitude, **stft_options)(est, ref)


def se_loss(name: str = "sisnr", **options) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The SE loss called ``name`` (one of :data:`LOSSES`) as a callable ``(est, ref) -> scalar``.

    Options: ``eps`` for the SI-SNR losses; ``magnitude`` and the :class:`selib.audio.STFT` arguments
    (``n_fft``, ``hop_length``, ``win_length``, ``window``, ``center``) for the spectral ones.
    """
    if name in ("sisnr", "sisnr-nozm"):
        extra = set(options) - {"eps"}
        if extra:
            raise TypeError(f"se_loss({name!r}) takes only the option 'eps', got {sorted(extra)}")
        return partial(neg_si_snr, zero_mean=name == "sisnr", **options)
    if name in ("spec-mse", "spec-mae"):
        extra = set(options) - {"magnitude", "n_fft", "hop_length", "win_length", "window", "center"}
        if extra:
            raise TypeError(f"se_loss({name!r}) takes 'magnitude' and STFT options (n_fft, hop_length, "
                            f"win_length, window, center), got {sorted(extra)}")
        return SpectralLoss(2 if name == "spec-mse" else 1, **options)
    raise ValueError(f"unknown SE loss {name!r}; choose one of {list(LOSSES)}")

"""Mixing speech and noise at a chosen SNR with the DNS Challenge ``snr_mixer`` rules.

1. clean and noise are each normalised to -25 dBFS RMS (full-signal RMS);
2. the noise is scaled so that 20 log10(rms(clean) / rms(noise)) equals the target SNR;
3. they are added;
4. noisy, clean and noise are rescaled by one common factor so the mixture has the target level
   (dBFS RMS, drawn by the caller from [-35, -15]);
5. if any of the three then peaks above 0.99, all three are scaled down by one common factor (selib never
   clips), so the SNR is kept and only the level drops.

Lesson ``00_data_and_listening``.
"""
from __future__ import annotations

import numpy as np

NORM_DB = -25.0
PEAK = 0.99
TRAIN_SNRS = (-5, 0, 5, 10, 15)   # the test grid: no test condition is unseen in training
TEST_SNRS = (-5, 0, 5, 10, 15)
LEVEL_RANGE = (-35.0, -15.0)


def rms_db(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS)."""
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


def snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """Full-signal SNR in dB: 10 log10(sum clean^2 / sum noise^2)."""
    return float(10 * np.log10(np.sum(np.square(clean, dtype=np.float64))
                               / np.sum(np.square(noise, dtype=np.float64))))


def _gain_to(x: np.ndarray, level_db: float) -> float:
    """The factor that brings ``x`` to ``level_db`` dBFS RMS."""
    rms = np.sqrt(np.mean(np.square(x, dtype=np.float64)))
    if not rms > 0:
        raise ValueError("cannot set the level of a silent signal (RMS 0); use a signal with sound in it")
    return 10 ** (level_db / 20) / rms


def snr_mix(clean: np.ndarray, noise: np.ndarray, snr: float, level_db: float,
            target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Mix equal-length ``clean`` and ``noise`` at ``snr`` dB, mixture at ``level_db`` dBFS RMS.

    Returns ``(noisy, clean, noise, info)`` as float64 with ``noisy == clean + noise``; ``info`` holds
    the SNR, the requested and final level (dBFS) and ``peak_scaled`` (whether step 5 applied).
    ``target`` is what the model must recover when it is not the speech heard (in a room, ``clean`` is
    the reverberant speech and ``target`` its early part): it gets every gain ``clean`` gets and is
    returned in its place, so the SNR stays that of the speech heard and ``noisy != target + noise``.
    """
    if len(clean) != len(noise) or (target is not None and len(target) != len(clean)):
        raise ValueError(f"clean, noise (and target) must have the same length, got {len(clean)}, {len(noise)}"
                         f"{'' if target is None else f' and {len(target)}'}; crop or loop the noise first")
    speech_gain = _gain_to(clean, NORM_DB)
    clean = np.asarray(clean, dtype=np.float64) * speech_gain
    target = clean if target is None else np.asarray(target, dtype=np.float64) * speech_gain
    noise = np.asarray(noise, dtype=np.float64)
    noise = noise * _gain_to(noise, NORM_DB - snr)
    noisy = clean + noise
    gain = 10 ** (level_db / 20) / np.sqrt(np.mean(noisy ** 2))
    noisy, target, noise = noisy * gain, target * gain, noise * gain
    peak = max(np.abs(noisy).max(), np.abs(target).max(), np.abs(noise).max())
    if peak > PEAK:
        noisy, target, noise = (x * (PEAK / peak) for x in (noisy, target, noise))
    info = {"snr_db": float(snr), "target_level_db": float(level_db), "level_db": round(rms_db(noisy), 3),
            "peak_scaled": bool(peak > PEAK)}
    return noisy, target, noise, info


def fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` cut or looped to ``n`` samples from a random start (how DNS fits noise to speech)."""
    start = int(rng.integers(0, len(x)))
    return np.tile(x, n // len(x) + 2)[start:start + n]

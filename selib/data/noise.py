"""Synthetic noise for the embedded corpus (lesson ``00_data_and_listening``).

Seven types: white, pink (1/f), brown (1/f^2), speech-shaped (white noise with the long-term average
spectrum of the clean corpus), babble (4-8 TTS talkers), hum (50/60 Hz mains and harmonics) and fan
(low-passed, amplitude-modulated noise with a blade tone). Each generator takes a numpy ``Generator`` and
a length and returns ``(noise, params)``: the same generator state gives the same noise, and ``params``
records the per-clip random parameters for the manifest.
"""
from __future__ import annotations

import numpy as np
import scipy.signal
import torch

from selib.audio import STFT
from selib.constants import SAMPLE_RATE
from selib.data.mixing import fit_length

NOISE_TYPES = ("white", "pink", "brown", "speech", "babble", "hum", "fan")
_LTAS_STFT = STFT(n_fft=512, hop_length=256)


def white(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    """I.i.d. standard normal samples."""
    return rng.standard_normal(n), {}


def colored(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """White noise whose spectrum is shaped by ``f^(-beta/2)`` (power ~ 1/f^beta); the DC bin is 0."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    spec[1:] *= f[1:] ** (-beta / 2)
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def pink(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    return colored(rng, n, 1.0), {"beta": 1.0}


def brown(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    return colored(rng, n, 2.0), {"beta": 2.0}


def ltas(signals: list[np.ndarray]) -> np.ndarray:
    """Long-term average power spectrum (per STFT bin, 512-point frames) of a list of signals."""
    power = [(_LTAS_STFT(torch.as_tensor(x, dtype=torch.float32)).abs() ** 2).sum(-1) for x in signals]
    frames = sum(_LTAS_STFT.frames(len(x)) for x in signals)
    return (torch.stack(power).sum(0) / frames).double().numpy()


def speech_shaped(rng: np.random.Generator, n: int, spectrum: np.ndarray) -> tuple[np.ndarray, dict]:
    """White noise filtered (in the STFT domain) by the amplitude of the long-term spectrum ``spectrum``."""
    spec = _LTAS_STFT(torch.from_numpy(rng.standard_normal(n)).float())
    gain = torch.from_numpy(np.sqrt(spectrum / spectrum.mean())).float()
    return _LTAS_STFT.inverse(spec * gain[:, None], n).double().numpy(), {}


def babble(rng: np.random.Generator, n: int, pool: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """Sum of 4-8 different utterances from ``pool``, each at unit RMS, looped and randomly offset."""
    talkers = int(rng.integers(4, 9))
    if len(pool) < talkers:
        raise ValueError(f"babble needs at least 8 utterances in its pool, got {len(pool)}")
    picks = rng.choice(len(pool), size=talkers, replace=False)
    out = np.zeros(n)
    for k in picks:
        out += fit_length(pool[k] / np.sqrt(np.mean(pool[k] ** 2)), n, rng)
    return out, {"talkers": talkers, "utterances": sorted(int(k) for k in picks)}


def hum(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    """Mains hum: 50 or 60 Hz plus 6 harmonics at amplitude 1/k, random phases, a little white noise."""
    mains = int(rng.choice([50, 60]))
    floor_db = float(rng.uniform(-40.0, -25.0))
    t = np.arange(n) / SAMPLE_RATE
    phases = rng.uniform(0, 2 * np.pi, size=7)
    out = sum(np.sin(2 * np.pi * mains * k * t + phases[k - 1]) / k for k in range(1, 8))
    out = out + 10 ** (floor_db / 20) * np.sqrt(np.mean(out ** 2)) * rng.standard_normal(n)
    return out, {"mains_hz": mains, "floor_db": round(floor_db, 2)}


def fan(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    """Fan/engine: white noise through a 4th-order Butterworth low-pass (600-1000 Hz), amplitude
    modulated by ``1 + depth sin(2 pi f_am t)`` (2-4 Hz, depth 0.2-0.4), plus a 90-150 Hz blade tone."""
    cutoff = float(rng.uniform(600.0, 1000.0))
    am_hz, depth = float(rng.uniform(2.0, 4.0)), float(rng.uniform(0.2, 0.4))
    blade_hz, blade_db = float(rng.uniform(90.0, 150.0)), float(rng.uniform(-15.0, -5.0))
    t = np.arange(n) / SAMPLE_RATE
    sos = scipy.signal.butter(4, cutoff, fs=SAMPLE_RATE, output="sos")
    out = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    out *= 1 + depth * np.sin(2 * np.pi * am_hz * t + rng.uniform(0, 2 * np.pi))
    rms = np.sqrt(np.mean(out ** 2))
    out += 10 ** (blade_db / 20) * rms * np.sqrt(2) * np.sin(2 * np.pi * blade_hz * t)
    params = {"cutoff_hz": cutoff, "am_hz": am_hz, "am_depth": depth, "blade_hz": blade_hz,
              "blade_db": blade_db}
    return out, {k: round(v, 2) for k, v in params.items()}


def make_noise(kind: str, rng: np.random.Generator, n: int, spectrum: np.ndarray | None = None,
               pool: list[np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
    """Noise of type ``kind`` (one of :data:`NOISE_TYPES`), ``n`` samples at 16 kHz, float64.
    ``speech`` needs the long-term ``spectrum`` (:func:`ltas`), ``babble`` a ``pool`` of utterances."""
    if kind == "speech":
        if spectrum is None:
            raise ValueError("speech-shaped noise needs spectrum=ltas(clean_utterances)")
        return speech_shaped(rng, n, spectrum)
    if kind == "babble":
        if pool is None:
            raise ValueError("babble noise needs pool=[utterances at 16 kHz]")
        return babble(rng, n, pool)
    generators = {"white": white, "pink": pink, "brown": brown, "hum": hum, "fan": fan}
    if kind not in generators:
        raise ValueError(f"unknown noise type {kind!r}; choose one of {NOISE_TYPES}")
    return generators[kind](rng, n)

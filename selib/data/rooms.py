"""Simulated rooms for the embedded room task: shoebox impulse responses by the image-source method.

Each room is a shoebox (length 3-10 m, width 3-8 m, height 2.5-4 m) whose wall absorption and reflection
order follow Sabine's formula for a reverberation time drawn from ``rt60_range`` (pyroomacoustics'
``inverse_sabine``; the image-source model overshoots it, so the manifest records the RT60 measured on
the simulated response). Source and microphone stand at least 0.5 m from every wall, 0.5-3 m apart.

The training target keeps what a listener does not hear as reverberation: the response up to
``EARLY_MS`` after the direct-path peak (the "early" part, as the DNS Challenge defines its reverberant
targets), faded out over 5 ms. The model hears the whole response. Lesson ``00_data_and_listening``.
"""
from __future__ import annotations

import numpy as np
import scipy.signal

from selib.constants import SAMPLE_RATE

EARLY_MS = 50.0   # direct path + early reflections: what the target keeps
FADE_MS = 5.0


def shoebox_rir(rng: np.random.Generator, rt60_range: tuple[float, float] = (0.2, 0.8)
                ) -> tuple[np.ndarray, dict]:
    """One room's impulse response (float32 at 16 kHz, peak 1) and its parameters for the manifest."""
    import pyroomacoustics as pra   # here: only building a room corpus needs it

    dims = np.array([rng.uniform(3.0, 10.0), rng.uniform(3.0, 8.0), rng.uniform(2.5, 4.0)])
    rt60 = float(rng.uniform(*rt60_range))
    absorption, order = pra.inverse_sabine(rt60, dims.tolist())
    source = rng.uniform(0.5, dims - 0.5)
    while True:   # a microphone 0.5-3 m from the source, inside the 0.5 m margin
        mic = source + rng.uniform(0.5, 3.0) * _unit(rng)
        if np.all(mic > 0.5) and np.all(mic < dims - 0.5):
            break
    room = pra.ShoeBox(dims.tolist(), fs=SAMPLE_RATE, materials=pra.Material(absorption),
                       max_order=int(order))
    room.add_source(source.tolist())
    room.add_microphone(mic.tolist())
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    rir /= np.abs(rir).max()
    params = {"dims_m": [round(float(d), 2) for d in dims], "rt60_target_s": round(rt60, 3),
              "rt60_s": round(float(pra.experimental.measure_rt60(rir, fs=SAMPLE_RATE)), 3),
              "distance_m": round(float(np.linalg.norm(mic - source)), 2)}
    return rir.astype(np.float32), params


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def early_part(rir: np.ndarray, early_ms: float = EARLY_MS) -> np.ndarray:
    """``rir`` up to ``early_ms`` after its peak (the direct path), with a 5 ms linear fade; zeros after."""
    peak = int(np.argmax(np.abs(rir)))
    end = min(len(rir), peak + round(early_ms * SAMPLE_RATE / 1000))
    fade = min(end - peak, round(FADE_MS * SAMPLE_RATE / 1000))
    out = np.zeros_like(rir)
    out[:end] = rir[:end]
    out[end - fade:end] *= np.linspace(1.0, 0.0, fade, dtype=rir.dtype)
    return out


def reverberate(speech: np.ndarray, rir: np.ndarray, early_ms: float = EARLY_MS
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(reverberant, target)``: ``speech`` convolved with the whole ``rir`` and with its early part,
    both cut to ``len(speech)`` (the direct-path delay is kept, the same in both)."""
    n = len(speech)
    reverberant = scipy.signal.fftconvolve(speech, rir)[:n]
    target = scipy.signal.fftconvolve(speech, early_part(rir, early_ms))[:n]
    return reverberant, target

"""Independent references for the tests: textbook formulas in float64 numpy, written without selib
(and without torch), so that a test compares selib with something it cannot share a bug with."""
from __future__ import annotations

import numpy as np


def si_sdr(estimate, reference, zero_mean: bool = True) -> np.ndarray:
    """SI-SDR in dB over the last axis (Le Roux et al., 2019), no epsilon; a float for 1-D input.
    ``zero_mean`` removes each signal's mean first (SI-SNR)."""
    est, ref = np.asarray(estimate, np.float64), np.asarray(reference, np.float64)
    if zero_mean:
        est, ref = est - est.mean(-1, keepdims=True), ref - ref.mean(-1, keepdims=True)
    target = (est * ref).sum(-1, keepdims=True) / (ref * ref).sum(-1, keepdims=True) * ref
    return 10 * np.log10((target ** 2).sum(-1) / ((est - target) ** 2).sum(-1))


def stft(x, n_fft: int = 512, hop: int = 128, win: int | None = None, center: bool = True) -> np.ndarray:
    """STFT ``[..., n_fft // 2 + 1, frames]`` over the last axis from the definition: zero-pad the
    tail to a multiple of ``hop`` and (``center``) ``n_fft // 2`` on both sides, or (not ``center``)
    by the window's offset and overlap as selib.audio.STFT documents; cut frames every ``hop``
    samples; multiply by the periodic Hann window of ``win`` samples centred in the frame; real DFT."""
    x = np.asarray(x, np.float64)
    win = n_fft if win is None else win
    tail, pad = (-x.shape[-1]) % hop, [(0, 0)] * (x.ndim - 1)
    if center:
        x = np.pad(x, pad + [(n_fft // 2, tail + n_fft // 2)])
    else:
        offset, edge = (n_fft - win) // 2, win - hop
        x = np.pad(x, pad + [(offset + edge, n_fft - win - offset + edge + tail)])
        x = np.pad(x, pad + [(0, max(0, n_fft - x.shape[-1]))])
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    starts = range(0, x.shape[-1] - n_fft + 1, hop)
    return np.stack([np.fft.rfft(x[..., s:s + n_fft] * window, axis=-1) for s in starts], axis=-1)

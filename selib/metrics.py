"""Speech-enhancement metrics (lesson ``01_metrics``).

Every metric takes ``(est, ref)`` -- the estimate (enhanced or noisy speech) first, the clean reference
second -- as 1-D arrays at 16 kHz and returns a float:

- ``pesq_wb``, ``pesq_nb``: ITU-T P.862.2 / P.862.1 MOS-LQO from the ``pesq`` package at 16 kHz
  (clean vs clean gives the ceilings 4.64 and 4.55);
- ``stoi``, ``estoi``: ``pystoi`` (ESTOI's tiny random dither is made reproducible with ``seed``);
- ``si_sdr`` (zero-mean by default, ``zero_mean=False`` for the DNS convention) and ``si_snr``, both from
  :func:`si_sdr_torch`, the one SI-SDR implementation in selib (also the training loss);
- ``ssnr``, ``llr``, ``wss`` and the composite ``csig``, ``cbak``, ``covl`` (Hu & Loizou 2008), written
  here from Loizou's reference definitions, with the wide-band MOS-LQO PESQ in the composite formulas.

A signal a metric cannot score raises :class:`MetricError`, whose ``status`` is one of :data:`STATUSES`;
:func:`selib.evaluation.evaluate` records that status per utterance and metric instead of stopping.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from pesq import BufferTooShortError, NoUtterancesError
from pesq import pesq as _pesq_package
import pystoi
import torch

from selib.constants import SAMPLE_RATE

STATUSES = ("ok", "too_short", "silent_reference", "no_utterance", "too_few_frames", "length_mismatch",
            "nonfinite_input", "wrong_rate", "unreadable", "nonfinite_output", "error")

PESQ_MIN_SAMPLES = 4000  # the pesq package needs at least 0.25 s at 16 kHz
STOI_MIN_SAMPLES = 410  # one 256-sample frame after pystoi resamples 16 kHz to 10 kHz
SILENT_RMS = 1e-6  # a reference quieter than -120 dBFS counts as silent

# Frame-based measures (Loizou): 30 ms Hann frames, 75 % overlap.
FRAME = round(0.03 * SAMPLE_RATE)
HOP = FRAME // 4
FRAME_MIN_SAMPLES = FRAME + HOP  # the reference code scores one frame fewer than fit: need two
_WINDOW = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, FRAME + 1) / (FRAME + 1)))
LPC_ORDER = 16  # Loizou uses order 16 above 10 kHz
TRIM = 0.95  # LLR and WSS average the lowest 95 % of frame values
SSNR_RANGE = (-10.0, 35.0)

# Klatt's 25 critical bands (Hz) for WSS, as in Loizou's reference code.
_WSS_CENTRES = np.array([
    50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378, 798.717, 904.128,
    1020.38, 1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08, 2446.71, 2701.97,
    2978.04, 3276.17, 3597.63])
_WSS_BANDWIDTHS = np.array([
    70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398, 105.411, 116.256, 127.914,
    140.423, 153.823, 168.154, 183.457, 199.776, 217.153, 235.631, 255.255, 276.072, 298.126, 321.465,
    346.136])
_WSS_NFFT = 2 ** math.ceil(math.log2(2 * FRAME))
K_MAX, K_LOCMAX = 20.0, 1.0


class MetricError(ValueError):
    """A signal pair a metric cannot score; ``status`` names the case (see :data:`STATUSES`)."""

    def __init__(self, status: str, reason: str):
        super().__init__(status, reason)   # args are the constructor's, so it pickles into worker processes
        self.status, self.reason = status, reason

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


# ---------------------------------------------------------------------------------------------- input

def to_numpy(x) -> np.ndarray:
    """``x`` as a NumPy array; a tensor is detached and copied to the CPU first."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _as_1d(x, name: str) -> np.ndarray:
    x = np.asarray(to_numpy(x), dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D waveform, got shape {x.shape}; "
                         "pass one utterance, e.g. x[0] or x.squeeze().")
    return x


def _prepare(est, ref, sample_rate: int, min_samples: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate an ``(est, ref)`` pair for ``metric``; raise :class:`MetricError` with the status."""
    if sample_rate != SAMPLE_RATE:
        raise MetricError("wrong_rate", f"{metric} is computed at {SAMPLE_RATE} Hz, got sample_rate="
                          f"{sample_rate}; resample with selib.audio.resample(wav, {sample_rate}, 16000).")
    est, ref = _as_1d(est, "estimate"), _as_1d(ref, "reference")
    if est.shape != ref.shape:
        raise MetricError("length_mismatch", f"estimate has {est.size} samples, reference {ref.size}; "
                          "align and trim them yourself (selib never crops silently).")
    if not (np.isfinite(est).all() and np.isfinite(ref).all()):
        raise MetricError("nonfinite_input", "NaN or Inf samples in the "
                          + ("estimate" if not np.isfinite(est).all() else "reference") + ".")
    if ref.size < min_samples:
        raise MetricError("too_short", f"{metric} needs at least {min_samples} samples "
                          f"({min_samples / SAMPLE_RATE:.3f} s), got {ref.size}.")
    if np.std(ref) < SILENT_RMS:   # a constant (DC) reference holds no more speech than silence
        raise MetricError("silent_reference", f"the reference is silent or constant (RMS about its mean "
                          f"< {SILENT_RMS:g}); {metric} is undefined without a clean signal.")
    return est, ref


# ----------------------------------------------------------------------------------- PESQ and STOI

def _pesq(est: np.ndarray, ref: np.ndarray, mode: str) -> float:
    if not est.any():
        raise MetricError("error", "the estimate is all zeros, which the pesq package cannot score "
                          "(it fails inside its C code); check what produced it.")
    try:
        return float(_pesq_package(SAMPLE_RATE, ref, est, mode))
    except NoUtterancesError as err:
        raise MetricError("no_utterance", f"PESQ found no speech in the reference ({err}).") from err
    except BufferTooShortError as err:
        raise MetricError("too_short", f"PESQ: {err}.") from err


def pesq_wb(est, ref, sample_rate: int = SAMPLE_RATE) -> float:
    """Wide-band PESQ (P.862.2 MOS-LQO, 1.04 .. 4.64) of ``est`` against ``ref``."""
    return _pesq(*_prepare(est, ref, sample_rate, PESQ_MIN_SAMPLES, "pesq_wb"), "wb")


def pesq_nb(est, ref, sample_rate: int = SAMPLE_RATE) -> float:
    """Narrow-band PESQ (P.862.1 MOS-LQO, 1.02 .. 4.55) computed on 16 kHz signals, as SE papers do."""
    return _pesq(*_prepare(est, ref, sample_rate, PESQ_MIN_SAMPLES, "pesq_nb"), "nb")


def _stoi(est, ref, sample_rate: int, extended: bool, seed: int) -> float:
    name = "estoi" if extended else "stoi"
    est, ref = _prepare(est, ref, sample_rate, STOI_MIN_SAMPLES, name)
    state = np.random.get_state()  # pystoi's ESTOI dither draws from NumPy's global generator
    np.random.seed(seed)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = pystoi.stoi(ref, est, SAMPLE_RATE, extended=extended)
    finally:
        np.random.set_state(state)
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        raise MetricError("too_few_frames", f"{name} needs 30 active frames (about 0.4 s of speech) in the "
                          "reference; pystoi would return its 1e-5 sentinel.")
    return float(value)


def stoi(est, ref, sample_rate: int = SAMPLE_RATE) -> float:
    """STOI (Taal et al. 2011) via ``pystoi``; 1.0 for identical signals."""
    return _stoi(est, ref, sample_rate, False, 0)


def estoi(est, ref, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> float:
    """Extended STOI (Jensen & Taal 2016) via ``pystoi``; ``seed`` fixes its random dither."""
    return _stoi(est, ref, sample_rate, True, seed)


# --------------------------------------------------------------------------------------------- SI-SDR

def si_sdr_torch(est: torch.Tensor, ref: torch.Tensor, zero_mean: bool = True,
                 eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB along the last axis: ``[B, T], [B, T] -> [B]`` (differentiable).

    Conv-TasNet's SI-SNR when ``zero_mean`` (the default); the DNS/FullSubNet SI-SDR without it.
    ``eps`` sits in the projection denominator and inside the log, so a silent target gives a finite
    -80 dB floor and finite gradients. Lessons ``01_metrics`` and ``06_training_teacher_student``.
    """
    if est.shape != ref.shape:
        raise ValueError(f"si_sdr_torch: estimate {tuple(est.shape)} and reference {tuple(ref.shape)} "
                         "must have the same shape [B, T].")
    if zero_mean:
        est = est - est.mean(dim=-1, keepdim=True)
        ref = ref - ref.mean(dim=-1, keepdim=True)
    scale = (est * ref).sum(dim=-1, keepdim=True) / ((ref * ref).sum(dim=-1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    ratio = (target * target).sum(dim=-1) / ((noise * noise).sum(dim=-1) + eps)
    return 10 * torch.log10(ratio + eps)


def si_sdr(est, ref, sample_rate: int = SAMPLE_RATE, zero_mean: bool = True) -> float:
    """SI-SDR in dB (:func:`si_sdr_torch` in float64); ``zero_mean=False`` for the DNS convention."""
    est, ref = _prepare(est, ref, sample_rate, 1, "si_sdr")
    value = si_sdr_torch(torch.from_numpy(est)[None], torch.from_numpy(ref)[None], zero_mean)
    return float(value[0])


def si_snr(est, ref, sample_rate: int = SAMPLE_RATE) -> float:
    """SI-SNR in dB (Conv-TasNet): the zero-mean SI-SDR."""
    return si_sdr(est, ref, sample_rate, zero_mean=True)


# ------------------------------------------------------------------------- frame-based measures (Loizou)

def _frames(x: np.ndarray) -> np.ndarray:
    """Hann-windowed 30 ms frames; like Loizou's code, the last frame that would fit is not used."""
    n = (x.size - FRAME) // HOP
    return np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP][:n] * _WINDOW


def _trimmed_mean(values: np.ndarray) -> float:
    """Mean of the lowest 95 % of frame values (MATLAB rounding of the count)."""
    keep = max(1, int(math.floor(values.size * TRIM + 0.5)))
    return float(np.mean(np.sort(values)[:keep]))


def _ssnr(est: np.ndarray, ref: np.ndarray) -> float:
    clean, proc = _frames(ref), _frames(est)
    eps = np.finfo(np.float64).eps
    signal = np.sum(clean ** 2, axis=1)
    noise = np.sum((clean - proc) ** 2, axis=1)
    return float(np.mean(np.clip(10 * np.log10(signal / (noise + eps) + eps), *SSNR_RANGE)))


def _lpc(r: np.ndarray) -> np.ndarray:
    """Levinson-Durbin on autocorrelations ``r [F, P+1]`` -> prediction-error filters ``[F, P+1]``.

    A frame without energy keeps the trivial filter ``[1, 0, ..., 0]``."""
    frames, order = r.shape[0], r.shape[1] - 1
    a = np.zeros((frames, order))
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        residual = r[:, i] - np.sum(a[:, :i - 1] * r[:, i - 1:0:-1], axis=1)
        k = np.divide(residual, err, out=np.zeros(frames), where=err > 0)
        previous = a[:, :i - 1].copy()
        a[:, :i - 1] = previous - k[:, None] * previous[:, ::-1]
        a[:, i - 1] = k
        err = (1 - k * k) * err
    return np.concatenate([np.ones((frames, 1)), -a], axis=1)


def _autocorr(frames: np.ndarray) -> np.ndarray:
    n = frames.shape[1]
    return np.stack([np.sum(frames[:, :n - k] * frames[:, k:], axis=1) for k in range(LPC_ORDER + 1)], 1)


def _llr_frames(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-frame log-likelihood ratio; frames where the reference has no energy are left out."""
    r_clean, r_proc = _autocorr(_frames(ref)), _autocorr(_frames(est))
    a_clean, a_proc = _lpc(r_clean), _lpc(r_proc)
    lags = np.abs(np.subtract.outer(np.arange(LPC_ORDER + 1), np.arange(LPC_ORDER + 1)))
    toeplitz = r_clean[:, lags]
    num = np.einsum("fi,fij,fj->f", a_proc, toeplitz, a_proc)
    den = np.einsum("fi,fij,fj->f", a_clean, toeplitz, a_clean)
    active = den > 0
    if not active.any():
        raise MetricError("silent_reference", "no frame of the reference has energy; LLR is undefined.")
    return np.log(num[active] / den[active])


def _critical_band_filters() -> np.ndarray:
    half = _WSS_NFFT // 2
    bins = np.arange(half)
    centre = np.floor(_WSS_CENTRES / (SAMPLE_RATE / 2) * half)[:, None]
    width = (_WSS_BANDWIDTHS / (SAMPLE_RATE / 2) * half)[:, None]
    gain = np.exp(-11 * ((bins - centre) / width) ** 2 + np.log(_WSS_BANDWIDTHS[0] / _WSS_BANDWIDTHS)[:, None])
    return gain * (gain > np.exp(-30.0 / (2.0 * 2.303)))  # zero below the -30 dB point


_WSS_FILTERS = _critical_band_filters()


def _nearest_peaks(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Energy of the spectral peak each band belongs to, searched rightwards on a rising slope and
    leftwards otherwise (Klatt; with the reference code's index convention for the rightward search)."""
    rising = slope > 0
    frames, n = slope.shape
    next_fall = np.empty((frames, n), dtype=int)
    last_rise = np.empty((frames, n), dtype=int)
    nxt, last = np.full(frames, n), np.full(frames, -1)
    for i in range(n - 1, -1, -1):
        next_fall[:, i] = nxt
        nxt = np.where(rising[:, i], nxt, i)
    for i in range(n):
        last = np.where(rising[:, i], i, last)
        last_rise[:, i] = last
    index = np.where(rising, next_fall - 1, last_rise + 1)
    return np.take_along_axis(energy, index, axis=1)


def _wss_frames(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-frame weighted spectral slope distance (Klatt 1982, as normalised by Loizou)."""
    half = _WSS_NFFT // 2
    bands = []
    for x in (ref, est):
        power = np.abs(np.fft.rfft(_frames(x), _WSS_NFFT, axis=1)[:, :half]) ** 2
        bands.append(10 * np.log10(np.maximum(power @ _WSS_FILTERS.T, 1e-10)))
    weights, slopes = [], []
    for energy in bands:
        slope = np.diff(energy, axis=1)
        level = energy[:, :-1]
        w_max = K_MAX / (K_MAX + energy.max(axis=1, keepdims=True) - level)
        w_loc = K_LOCMAX / (K_LOCMAX + _nearest_peaks(energy, slope) - level)
        weights.append(w_max * w_loc)
        slopes.append(slope)
    w = (weights[0] + weights[1]) / 2
    return np.sum(w * (slopes[0] - slopes[1]) ** 2, axis=1) / np.sum(w, axis=1)


def ssnr(est, ref, sample_rate: int = SAMPLE_RATE) -> float:
    """Segmental SNR in dB: 30 ms frames, each clamped to [-10, 35] dB, averaged (Hu & Loizou 2008)."""
    return _ssnr(*_prepare(est, ref, sample_rate, FRAME_MIN_SAMPLES, "ssnr"))


def llr(est, ref, sample_rate: int = SAMPLE_RATE, clip: bool = True) -> float:
    """Log-likelihood ratio of order-16 LPC models (0 for identical signals); frames clamped at 2 when
    ``clip`` (the standalone measure; the composite uses ``clip=False``), lowest 95 % averaged."""
    frames = _llr_frames(*_prepare(est, ref, sample_rate, FRAME_MIN_SAMPLES, "llr"))
    return _trimmed_mean(np.minimum(frames, 2.0) if clip else frames)


def wss(est, ref, sample_rate: int = SAMPLE_RATE) -> float:
    """Weighted spectral slope distance (0 for identical signals), lowest 95 % of frames averaged."""
    return _trimmed_mean(_wss_frames(*_prepare(est, ref, sample_rate, FRAME_MIN_SAMPLES, "wss")))


def composite_from_components(llr: float, ssnr: float, wss: float, pesq: float) -> dict[str, float]:
    """Hu & Loizou's (2008) regression formulas, each clipped to [1, 5]."""
    scores = {"csig": 3.093 - 1.029 * llr + 0.603 * pesq - 0.009 * wss,
              "cbak": 1.634 + 0.478 * pesq - 0.007 * wss + 0.063 * ssnr,
              "covl": 1.594 + 0.805 * pesq - 0.512 * llr - 0.007 * wss}
    return {name: float(min(5.0, max(1.0, value))) for name, value in scores.items()}


def composite(est, ref, sample_rate: int = SAMPLE_RATE, pesq_wb: float | None = None) -> dict[str, float]:
    """CSIG, CBAK, COVL with their components ``llr`` (unclamped frames), ``ssnr``, ``wss`` and
    ``pesq_wb``. At 16 kHz the formulas take the wide-band PESQ MOS-LQO (as pysepm and common
    VoiceBank+DEMAND scripts do; Loizou validated them on raw narrow-band PESQ). Pass ``pesq_wb`` when
    it is already known to avoid computing it twice."""
    est, ref = _prepare(est, ref, sample_rate, PESQ_MIN_SAMPLES, "composite")
    parts = {"llr": _trimmed_mean(_llr_frames(est, ref)), "ssnr": _ssnr(est, ref),
             "wss": _trimmed_mean(_wss_frames(est, ref)),
             "pesq_wb": _pesq(est, ref, "wb") if pesq_wb is None else float(pesq_wb)}
    return {**composite_from_components(parts["llr"], parts["ssnr"], parts["wss"], parts["pesq_wb"]),
            **parts}


def csig(est, ref, sample_rate: int = SAMPLE_RATE) -> float:
    """Composite signal-distortion score CSIG (1..5); see :func:`composite`."""
    return composite(est, ref, sample_rate)["csig"]


def cbak(est, ref, sample_rate: int = SAMPLE_RATE) -> float:
    """Composite background-intrusiveness score CBAK (1..5); see :func:`composite`."""
    return composite(est, ref, sample_rate)["cbak"]


def covl(est, ref, sample_rate: int = SAMPLE_RATE) -> float:
    """Composite overall-quality score COVL (1..5); see :func:`composite`."""
    return composite(est, ref, sample_rate)["covl"]


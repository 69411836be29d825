"""The figures of the course: spectrograms, frequency-adapter split overlays, calibration heat-maps,
training curves and result charts.

Every function draws on ``ax`` when given (so lessons can compose panels) and otherwise on a new
figure; it returns the axes it drew on. Spectrograms use :class:`selib.audio.STFT`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from selib.audio import STFT
from selib.constants import SAMPLE_RATE


def _axes(ax, figsize=(7, 3)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, layout="constrained")[1]


def _db_magnitude(wav, n_fft: int, hop_length: int) -> np.ndarray:
    wav = torch.as_tensor(wav, dtype=torch.float32).detach().cpu()
    if wav.dim() != 1:
        raise ValueError(f"plots take one mono waveform [T], got shape {tuple(wav.shape)}")
    spec = STFT(n_fft=n_fft, hop_length=hop_length)(wav).abs()
    return (20 * torch.log10(spec + 1e-8)).numpy()


def spectrogram(wav, ax=None, title: str | None = None, sample_rate: int = SAMPLE_RATE,
                n_fft: int = 512, hop_length: int = 128, floor_db: float = 80.0):
    """Log-magnitude spectrogram of a mono waveform (lesson ``02_stft_and_masks``).

    The colour range spans ``floor_db`` below the loudest bin.
    """
    ax = _axes(ax)
    db = _db_magnitude(wav, n_fft, hop_length)
    duration = torch.as_tensor(wav).shape[-1] / sample_rate
    image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - floor_db,
                      vmax=db.max(), extent=(0, duration, 0, sample_rate / 2 / 1000))
    ax.figure.colorbar(image, ax=ax, label="dB")
    ax.set(xlabel="time (s)", ylabel="frequency (kHz)", title=title)
    return ax


def split_overlay(wav, split_bins, ax=None, title: str | None = "Frequency Adapter split",
                  sample_rate: int = SAMPLE_RATE, n_fft: int = 512, hop_length: int = 128):
    """Spectrogram of ``wav`` with the per-frame split bin ``m_n`` drawn over it (lesson
    ``08_frequency_adapter``).

    ``split_bins`` holds one bin index per STFT frame of the same transform (``[frames]``).
    """
    split_bins = torch.as_tensor(split_bins).detach().cpu().reshape(-1).numpy()
    frames = STFT(n_fft=n_fft, hop_length=hop_length).frames(torch.as_tensor(wav).shape[-1])
    if split_bins.shape[0] != frames:
        raise ValueError(
            f"split_overlay: got {split_bins.shape[0]} split bins for a waveform of {frames} STFT frames "
            f"(n_fft={n_fft}, hop_length={hop_length}); pass one bin per frame of the same transform."
        )
    ax = spectrogram(wav, ax=ax, title=title, sample_rate=sample_rate, n_fft=n_fft,
                     hop_length=hop_length)
    times = np.arange(frames) * hop_length / sample_rate
    ax.step(times, split_bins * sample_rate / n_fft / 1000, where="mid", color="cyan", lw=1.2,
            label="split $m_n$")
    ax.legend(loc="upper right")
    return ax


def calibration_heatmap(alpha, ax=None, title: str | None = "calibration weights",
                        student_labels=None, teacher_labels=None):
    """Mean calibration weights ``alpha[i, j]`` (student layer i, teacher layer j) as an annotated
    heat-map (lesson ``10_i2s_tfckd``). Rows sum to 1 when they come from a softmax over teachers."""
    alpha = torch.as_tensor(alpha).detach().cpu().float().numpy()
    if alpha.ndim != 2:
        raise ValueError(f"calibration_heatmap takes a 2-D [N_S, N_T] array, got shape {alpha.shape}")
    ax = _axes(ax, figsize=(1.2 * alpha.shape[1] + 2, 1.0 * alpha.shape[0] + 1.5))
    image = ax.imshow(alpha, cmap="viridis", vmin=0, vmax=max(float(alpha.max()), 1e-8))
    for (i, j), value in np.ndenumerate(alpha):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center",
                color="white" if value < 0.6 * alpha.max() else "black", fontsize=8)
    ax.set_xticks(range(alpha.shape[1]), teacher_labels or [f"T{j}" for j in range(alpha.shape[1])])
    ax.set_yticks(range(alpha.shape[0]), student_labels or [f"S{i}" for i in range(alpha.shape[0])])
    ax.set(xlabel="teacher layer", ylabel="student layer", title=title)
    ax.figure.colorbar(image, ax=ax)
    return ax


def _read_history(history) -> list[dict]:
    if isinstance(history, (str, Path)):
        path = Path(history)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no training history; train first (selib train CONFIG).")
        text = path.read_text()
        if path.suffix == ".json":
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(history)


def training_curves(history, keys=None, x: str = "epoch", ax=None, title: str | None = "training"):
    """Curves of logged values (losses, validation metrics) against ``x`` (lesson
    ``06_training_teacher_student``).

    ``history`` is a list of dicts (one per logged point) or the path of a JSON list / JSON-lines
    file of them. ``keys`` defaults to every numeric key other than ``x``; points missing a key are
    skipped for that curve.
    """
    rows = _read_history(history)
    if not rows:
        raise ValueError("training_curves: the history is empty; nothing was logged yet.")
    if keys is None:
        keys = [k for k in rows[0] if k != x and isinstance(rows[0][k], (int, float))]
    ax = _axes(ax)
    for key in keys:
        points = [(r[x], r[key]) for r in rows if x in r and isinstance(r.get(key), (int, float))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=key)
    ax.set(xlabel=x, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def result_chart(table, metric: str, ax=None, label: str = "name", paired: bool = False):
    """Bar chart of one metric over runs (lesson ``11_results_and_deployment``). ``table`` is the list
    of rows :func:`selib.report.report` returns.

    By default the bars are each run's mean over seeds (``<metric>_mean``) with the spread over seeds
    (``<metric>_std``) as error bars. With ``paired`` they are the KD students' mean paired difference
    against the scratch student of the same seed (``<metric>_diff``) with its bootstrap 95 % interval
    (``<metric>_diff_low``/``_high``) as error bars: a bar whose interval crosses 0 shows no difference.
    """
    key = f"{metric}_diff" if paired else f"{metric}_mean"
    rows = [r for r in table if np.isfinite(r.get(key, np.nan))]
    if not rows:
        raise ValueError(f"result_chart: no row of the table has a value for {key!r}.")
    ax = _axes(ax, figsize=(max(4, 0.7 * len(rows) + 1), 3))
    means = np.array([r[key] for r in rows])
    if paired:
        low = means - np.array([r[f"{metric}_diff_low"] for r in rows])
        high = np.array([r[f"{metric}_diff_high"] for r in rows]) - means
        ax.bar(range(len(rows)), means, yerr=np.stack([low, high]), capsize=3, color="tab:green")
        ax.axhline(0.0, color="0.3", lw=0.8)
        ax.set(ylabel=f"Δ {metric} vs scratch", title=f"{metric}: paired difference, 95 % interval")
    else:
        stds = np.nan_to_num(np.array([r.get(f"{metric}_std", 0.0) for r in rows]))
        # Differences between runs are small next to the values: bars start at the lower edge of a
        # zoomed axis (never at a baseline off-screen), and error bars show the spread over seeds.
        pad = max(0.15 * np.ptp(means), 1.5 * stds.max(), 0.02 * np.abs(means).max(), 1e-3)
        bottom = (means - stds).min() - pad
        colours = ["0.35" if r.get("role") == "teacher" else "tab:blue" for r in rows]
        ax.bar(range(len(rows)), means - bottom, bottom=bottom, yerr=stds, capsize=3, color=colours)
        ax.set_ylim(bottom, (means + stds).max() + pad)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set(ylabel=metric, title=metric)
    ax.set_xticks(range(len(rows)), [r[label] for r in rows], rotation=40, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ax


def kd_training(scratch_history, kd_history, label: str = "KD", axes=None):
    """Two panels of a KD run against its scratch student (lessons ``07_logit_kd`` to ``10_i2s_tfckd``):
    the KD run's loss and its parts per epoch (``train_*``, without the DFKD split statistics and the
    I²S-TFCKD calibration weights), and the validation SI-SDR of both runs against the step."""
    kd_rows = _read_history(kd_history)
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, 2, figsize=(10, 3), layout="constrained")[1]
    parts = [k for k in kd_rows[0] if k.startswith("train_") and "hz" not in k and "alpha" not in k]
    training_curves(kd_rows, keys=parts, ax=axes[0], title=f"{label}: loss and its parts")
    for name, rows in (("scratch", _read_history(scratch_history)), (label, kd_rows)):
        axes[1].plot([r["step"] for r in rows], [r["valid_si_sdr"] for r in rows], marker="o", label=name)
    axes[1].set(xlabel="step", ylabel="dB", title="validation SI-SDR")
    axes[1].grid(alpha=0.3)
    axes[1].legend()
    return axes

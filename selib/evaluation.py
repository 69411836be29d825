"""Scoring in one place: :func:`evaluate` scores many utterances in parallel (lesson ``01_metrics``),
:func:`enhance_and_score` scores a model on a dataset (a dataset enhanced with
:func:`selib.inference.enhance`, then :func:`evaluate`; lessons ``06_training_teacher_student`` and
``11_results_and_deployment``), :func:`validation_score` gives the SI-SDR that picks ``best.pt`` and
records shipped teachers, and :func:`test_run` writes a run's ``metrics.json`` and ``scores.csv``.

The metric functions are in :mod:`selib.metrics`; here an utterance a metric cannot score gets a status
from :data:`selib.metrics.STATUSES` in its row instead of an exception. Scores are of the model's float
output as it is (no clipping to [-1, 1]; only a file written as 16-bit PCM is clipped). An item that
cannot be read gets the status ``unreadable`` and one whose enhanced audio holds NaN/Inf gets
``nonfinite_output``, each with its reason in its row, and the rest is scored.
"""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed
from scipy import stats as _stats
from torch import nn

from selib.checkpoints import load_checkpoint, load_model
from selib.config import ConfigError
from selib.constants import METRICS, SAMPLE_RATE
from selib.files import write_csv, write_json
from selib.inference import CHUNK_SECONDS, OVERLAP_SECONDS, ModelOutputError, enhance
from selib.metrics import (STATUSES, MetricError, composite, estoi, llr, pesq_nb, pesq_wb, si_sdr,
                           si_sdr_torch, si_snr, ssnr, stoi, to_numpy, wss)
from selib.runs import RunDir

DEFAULT_METRICS = ("pesq_wb", "pesq_nb", "stoi", "estoi", "si_sdr", "csig", "cbak", "covl", "ssnr")
_SINGLE = {"pesq_wb": pesq_wb, "pesq_nb": pesq_nb, "stoi": stoi, "si_sdr": si_sdr, "si_snr": si_snr,
           "ssnr": ssnr, "llr": llr, "wss": wss}
_COMPOSITE = ("csig", "cbak", "covl")


def _attempt(out: dict, names, compute) -> None:
    """Run ``compute() -> {name: value}`` and record ``(value, status, reason)`` for ``names``."""
    try:
        values = compute()
        for name in names:
            out[name] = (float(values[name]), "ok", "")
    except MetricError as err:
        for name in names:
            out[name] = (math.nan, err.status, err.reason)
    except Exception as err:  # any other failure of one utterance is recorded, never raised
        for name in names:
            out[name] = (math.nan, "error", f"{type(err).__name__}: {err}")


def _score(task) -> dict:
    """All requested metrics of one utterance (runs in a worker process); PESQ-WB is computed once."""
    uid, est, ref, rate, metrics = task
    if isinstance(est, MetricError):           # an utterance that never reached the metrics
        return {"id": uid, **{f"{name}{suffix}": value for name in metrics
                              for suffix, value in (("", math.nan), ("_status", est.status),
                                                    ("_reason", est.reason))}}
    out: dict[str, tuple] = {}
    needed = [m for m in _SINGLE if m in metrics or (m == "pesq_wb" and set(metrics) & set(_COMPOSITE))]
    for name in needed:
        _attempt(out, [name], lambda: {name: _SINGLE[name](est, ref, rate)})
    if "estoi" in metrics:
        _attempt(out, ["estoi"], lambda: {"estoi": estoi(est, ref, rate, seed=zlib.crc32(uid.encode()))})
    wanted = [m for m in _COMPOSITE if m in metrics]
    if wanted:
        value, status, reason = out["pesq_wb"]
        if status == "ok":
            _attempt(out, wanted, lambda: composite(est, ref, rate, pesq_wb=value))
        else:
            out.update({m: (math.nan, status, f"PESQ-WB: {reason}") for m in wanted})
    row = {"id": uid}
    for name in metrics:
        row[name], row[f"{name}_status"], row[f"{name}_reason"] = out[name]
    return row


def _init_worker() -> None:
    """One thread per worker process, one worker per core. Without the BLAS limit each forked worker keeps
    the parent's BLAS/OpenMP thread pools, and on 2 cores two workers ran no faster than one process
    (``benchmarks/bench_metrics.py``)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch.set_num_threads(1)


def _task(item, index: int, sample_rate: int, metrics: tuple) -> tuple:
    if isinstance(item, dict) and "status" in item and "estimate" not in item:
        if item["status"] not in STATUSES or item["status"] == "ok" or "id" not in item:
            raise ValueError(f"evaluate: item {index} is a failed utterance, which needs 'id', a 'status' "
                             f"from {[s for s in STATUSES if s != 'ok']} and a 'reason'.")
        return str(item["id"]), MetricError(item["status"], str(item.get("reason", ""))), None, 0, metrics
    if isinstance(item, dict):
        missing = {"id", "estimate", "reference"} - set(item)
        if missing:
            raise ValueError(f"evaluate: item {index} lacks the keys {sorted(missing)}; items are dicts with "
                             "'id', 'estimate', 'reference' (and optionally 'sample_rate').")
        uid, est, ref, rate = item["id"], item["estimate"], item["reference"], item.get("sample_rate",
                                                                                           sample_rate)
    elif isinstance(item, (tuple, list)) and len(item) in (3, 4):
        uid, est, ref, rate = (*item, sample_rate)[:4]
    else:
        raise ValueError(f"evaluate: item {index} is {type(item).__name__}; pass (id, estimate, reference) "
                         "tuples or dicts with 'id', 'estimate', 'reference'.")
    return str(uid), to_numpy(est), to_numpy(ref), int(rate), metrics


def _summary(rows: list[dict], metrics: tuple) -> dict[str, dict]:
    summary = {}
    for name in metrics:
        values = np.array([r[name] for r in rows if r[f"{name}_status"] == "ok"])
        n = values.size
        std = float(values.std(ddof=1)) if n > 1 else math.nan
        counts: dict[str, int] = {}
        for r in rows:
            counts[r[f"{name}_status"]] = counts.get(r[f"{name}_status"], 0) + 1
        summary[name] = {
            "mean": float(values.mean()) if n else math.nan, "std": std,
            "ci95": float(_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan,
            "n_ok": n, "n_total": len(rows), "statuses": counts}
    return summary


@dataclass
class EvalResult:
    """Output of :func:`evaluate`: ``rows`` (one dict per utterance, in input order, with ``<metric>``,
    ``<metric>_status`` and ``<metric>_reason``) and ``summary`` (per metric: ``mean``, ``std``, ``ci95``
    (half-width of the 95 % t-interval of the mean), ``n_ok``, ``n_total``, ``statuses`` counts)."""

    metrics: tuple
    rows: list
    summary: dict

    def values(self, metric: str) -> np.ndarray:
        """Per-utterance values of ``metric`` in input order (NaN where the status is not ``ok``)."""
        return np.array([row[metric] for row in self.rows], dtype=float)

    def __str__(self) -> str:
        lines = [f"{'metric':>8}  {'mean':>8}  {'±ci95':>7}  n_ok/n_total"]
        for name, s in self.summary.items():
            lines.append(f"{name:>8}  {s['mean']:8.3f}  {s['ci95']:7.3f}  {s['n_ok']}/{s['n_total']}")
        return "\n".join(lines)


def validate_metrics(metrics) -> tuple[str, ...]:
    """``metrics`` as a tuple, or a ValueError naming the unknown ones and the valid choices."""
    metrics = tuple([metrics] if isinstance(metrics, str) else metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown or '(none given)'}; choose from {', '.join(METRICS)}.")
    return metrics


def evaluate(items, metrics=DEFAULT_METRICS, workers: int | None = None, csv_path=None, json_path=None,
             sample_rate: int = SAMPLE_RATE) -> EvalResult:
    """Score many ``(id, estimate, reference)`` utterances in parallel (lesson ``01_metrics``).

    One process-pool task per utterance computes all ``metrics`` (``workers`` defaults to the number of
    cores; ``workers=1`` runs in this process). Results keep the input order. A bad utterance never
    stops the run: each (utterance, metric) gets a value and a status from
    :data:`selib.metrics.STATUSES`; the summary averages only ``ok`` values. Items may carry their own
    rate (4th tuple element or ``sample_rate`` key); anything but 16 kHz is scored ``wrong_rate``. A dict
    ``{"id", "status", "reason"}`` without an estimate records an utterance that never reached the
    metrics (``unreadable`` audio, a model output with NaN/Inf) under that status.
    ``csv_path``/``json_path`` save the per-utterance table and, for JSON, the summary too.
    """
    metrics = validate_metrics(metrics)
    if workers is not None and workers < 1:
        raise ValueError(f"evaluate: workers must be >= 1 (or None for one per core), got {workers}.")
    tasks = [_task(item, i, sample_rate, metrics) for i, item in enumerate(items)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(workers or cores, len(tasks))
    if workers <= 1:
        rows = [_score(task) for task in tasks]
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
            rows = list(pool.map(_score, tasks))   # one utterance per task: the cores finish together
    result = EvalResult(metrics, rows, _summary(rows, metrics))
    if csv_path is not None:
        write_csv(csv_path, rows)
    if json_path is not None:
        write_json(json_path, {"metrics": list(metrics), "summary": result.summary, "rows": rows})
    return result


def _item_id(dataset, index: int) -> str:
    return dataset.item_id(index) if hasattr(dataset, "item_id") else f"item {index}"


def enhance_and_score(model: torch.nn.Module, dataset, metrics: Sequence[str], workers: int | None = None,
                      csv_path=None, json_path=None, progress: bool = False,
                      chunk_seconds: float = CHUNK_SECONDS, overlap_seconds: float = OVERLAP_SECONDS
                      ) -> tuple[Any, dict[str, float]]:
    """Enhance every item ``{"id", "noisy", "clean"}`` of ``dataset`` with :func:`enhance` and score it;
    returns the :class:`EvalResult` and the timing (``enhance_seconds``,
    ``audio_seconds``, ``eval_seconds``). Unreadable items and NaN outputs get a status, not an error."""
    from tqdm.auto import tqdm

    metrics = validate_metrics(metrics)
    model.eval()
    started = time.perf_counter()
    items, audio_seconds = [], 0.0
    for i in tqdm(range(len(dataset)), disable=not progress, desc="enhance", leave=False):
        try:
            item = dataset[i]
        except Exception as err:   # a damaged file is one row, never the end of the evaluation
            items.append({"id": _item_id(dataset, i), "status": "unreadable", "reason": _reason(err)})
            continue
        try:
            estimate = enhance(model, item["noisy"], chunk_seconds, overlap_seconds)
        except ModelOutputError as err:
            items.append({"id": item["id"], "status": "nonfinite_output", "reason": str(err)})
            continue
        items.append((item["id"], estimate.numpy(), item["clean"].numpy()))
        audio_seconds += len(estimate) / getattr(model, "sample_rate", SAMPLE_RATE)
    enhance_seconds = time.perf_counter() - started
    result = evaluate(items, metrics=metrics, workers=workers, csv_path=csv_path, json_path=json_path)
    return result, {"enhance_seconds": enhance_seconds, "audio_seconds": audio_seconds,
                    "eval_seconds": time.perf_counter() - started - enhance_seconds}


def _reason(err: Exception) -> str:
    from selib.audio import AudioError

    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, AudioError) else f"{type(err).__name__}: {text}"


@torch.no_grad()
def validation_score(model: nn.Module, dataset, device: torch.device = torch.device("cpu"), rank: int = 0,
                     world: int = 1) -> tuple[float, int]:
    """``(mean SI-SDR in dB, utterances)`` of ``model`` on the whole utterances of ``dataset``: the
    validation score of :meth:`selib.train.Trainer.validate` (under DDP each of the ``world`` ranks
    scores every ``world``-th utterance from ``rank`` on, and the sums are shared) and of shipped teachers."""
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(rank, len(dataset), world):
        item = dataset[i]
        est = model(item["noisy"].to(device)[None])
        total += torch.tensor([float(si_sdr_torch(est.float(), item["clean"].to(device)[None])[0]), 1.0],
                              dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(total)
    if total[1] == 0:
        raise ConfigError("the valid split is empty; raise data.valid_limit or check the dataset.")
    return float(total[0] / total[1]), int(total[1])


@torch.no_grad()
def test_run(config, run: RunDir, dataset, checkpoint: str | Path | None = None, device="cpu",
             history: list | None = None, progress: bool = False) -> dict[str, Any]:
    """Enhance the test ``dataset`` with the run's ``best.pt`` (or ``checkpoint``, e.g. a shipped
    teacher) and write ``metrics.json`` and ``scores.csv`` into ``run``; returns the ``metrics.json``
    content. An unreadable test file is a row with its status and reason; the rest is scored."""
    import resource   # POSIX only: imported where the peak memory is read

    best = Path(checkpoint) if checkpoint is not None else run.best
    if not best.is_file():
        raise FileNotFoundError(f"{best} not found; run fit() first (it writes the best checkpoint).")
    model, _ = load_model(best, device, config.model.family, config.model.preset, config.model.overrides,
                          fix="train this run again (delete its folder)")
    state = load_checkpoint(best)
    result, timing = enhance_and_score(model, dataset, config.eval.metrics, workers=config.eval.workers,
                                       csv_path=run.scores, progress=progress)
    summary = {
        "name": config.name, "summary": result.summary,
        "model": {"family": model.family, "preset": model.preset, "params": model.n_params},
        "checkpoint": {"path": str(best), "epoch": state["epoch"], "step": state["step"],
                       "valid_si_sdr": state["best"]},
        "timing": {"train_seconds": sum(r["seconds"] for r in state["history"]),
                   "enhance_seconds": timing["enhance_seconds"],
                   "test_audio_seconds": timing["audio_seconds"], "eval_seconds": timing["eval_seconds"],
                   # the largest resident memory of this process so far (a quick-start run has its own)
                   "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "history": history, "config": config.to_dict(),
    }
    run.metrics.write_text(json.dumps(summary, indent=1, default=float))
    return summary

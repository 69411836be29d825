"""Scoring models on datasets, in one place (lessons ``06_training_teacher_student`` and
``11_results_and_deployment``): :func:`enhance_and_score` (a dataset enhanced with
:func:`selib.inference.enhance` and scored with :func:`selib.metrics.evaluate`), :func:`validation_score`
(the SI-SDR that picks ``best.pt`` and records shipped teachers) and :func:`test_run` (a run's
``metrics.json`` and ``scores.csv``).

Scores are of the model's float output as it is (no clipping to [-1, 1]; only a file written as 16-bit
PCM is clipped). An item that cannot be read gets the status ``unreadable`` and one whose enhanced
audio holds NaN/Inf gets ``nonfinite_output``, each with its reason in its row, and the rest is scored.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed
from torch import nn

from selib.checkpoints import load_checkpoint, load_model
from selib.config import ConfigError
from selib.constants import SAMPLE_RATE
from selib.inference import CHUNK_SECONDS, OVERLAP_SECONDS, ModelOutputError, enhance
from selib.runs import RunDir


def _item_id(dataset, index: int) -> str:
    return dataset.item_id(index) if hasattr(dataset, "item_id") else f"item {index}"


def enhance_and_score(model: torch.nn.Module, dataset, metrics: Sequence[str], workers: int | None = None,
                      csv_path=None, json_path=None, progress: bool = False,
                      chunk_seconds: float = CHUNK_SECONDS, overlap_seconds: float = OVERLAP_SECONDS
                      ) -> tuple[Any, dict[str, float]]:
    """Enhance every item ``{"id", "noisy", "clean"}`` of ``dataset`` with :func:`enhance` and score it;
    returns the :class:`selib.metrics.EvalResult` and the timing (``enhance_seconds``,
    ``audio_seconds``, ``eval_seconds``). Unreadable items and NaN outputs get a status, not an error."""
    from tqdm.auto import tqdm

    from selib.metrics import evaluate, validate_metrics

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
    from selib.metrics import si_sdr_torch

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

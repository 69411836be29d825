"""Cost of a KD epoch against a scratch epoch, with and without the teacher-output cache.

For the tiny DCCRN and the tiny DPDCRN (the course families), trains one epoch of each variant —
scratch, ``logits-sisnr`` and ``dfkd`` without the cache, and the same two with a warm cache
(``teacher.cache: true``, filled by an earlier run on the same batches) — in rounds that alternate the
variants in this process, so that a loaded machine slows them alike. Prints the median epoch time of the
training loop (validation excluded) and its ratio to scratch; the target of issue 9 is <= 1.1 for a
KD epoch with a warm cache. Also prints the cost of the per-epoch gradient-ratio measurement (two extra
backward passes on the first batch of an epoch) against one training step.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_kd_cache.py [--rounds 3] [--batches 32] [--write]``
(1-s crops, batch 4, a small embedded corpus built in a temporary folder; ``--write`` puts the table into
benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import results_md
import torch

from selib import models
from selib.config import load
from selib.data import build_embedded
from selib.kd.balance import grad_norms
from selib.train import Trainer

VARIANTS = [("scratch", "none", False), ("logits-sisnr", "logits-sisnr", False), ("dfkd", "dfkd", False),
            ("logits-sisnr + cache", "logits-sisnr", True), ("dfkd + cache", "dfkd", True)]
TARGET = 1.1  # a KD epoch with a warm cache over a scratch epoch


def _config(family: str, method: str, cache: bool, corpus: Path, teacher: Path, batches: int):
    config = {"seed": 0, "device": "cpu", "model": {"family": family, "preset": "tiny-student"},
              "data": {"root": str(corpus), "segment_seconds": 1.0, "batch_size": 4, "train_limit": 4 * batches,
                       "valid_limit": 1},
              "optim": {"epochs": 1, "checkpoint_every": 0, "amp": "off"},
              "eval": {"metrics": ["si_sdr"], "workers": 1}, "kd": {"method": method}}
    if method != "none":
        config["teacher"] = {"family": family, "preset": "tiny-teacher", "checkpoint": str(teacher),
                             "cache": cache}
    return load(config)


def _epoch_seconds(cfg, run_dir: Path) -> float:
    trainer = Trainer(cfg, run_dir)
    return trainer.fit()[-1]["seconds"]


def _ratio_cost(cfg, run_dir: Path, repeats: int = 5) -> tuple[float, float]:
    """(median seconds of one training step, of the gradient-ratio measurement on the same batch)."""
    trainer = Trainer(cfg, run_dir)
    batch = next(iter(trainer._loader(0)))
    trainer._set_train(True)
    trainer.batch = 1                                  # a step that does not measure the ratio
    step = []
    for _ in range(repeats):
        started = time.perf_counter()
        trainer._train_step(batch)
        step.append(time.perf_counter() - started)
    measure = []
    for _ in range(repeats):
        with trainer.training_step.autocast():
            se, kd_loss, _ = trainer.training_step.losses(batch["noisy"], batch["clean"])
        started = time.perf_counter()
        grad_norms(se, kd_loss, [p for p in trainer.student.parameters() if p.requires_grad])
        measure.append(time.perf_counter() - started)
    return statistics.median(step), statistics.median(measure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=32, help="training batches per epoch")
    results_md.add_options(parser)
    args = parser.parse_args()
    os.environ.setdefault("SELIB_PROGRESS", "0")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), load average {os.getloadavg()[0]:.1f} at the start")
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = build_embedded(tmp / "embedded", n_train=4 * args.batches, n_valid=1, n_test=1, verbose=False)
        for family in ("dccrn", "dpdcrn"):
            teacher = tmp / f"{family}-teacher.pt"
            torch.manual_seed(0)
            torch.save({"model": models.build(family, "tiny-teacher").state_dict()}, teacher)
            runs = tmp / family
            _epoch_seconds(_config(family, "dfkd", True, corpus, teacher, args.batches), runs / "fill")
            times = {name: [] for name, *_ in VARIANTS}
            for r in range(args.rounds):
                for name, method, cache in VARIANTS:
                    cfg = _config(family, method, cache, corpus, teacher, args.batches)
                    times[name].append(_epoch_seconds(cfg, runs / f"{name.replace(' ', '')}-{r}"))
            scratch = statistics.median(times["scratch"])
            print(f"\n{family} tiny-student, tiny-teacher, {args.batches} batches of 4 x 1 s, median of "
                  f"{args.rounds} epochs:")
            for name, *_ in VARIANTS:
                median = statistics.median(times[name])
                print(f"  {name:22s} {median:7.2f} s   {median / scratch:5.2f} x scratch")
            ratios = [(statistics.median(times[name]) / scratch, cache) for name, _, cache in VARIANTS[1:]]
            table.append([f"{results_md.NAMES[family]} tiny", f"{scratch:.2f} s",
                          *(f"**{r:.2f}x** {results_md.verdict(r, TARGET)}" if cache else f"{r:.2f}x"
                            for r, cache in ratios)])
            step, measure = _ratio_cost(_config(family, "dfkd", True, corpus, teacher, args.batches),
                                        runs / "ratio")
            print(f"  gradient-ratio measurement: {measure * 1e3:.0f} ms once per epoch, a training step "
                  f"{step * 1e3:.0f} ms ({measure / step:.2f} steps; {measure / step / args.batches:.1%} of "
                  f"this epoch)")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if args.write:
        columns = ["family", "scratch", *(f"{name}, target ≤ {TARGET}x" if cache else name
                                          for name, _, cache in VARIANTS[1:])]
        results_md.write_section(__file__, f"One epoch of {args.batches} batches of 4 x 1 s per variant (training "
                                 f"loop only), median of {args.rounds} rounds.\n\n"
                                 + results_md.table(columns, table, "lrrrrr"), args.results_md)


if __name__ == "__main__":
    main()

"""Throughput of selib.evaluation.evaluate against a plain per-utterance loop over the packages.

Scores the noisy mixtures of the embedded test set against their clean references with every default
metric (PESQ-WB/NB, STOI, ESTOI, SI-SDR, CSIG/CBAK/COVL, SSNR) and prints utterances per second for:

- a plain loop: ``pesq.pesq`` twice, ``pystoi.stoi`` twice, SI-SDR in NumPy and ``selib.metrics.composite``
  given the loop's PESQ-WB (so that, like ``evaluate``, it computes PESQ-WB once), one utterance after
  the other: the fair single-process reference;
- ``evaluate(workers=1)``: the same work in this process;
- ``evaluate()``: one worker process per core; its speed-up over the plain loop is what the pool buys
  (target: >= 1.8x on 2 cores).

The three alternate for ``--repeats`` rounds after a warm-up round and the best round of each is
reported, since a shared machine can only make a round slower.

Usage: ``python benchmarks/bench_metrics.py [--limit N] [--workers W] [--write]``. If the embedded corpus
cannot be built or loaded, generated speech-like signals are scored instead and the printout (and the
block that ``--write`` puts into benchmarks/RESULTS.md) says so.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pesq
import pystoi
import results_md

from selib import evaluation, metrics

TARGET = 1.8  # the process pool over the plain loop, on 2 cores


def embedded_items(limit: int | None) -> tuple[list, str]:
    from selib import data

    root = data.build_embedded()
    dataset = data.get_dataset("embedded", "test", root=root, limit=limit)
    items = [(item["id"], item["noisy"].numpy(), item["clean"].numpy()) for item in dataset]
    return items, "embedded test set"


def generated_items(limit: int | None) -> tuple[list, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_metrics import at_snr, speech_like  # the speech stand-in the metric tests use

    n = limit or 100
    items = []
    for i in range(n):
        clean = speech_like(seconds=2.0 + (i % 3), seed=i)
        items.append((f"gen{i:03d}", at_snr(clean, snr_db=-5 + (i % 6) * 4, seed=1000 + i), clean))
    return items, "GENERATED speech-like signals (the embedded corpus was not available)"


def plain_loop(items: list) -> list[dict]:
    rows = []
    for _, est, ref in items:
        row = {"pesq_wb": pesq.pesq(16000, ref, est, "wb"), "pesq_nb": pesq.pesq(16000, ref, est, "nb"),
               "stoi": pystoi.stoi(ref, est, 16000), "estoi": pystoi.stoi(ref, est, 16000, extended=True)}
        e, r = est - est.mean(), ref - ref.mean()
        target = np.dot(e, r) / np.dot(r, r) * r
        row["si_sdr"] = 10 * np.log10(np.sum(target ** 2) / np.sum((e - target) ** 2))
        row.update({k: v for k, v in metrics.composite(est, ref, pesq_wb=row["pesq_wb"]).items()
                    if k in ("csig", "cbak", "covl", "ssnr")})
        rows.append(row)
    return rows


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have finished (the pool's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn, *args):
    start, start_cpu = time.perf_counter(), cpu_seconds()
    out = fn(*args)
    return out, time.perf_counter() - start, cpu_seconds() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="score only the first N utterances")
    parser.add_argument("--workers", type=int, default=None, help="evaluate() workers (default: cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (default %(default)s)")
    results_md.add_options(parser)
    args = parser.parse_args()
    try:
        items, source = embedded_items(args.limit)
    except Exception as err:  # the data module may be missing or unable to build here
        print(f"embedded corpus unavailable ({type(err).__name__}: {err})")
        items, source = generated_items(args.limit)
    seconds = sum(len(ref) for _, _, ref in items) / 16000
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"data: {source}: {len(items)} utterances, {seconds:.1f} s of audio; {cores} cores")

    runs = {"loop": (plain_loop, items), "serial": (evaluation.evaluate, items, evaluation.DEFAULT_METRICS, 1),
            "pool": (evaluation.evaluate, items, evaluation.DEFAULT_METRICS, args.workers)}
    best = {}
    for round_ in range(args.repeats + 1):           # round 0 warms up (imports, caches, page faults)
        for name, call in runs.items():
            out, wall, cpu = timed(*call)
            if round_ and (name not in best or wall < best[name][1]):
                best[name] = (out, wall, cpu)
    (loop_rows, t_loop, cpu_loop), (serial, t_serial, cpu_serial), (pooled, t_pool, cpu_pool) = (
        best["loop"], best["serial"], best["pool"])

    n = len(items)
    pool = f"evaluate(workers={args.workers or cores})"
    print("                               utterances/s  vs loop   CPU ms/utterance")
    for label, wall, cpu in (("plain loop over the packages", t_loop, cpu_loop),
                             ("evaluate(workers=1)", t_serial, cpu_serial), (pool, t_pool, cpu_pool)):
        print(f"{label:<30} {n / wall:12.2f}  {t_loop / wall:6.2f}x  {1000 * cpu / n:10.1f}")
    ok = [i for i, row in enumerate(pooled.rows) if all(row[f"{m}_status"] == "ok" for m in pooled.metrics)]
    for name in ("pesq_wb", "pesq_nb", "stoi", "si_sdr", "csig"):
        diff = max((abs(pooled.rows[i][name] - loop_rows[i][name]) for i in ok), default=0.0)
        print(f"  max |evaluate - loop| {name:>7}: {diff:.2e}  (n_ok {pooled.summary[name]['n_ok']}/{n})")
    # the workers' one BLAS thread may round a sum differently from this process's two
    gap = max(float(np.nanmax(np.abs(serial.values(m) - pooled.values(m)))) for m in pooled.metrics)
    print(f"  largest |evaluate(workers=1) - process pool| over all metrics: {gap:.1e}")
    print(f"  process pool over the plain loop: {t_loop / t_pool:.2f}x (target >= {TARGET}x); load average "
          f"{os.getloadavg()[0]:.2f}; best of {args.repeats} rounds")
    print(pooled)
    if args.write:
        rows = [["plain loop over the packages (PESQ-WB shared)", f"{n / t_loop:.2f}", "1.00×", "", ""],
                ["`evaluate(workers=1)`", f"{n / t_serial:.2f}", f"{t_loop / t_serial:.2f}×", "", ""],
                [f"`{pool}`", f"{n / t_pool:.2f}", f"**{t_loop / t_pool:.2f}×**", f"≥ {TARGET}×",
                 results_md.verdict(t_loop / t_pool, TARGET, at_most=False)]]
        results_md.write_section(__file__, f"Data: {source}, {n} utterances ({seconds:.1f} s of audio), best of "
                                 f"{args.repeats} rounds after a warm-up.\n\n"
                                 + results_md.table(["", "utterances/s", "vs loop", "target", ""], rows, "lrrrl"),
                                 args.results_md)


if __name__ == "__main__":
    main()

"""Peak memory and runtime of ``selib enhance`` on long files (1 to 10 minutes at 16 kHz) with the tiny
DCCRN student: each run is a fresh ``python -m selib enhance`` process, and ``os.wait4`` gives that
process's own peak resident set size and CPU time. Chunked overlap-add (``selib.inference.enhance``)
keeps the model's memory to one chunk, so the peak should stay flat (audio buffers add about 4 MB per
minute) and the runtime grow linearly with the length.

    python benchmarks/bench_long_file.py [--minutes 1 2.5 5 10] [--write]

Target (issue 13): under 1 GB peak RSS for 10 minutes. Prints a table and appends the figures to
``benchmarks/results/long_file.jsonl`` (with ``--write`` also into benchmarks/RESULTS.md); asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import results_md
import soundfile as sf

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET_MB = 1024  # peak RSS of a 10-minute file


def _checkpoint(folder: Path) -> Path:
    """A selib checkpoint of a freshly initialised tiny DCCRN student (the weights do not change the cost)."""
    sys.path.insert(0, str(REPO))
    import torch

    from selib import config, models
    from selib.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = models.build("dccrn", "tiny-student")
    cfg = config.load({"model": {"family": "dccrn", "preset": "tiny-student"}})
    return save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict()}, folder / "tiny.pt")


def _noisy(path: Path, minutes: float) -> Path:
    rng = np.random.default_rng(0)
    n = int(minutes * 60 * 16000)
    t = np.arange(n) / 16000
    speechlike = 0.2 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    sf.write(path, speechlike + 0.03 * rng.standard_normal(n), 16000, subtype="PCM_16")
    return path


def _run(checkpoint: Path, noisy: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "selib", "enhance", "--checkpoint", str(checkpoint),
                             str(noisy), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"selib enhance failed on {noisy}: {proc.stderr.read().decode()}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def markdown(record: dict) -> str:
    """One run's files against the target, as RESULTS.md's table."""
    rows = [[f"{r['minutes']:g} min", f"{r['peak_rss_mb']:.0f} MB", f"{r['cpu_s']:.1f} s", f"{TARGET_MB:,} MB",
             results_md.verdict(r["peak_rss_mb"], TARGET_MB)] for r in record["rows"]]
    return (f"Tiny DCCRN student, one `selib enhance` process per file, OMP_NUM_THREADS={record['omp_threads']}.\n\n"
            + results_md.table(["audio", "peak RSS", "CPU", "target", ""], rows, "rrrrl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", nargs="+", type=float, default=[1.0, 2.5, 5.0, 10.0])
    results_md.add_options(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = _checkpoint(tmp)
        for minutes in args.minutes:
            noisy = _noisy(tmp / f"noisy-{minutes}.wav", minutes)
            row = {"minutes": minutes, **_run(checkpoint, noisy, tmp / f"enhanced-{minutes}.wav")}
            row["cpu_s_per_minute"] = round(row["cpu_s"] / minutes, 2)
            rows.append(row)
            print(f"{minutes:6.1f} min: peak RSS {row['peak_rss_mb']:7.1f} MB, CPU {row['cpu_s']:7.1f} s "
                  f"({row['cpu_s_per_minute']:.2f} s per audio minute), wall {row['wall_s']:.1f} s", flush=True)
    record = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    with open(HERE / "results" / "long_file.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if args.write:
        results_md.write_section(__file__, markdown(record), args.results_md)


if __name__ == "__main__":
    main()

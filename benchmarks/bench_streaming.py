"""Streaming cost of the causal students: algorithmic latency and per-frame compute against the hop.

Run: ``.venv/bin/python benchmarks/bench_streaming.py`` (used by ``make bench``). One thread; each
streamer runs 20 warm-up steps, then the median over 200 timed steps of ``step()`` on one block of
``hop`` samples, as CPU time of the (single) thread, which does not count the time the process waits
for a core on a shared machine (wall time is printed too). Real-time when the compute per step is below
the hop's duration. Method in ``selib.streaming``.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from selib.models import build
from selib.streaming import streamer

STUDENTS = [
    ("dccrn", "tiny-student", {}),
    ("dccrn", "paper-student", {}),
    ("convtasnet", "tiny-student", {"causal": True, "norm": "cLN"}),
    ("convtasnet", "paper-causal", {}),
]
WARMUP, TIMED = 20, 200


def measure(family: str, preset: str, overrides: dict) -> dict:
    model = build(family, preset, **overrides).eval()
    s = streamer(model)
    rate = model.sample_rate
    blocks = torch.randn(WARMUP + TIMED, 1, s.hop, generator=torch.Generator().manual_seed(0))
    cpu, wall = [], []
    with torch.inference_mode():
        for i, block in enumerate(blocks):
            start, start_cpu = time.perf_counter(), time.thread_time()
            s.step(block)
            if i >= WARMUP:
                cpu.append(time.thread_time() - start_cpu)
                wall.append(time.perf_counter() - start)
    step = statistics.median(cpu)
    hop_s = s.hop / rate
    return {"model": f"{family}/{preset}" + (" (causal, cLN)" if overrides else ""), "hop_ms": 1e3 * hop_s,
            "latency_ms": 1e3 * s.latency / rate, "step_ms": 1e3 * step, "wall_ms": 1e3 * statistics.median(wall),
            "load": step / hop_s}


def main() -> None:
    torch.set_num_threads(1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| model | hop ms | algorithmic latency ms | CPU per step ms | wall per step ms | CPU / hop |")
    print("|---|---:|---:|---:|---:|---:|")
    for family, preset, overrides in STUDENTS:
        r = measure(family, preset, overrides)
        print(f"| {r['model']} | {r['hop_ms']:.2f} | {r['latency_ms']:.1f} | {r['step_ms']:.2f} | {r['wall_ms']:.2f} | "
              f"{r['load']:.2f} {'(real-time)' if r['load'] < 1 else '(slower than real time)'} |")


if __name__ == "__main__":
    main()

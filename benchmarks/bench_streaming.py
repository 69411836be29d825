"""Streaming cost of the causal students: algorithmic latency and per-frame compute against the hop.

Run: ``.venv/bin/python benchmarks/bench_streaming.py [--write]`` (``make bench`` writes its block of
RESULTS.md). One thread; each streamer first streams ``before`` seconds of noise (0 for all but the
causal DPDCRN, whose attention over every past frame makes a step dearer the longer it streams), then 20
warm-up steps, then the median over 200 timed steps of ``step()`` on one block of ``hop`` samples, as CPU
time of the (single) thread, which does not count the time the process waits for a core on a shared
machine (wall time is reported too). Real-time when the compute per step is below the hop's duration.
Method: ``selib.profile.step_times``.
"""
from __future__ import annotations

import argparse

import results_md

from selib.models import build
from selib.profile import step_times

# (family, preset, overrides, seconds streamed before the timed steps)
STUDENTS = [
    ("dccrn", "tiny-student", {}, 0.0),
    ("dccrn", "paper-student", {}, 0.0),
    ("dpdcrn", "tiny-student", {"causal": True}, 0.0),
    ("dpdcrn", "tiny-student", {"causal": True}, 10.0),
    ("dpdcrn", "paper-student", {"causal": True}, 0.0),
    ("dpdcrn", "paper-student", {"causal": True}, 10.0),
    ("convtasnet", "tiny-student", {"causal": True, "norm": "cLN"}, 0.0),
    ("convtasnet", "paper-causal", {}, 0.0),
]
WARMUP, TIMED = 20, 200


def measure(family: str, preset: str, overrides: dict, before: float) -> dict:
    model = build(family, preset, **overrides).eval()
    t = step_times(model, before, WARMUP, TIMED)
    hop_s = t["hop"] / model.sample_rate
    causal = ", causal" + (" cLN" if overrides.get("norm") == "cLN" else "") if overrides else ""
    return {"model": f"{results_md.NAMES[family]} {preset}{causal}", "hop_ms": 1e3 * hop_s,
            "latency_ms": 1e3 * t["latency"] / model.sample_rate, "before_s": before, "step_ms": t["cpu_ms"],
            "wall_ms": t["wall_ms"], "load": t["cpu_ms"] / 1e3 / hop_s}


def render(rows: list[dict]) -> str:
    return results_md.table(
        ["model", "hop ms", "algorithmic latency ms", "streamed before s", "CPU per step ms", "wall per step ms",
         "CPU / hop"],
        [[r["model"], f"{r['hop_ms']:.2f}", f"{r['latency_ms']:.1f}", f"{r['before_s']:g}", f"{r['step_ms']:.2f}",
          f"{r['wall_ms']:.2f}", f"{r['load']:.2f} ({'real-time' if r['load'] < 1 else 'slower than real time'})"]
         for r in rows], "lrrrrrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    results_md.add_options(parser)
    args = parser.parse_args()
    print(results_md.machine())
    rows = []
    for family, preset, overrides, before in STUDENTS:
        rows.append(measure(family, preset, overrides, before))
        print(render(rows[-1:]).splitlines()[-1], flush=True)
    print(render(rows))
    if args.write:
        results_md.write_section(__file__, "One thread; median of 200 steps after 20 warm-up steps.\n\n"
                                 + render(rows), args.results_md)


if __name__ == "__main__":
    main()

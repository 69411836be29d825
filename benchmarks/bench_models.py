"""Size, compute and speed of every model preset: prints the table and writes benchmarks/models.md.

Run: ``.venv/bin/python benchmarks/bench_models.py [--write]`` (used by ``make bench``); method in
selib.profile. ``--write`` also puts the students' RTF against the real-time targets into
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import results_md
import torch

from selib.profile import format_table, profile_table

TARGETS = {"paper-student": 0.25, "tiny-student": 0.02}  # RTF on one thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    results_md.add_options(parser, writes="the students' RTF against their targets into --results-md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the real-time targets are for one thread
    rows = profile_table(seconds=1.0, runs=3)
    table = format_table(rows)
    header = (
        "# Model presets: parameters, MACs per second of 16 kHz audio, real-time factor\n\n"
        f"Measured by `benchmarks/bench_models.py` on {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); RTF = wall time / audio "
        "duration for one forward pass on 1 s of audio (batch 1, median of 3 runs). MACs: "
        "`selib.profile.count_macs` (FlopCounterMode / 2, closed forms for LSTM, GRU and attention). "
        f"CPU load average (1 min) at the end of the run: {os.getloadavg()[0]:.1f}; RTF grows with it.\n\n"
    )
    print(table)
    out = Path(__file__).with_name("models.md")
    out.write_text(header + table)
    print(f"written to {out}")
    if args.write:
        students = [[results_md.NAMES[r["family"]], r["preset"], f"{r['rtf']:.3f}", f"≤ {TARGETS[r['preset']]}",
                     results_md.verdict(r["rtf"], TARGETS[r["preset"]])] for r in rows if r["preset"] in TARGETS]
        results_md.write_section(__file__, "RTF of one forward on 1 s of audio (batch 1, median of 3 runs); every "
                                 "preset: [models.md](models.md).\n\n"
                                 + results_md.table(["family", "student", "RTF", "target", ""], students, "llrrl"),
                                 args.results_md)


if __name__ == "__main__":
    main()

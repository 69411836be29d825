"""Size, compute and speed of every model preset: prints the table and writes benchmarks/models.md.

Run: ``.venv/bin/python benchmarks/bench_models.py`` (used by ``make bench``); method in selib.profile.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from selib.profile import format_table, profile_table


def main() -> None:
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


if __name__ == "__main__":
    main()

"""Peak memory and time of one paper-scale training step per family on the CPU (issue 12, GPU readiness).

For every family and its ``paper-teacher`` and ``paper-student`` presets (freshly initialised: weights do
not change the cost), a fresh Python process builds the model, draws one batch of noise-plus-tone
mixtures (``--batch`` x ``--seconds``, default 4 x 4 s: the issue's batch) and runs ``--steps`` scratch
training steps (forward, -SI-SNR, backward, gradient clipping at 5, Adam), as ``selib.train`` does
without KD. The process reports its own peak resident set size (``ru_maxrss``: what the kernel had to
find for it), its RSS right after the imports and the model build (the floor: torch, selib, the
weights) and each step's wall time; the first step also allocates Adam's state, so the last one is the
steady figure. A step that does not finish within ``--timeout`` seconds is reported as such: that
preset is impractical on this machine at this batch, whatever the memory.

One process at a time (two would compete for the 2 cores and the memory); the largest needs about 12 GB. One JSON line per preset is
appended to ``benchmarks/results/paper_memory.jsonl``; the table goes to stdout. ``--write`` puts the
latest line of every preset into benchmarks/RESULTS.md (a preset without one as "not run").

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_paper_memory.py [--families dccrn ...] [--write]``
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import results_md

RESULTS = Path(__file__).with_name("results") / "paper_memory.jsonl"
FAMILIES = ("dccrn", "convtasnet", "dptnet", "dpdcrn")
DEFAULT_FAMILIES = ("dccrn", "convtasnet", "dpdcrn")   # DPTNet's paper presets take many minutes per step here
PRESETS = ("paper-teacher", "paper-student")


def one(family: str, preset: str, batch: int, seconds: float, steps: int) -> dict:
    """Runs in the child process: the figures of ``steps`` training steps of one preset."""
    import math
    import resource
    import time

    import torch

    from selib import losses, models

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    torch.manual_seed(0)
    model = models.build(family, preset).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    t = torch.arange(round(seconds * model.sample_rate)) / model.sample_rate
    clean = 0.3 * torch.sin(2 * math.pi * 220 * t) * torch.ones(batch, 1)
    noisy = clean + 0.1 * torch.randn(batch, t.numel())
    floor = rss_mib()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = losses.neg_si_snr(model(noisy), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        times.append(time.perf_counter() - started)
    return {"params": sum(p.numel() for p in model.parameters()), "floor_mib": floor,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "step_s": times,
            "threads": torch.get_num_threads()}


def measure(family: str, preset: str, args) -> dict:
    """One preset in a fresh process; its figures, or why it has none."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_paper_memory as b; "
            f"print(json.dumps(b.one({family!r}, {preset!r}, {args.batch}, {args.seconds}, {args.steps})))")
    row = {"family": family, "preset": preset, "batch": args.batch, "seconds": args.seconds}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"no result within {args.timeout} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        return {**row, "error": f"exit {done.returncode}: {last}"}
    return {**row, **json.loads(done.stdout.strip().splitlines()[-1])}


def markdown(records: dict[tuple, dict]) -> str:
    """The latest record of each (family, preset) as RESULTS.md's table, every family and preset a row."""
    rows = []
    for family in FAMILIES:
        for preset in PRESETS:
            r = records.get((family, preset))
            if r is None or "error" in r:
                rows.append([results_md.NAMES[family], preset, "", "", "", r["error"] if r else "not run"])
            else:
                rows.append([results_md.NAMES[family], preset, f"{r['params'] / 1e6:.3f}", f"{r['floor_mib']:,.0f}",
                             f"{r['peak_mib']:,.0f}", f"{r['step_s'][-1]:.1f}"])
    runs = sorted({f"batch {r['batch']} x {r['seconds']:g} s, recorded {r['date']} (load average {r['load']} at "
                   "the start)" for r in records.values()})
    return (f"The latest line of each preset in `results/paper_memory.jsonl`: {'; '.join(runs)}.\n\n"
            + results_md.table(["family", "preset", "params M", "floor MiB", "peak MiB", "step s"], rows, "llrrrr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES), choices=FAMILIES,
                        help="default: %(default)s (DPTNet only when named)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=2, help="training steps per preset (default %(default)s)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per preset (default %(default)s)")
    results_md.add_options(parser)
    args = parser.parse_args()
    stamp = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
             "load": round(os.getloadavg()[0], 2)}
    print(f"batch {args.batch} x {args.seconds} s, {args.steps} steps, one fresh process per preset, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'family':11}{'preset':15}{'params M':>9}{'floor MiB':>11}{'peak MiB':>10}{'last step s':>13}")
    RESULTS.parent.mkdir(exist_ok=True)
    for family in args.families:
        for preset in args.presets:
            row = {**measure(family, preset, args), **stamp}
            with open(RESULTS, "a") as f:
                f.write(json.dumps(row) + "\n")
            if "error" in row:
                print(f"{family:11}{preset:15}  {row['error']}", flush=True)
            else:
                print(f"{family:11}{preset:15}{row['params'] / 1e6:>9.3f}{row['floor_mib']:>11,.0f}"
                      f"{row['peak_mib']:>10,.0f}{row['step_s'][-1]:>13.2f}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.write:
        results_md.write_section(__file__, markdown(results_md.latest(RESULTS, "family", "preset")), args.results_md)


if __name__ == "__main__":
    main()

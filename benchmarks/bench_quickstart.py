"""Wall time, CPU time and peak memory of the quick start (``selib quickstart``, what ``make quickstart``
runs), measured from outside: the quick start runs as a child process; ``getrusage(RUSAGE_CHILDREN)``
gives the CPU time of the quick start and all its descendants (this process adopts the orphaned ones) and
the peak RSS of the largest one (each run's own peak is in its ``metrics.json``: every run has a process of
its own), and a sampler adds up the proportional set size (PSS: pages shared between processes, such as the
fork server's torch that the training workers inherit, split between them) of the whole process tree once
a second, which is what a memory limit such as Binder's counts.

    python benchmarks/bench_quickstart.py [--seeds 0 1 2] [--jobs 2] [--runs-root runs] [--results DIR] [--write]

Targets on 2 CPU cores: under 30 minutes and under 2 GB resident memory. The figures are printed,
appended to ``benchmarks/results/quickstart.jsonl`` and, with ``--write``, put against the targets into
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import results_md

HERE = Path(__file__).resolve().parent
TARGET_MIN, TARGET_MIB = 30, 2048


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _become_subreaper() -> None:
    """Descendants orphaned by their parent are re-parented to this process (Linux
    ``PR_SET_CHILD_SUBREAPER``). The quick start's fork server is one: its parent never waits for it, so
    without this the CPU time and peak RSS of every training worker (the fork server's children) would be
    missing from ``RUSAGE_CHILDREN``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:       # 36 = PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed; the CPU time would be undercounted")


def markdown(figures: dict) -> str:
    """One run's figures against the targets, as RESULTS.md's table."""
    wall_min, pss = figures["wall_s"] / 60, figures["peak_total_pss_mib"]
    rows = [["wall time", f"{wall_min:.1f} min", f"{TARGET_MIN} min", results_md.verdict(wall_min, TARGET_MIN)],
            ["CPU time (the quick start and every process it started)", f"{figures['cpu_s'] / 60:.1f} min", "", ""],
            ["peak memory, all processes together (PSS)", f"{pss:,.0f} MiB", f"{TARGET_MIB:,} MiB",
             results_md.verdict(pss, TARGET_MIB)],
            ["peak memory, largest process (RSS)", f"{figures['peak_rss_mib']:,.0f} MiB", "", ""]]
    return (f"`selib quickstart --jobs {figures['jobs']}`, seeds {' '.join(map(str, figures['seeds']))}, exit code "
            f"{figures['exit_code']}.\n\n" + results_md.table(["figure", "measured", "target", ""], rows, "lrrl"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="students at once (make quickstart: 2)")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--data-root", default="data/embedded")
    parser.add_argument("--results", default="benchmarks/results/quickstart",
                        help="where the quick start copies its report (as make quickstart does)")
    results_md.add_options(parser)
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "selib", "quickstart", "--runs-root", args.runs_root, "--data-root",
           args.data_root, "--seeds", *map(str, args.seeds), "--jobs", str(args.jobs), "--results", args.results]
    _become_subreaper()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=HERE.parent)
    peak_pss, done = [0.0], threading.Event()

    def sample():
        while not done.wait(1.0):
            peak_pss[0] = max(peak_pss[0], _pss_mib(_tree(proc.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    while True:             # the orphans (the fork server), so that their usage counts in RUSAGE_CHILDREN
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "exit_code": code, "wall_s": round(wall, 1),
               "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
               "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "peak_total_pss_mib": round(peak_pss[0], 1),
               "seeds": args.seeds, "jobs": args.jobs, "threads": os.environ.get("OMP_NUM_THREADS"),
               "cores": len(os.sched_getaffinity(0)),
               "load_avg_1min_at_end": round(os.getloadavg()[0], 2), "machine": platform.machine()}
    print(f"quick start: exit {code}, wall {wall / 60:.1f} min, CPU {figures['cpu_s'] / 60:.1f} min, "
          f"peak RSS {figures['peak_rss_mib']:.0f} MiB (largest single process), "
          f"peak total PSS {figures['peak_total_pss_mib']:.0f} MiB (all processes together), "
          f"{figures['cores']} cores, load {figures['load_avg_1min_at_end']}")
    runs = {}
    for path in sorted((HERE.parent / args.runs_root).glob("*/metrics.json")):   # each run's own figures
        timing = json.loads(path.read_text())["timing"]
        runs[path.parent.name] = {"train_s": round(timing["train_seconds"], 1),
                                  "peak_rss_mib": round(timing.get("process_peak_rss_mib", float("nan")))}
        print(f"  {path.parent.name:26} train {runs[path.parent.name]['train_s']:7.1f} s, "
              f"peak RSS of its process {runs[path.parent.name]['peak_rss_mib']} MiB")
    figures["runs"] = runs
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    with open(results / "quickstart.jsonl", "a") as f:
        f.write(json.dumps(figures) + "\n")
    if args.write:
        results_md.write_section(__file__, markdown(figures), args.results_md)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

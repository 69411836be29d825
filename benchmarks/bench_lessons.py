"""Wall time and peak memory of each lesson, run top to bottom in a fresh kernel from a clean ``runs/``.

Each lesson runs alone, one after another, in a new kernel (nbclient) inside a temporary copy of the
repository (``pyproject.toml``, ``configs/``, ``notebooks/``, the shipped ``teachers/`` and the quick
start's committed results), so nothing committed changes and ``runs/`` starts empty: a lesson finds no
student cached by another lesson and trains what it needs, as on a machine that has run no other lesson. The embedded corpus is linked in from ``data/embedded`` when it is built
(building it takes under a minute; ``--build-corpus`` makes every lesson build its own copy instead).
The kernel imports selib from this checkout and gets 2 BLAS/torch threads, as on Binder.

Peak memory is the largest total proportional set size (PSS) of the kernel and every process it starts
(metric workers, papermill runs), sampled every 0.2 s: what a memory limit such as Binder's 2 GB counts.
CPU time is the user + system time of the same processes (each one's own, sampled as well, so a child
that lives under 0.2 s is missed): unlike the wall time, it hardly depends on what else the machine runs.

    python benchmarks/bench_lessons.py [--lessons 00 01 ...] [--write] [--save-notebooks]

Prints one line per lesson, appends them to ``benchmarks/results/lessons.jsonl`` and, with ``--write``,
puts them into the table of lesson times in ``notebooks/README.md``, into each lesson's own "**Time.**"
paragraph and (the latest line of every lesson, against the budget) into benchmarks/RESULTS.md;
``--save-notebooks`` writes each
lesson that ran without error back to ``notebooks/`` with its outputs (what ``make notebooks`` does,
measured). Budget per lesson: 4 minutes and
2 GB on 2 cores; the exit code is 1 if a lesson fails or exceeds it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_quickstart import _pss_mib, _tree  # noqa: E402  (one process-tree sampler for both benchmarks)
import results_md  # noqa: E402

BUDGET_S, BUDGET_MIB = 240, 2048
TABLE_BEGIN, TABLE_END = "<!-- lesson-times: begin -->", "<!-- lesson-times: end -->"


def lesson_paths(numbers: list[str] | None) -> list[Path]:
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if numbers:
        unknown = set(numbers) - {p.name[:2] for p in paths}
        if unknown:
            raise SystemExit(f"--lessons: no lesson numbered {', '.join(sorted(unknown))} in notebooks/; "
                             f"choose from {' '.join(p.name[:2] for p in paths)}")
        paths = [p for p in paths if p.name[:2] in numbers]
    return paths


def scratch_copy(dest: Path, build_corpus: bool) -> None:
    """A repository copy in which a lesson runs as in a fresh checkout: no runs/, the corpus linked or absent."""
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "configs", dest / "configs")
    shutil.copytree(ROOT / "notebooks", dest / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "teachers", dest / "teachers")
    shutil.copytree(ROOT / "benchmarks" / "results" / "quickstart", dest / "benchmarks" / "results" / "quickstart")
    (dest / "data").mkdir()
    corpus = ROOT / "data" / "embedded"
    if not build_corpus and (corpus / "manifest.json").is_file():
        (dest / "data" / "embedded").symlink_to(corpus.resolve())


def run_lesson(path: Path, build_corpus: bool, save: bool = False) -> dict:
    """Execute one lesson in a fresh kernel in a scratch copy; its wall time, peak PSS and outcome
    (``save``: the executed lesson replaces ``notebooks/<lesson>`` when every cell ran)."""
    with tempfile.TemporaryDirectory(prefix="selib-lesson-") as tmp:
        scratch_copy(Path(tmp), build_corpus)
        notebook = Path(tmp) / "notebooks" / path.name
        nb = nbformat.read(notebook, as_version=4)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
        client = NotebookClient(nb, timeout=1200, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(notebook.parent)}})
        peak, cpu_ticks, done = [0.0], {}, threading.Event()

        def sample():
            while not done.wait(0.2):
                tree = _tree(os.getpid())[1:]                                  # the kernel and its children
                peak[0] = max(peak[0], _pss_mib(tree))
                for pid in tree:
                    cpu_ticks[pid] = max(cpu_ticks.get(pid, 0), _own_cpu_ticks(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start, error = time.perf_counter(), None
        try:
            client.execute(env=env)
        except Exception as exc:  # a failing cell: report which lesson and why, then go on with the next
            lines = str(exc).strip().splitlines() or [""]
            # a timeout says so on its first line; a cell's error ends with the exception line
            error = f"{type(exc).__name__}: {lines[0] if isinstance(exc, CellTimeoutError) else lines[-1]}"
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        if save and error is None:
            nbformat.write(nb, path)
    return {"lesson": path.name, "title": lesson_title(path), "ok": error is None, "error": error,
            "wall_s": round(wall, 1), "cpu_s": round(sum(cpu_ticks.values()) / os.sysconf("SC_CLK_TCK"), 1),
            "peak_pss_mib": round(peak[0]), "date": time.strftime("%Y-%m-%d %H:%M"),
            "cores": len(os.sched_getaffinity(0)), "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
            "corpus": "built by the lesson" if build_corpus else "linked, already built"}


def _own_cpu_ticks(pid: int) -> int:
    """User + system CPU time of one process itself (not its children), in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def lesson_title(path: Path) -> str:
    first = nbformat.read(path, as_version=4).cells[0].source.splitlines()[0]
    return first.lstrip("# ").split("·", 1)[-1].split(":", 1)[0].strip()


def over_budget(figures: dict) -> bool:
    return figures["wall_s"] > BUDGET_S or figures["peak_pss_mib"] > BUDGET_MIB


def cells(figures: dict) -> list[str]:
    """One lesson's row of the table of lesson times: number, title, wall, CPU, peak PSS, conditions."""
    status = "" if figures["ok"] else " (failed)"
    return [figures["lesson"][:2], figures["title"], f"{figures['wall_s']:.0f} s{status}", f"{figures['cpu_s']:.0f} s",
            f"{figures['peak_pss_mib']:,d} MiB", f"{figures['date'][:10]}, {figures['cores']} cores, "
            f"load {figures['load_avg_1min_at_end']:g}"]


def table_row(figures: dict) -> str:
    return "| " + " | ".join(cells(figures)) + " |"


def markdown(records: dict[tuple, dict]) -> str:
    """The latest record of each lesson as RESULTS.md's table, against the budget of a lesson."""
    budget = f"{BUDGET_S // 60} min, {BUDGET_MIB:,} MiB"
    rows = [cells(r) + [budget, ("misses" if over_budget(r) else "meets") if r["ok"] else "fails"]
            for _, r in sorted(records.items())]
    return ("The latest line of each lesson in `results/lessons.jsonl`, each lesson in a fresh kernel.\n\n"
            + results_md.table(["#", "lesson", "wall time", "CPU time", "peak memory", "measured", "budget", ""],
                               rows, "llrrrlrl"))


def write_table(rows: dict[str, str], readme: Path) -> None:
    """Replace the measured lessons' rows of the table between the markers in ``readme``; keep the others."""
    text = readme.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise SystemExit(f"{readme}: no table of lesson times between {TABLE_BEGIN} and {TABLE_END}; add the markers")
    head, rest = text.split(TABLE_BEGIN, 1)
    table, tail = rest.split(TABLE_END, 1)
    lines = table.strip("\n").splitlines()
    kept = {m.group(1): line for line in lines if (m := re.match(r"\| (\d\d) \|", line))}
    kept.update(rows)
    header = [line for line in lines if not re.match(r"\| \d\d \|", line)]
    body = "\n".join(header + [kept[k] for k in sorted(kept)])
    readme.write_text(f"{head}{TABLE_BEGIN}\n{body}\n{TABLE_END}{tail}")


TIME_PARAGRAPH = re.compile(r"\*\*Time\.\*\*.*?(?=\n\n|\Z)", re.DOTALL)


def write_time(path: Path, figures: dict) -> None:
    """Put the measured figures into the lesson's own "**Time.**" paragraph (its first cell)."""
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    if not TIME_PARAGRAPH.search(first.source):
        raise SystemExit(f"{path}: its first cell has no '**Time.**' paragraph to hold the measured time; add one")
    sentence = (f"**Time.** Measured by `benchmarks/bench_lessons.py` on {figures['date'][:10]}: "
                f"{figures['wall_s']:.0f} s wall time ({figures['cpu_s']:.0f} s of CPU time) from a fresh kernel on "
                f"{figures['cores']} CPU cores (load average {figures['load_avg_1min_at_end']:g} at the end), at most "
                f"{figures['peak_pss_mib']:,d} MiB; the [lesson list](README.md) has every lesson's figures.")
    first.source = TIME_PARAGRAPH.sub(lambda _: sentence, first.source, count=1)
    nbformat.write(nb, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lessons", nargs="+", metavar="NN", help="lesson numbers (default: every lesson)")
    parser.add_argument("--build-corpus", action="store_true", help="let each lesson build the corpus itself")
    results_md.add_options(parser, writes="the figures into notebooks/README.md, each lesson's Time paragraph "
                           "and --results-md")
    parser.add_argument("--save-notebooks", action="store_true",
                        help="write each executed lesson back to notebooks/ with its outputs")
    args = parser.parse_args()
    failed = False
    (HERE / "results").mkdir(exist_ok=True)
    for path in lesson_paths(args.lessons):
        figures = run_lesson(path, args.build_corpus, args.save_notebooks)
        over = over_budget(figures)
        failed |= over or not figures["ok"]
        print(f"{path.name}: {'ok' if figures['ok'] else figures['error']}, wall {figures['wall_s']:.0f} s, "
              f"CPU {figures['cpu_s']:.0f} s, "
              f"peak PSS {figures['peak_pss_mib']} MiB, load {figures['load_avg_1min_at_end']}"
              + (" - over the budget of 4 min / 2 GB" if over else ""), flush=True)
        with open(HERE / "results" / "lessons.jsonl", "a") as f:
            f.write(json.dumps(figures) + "\n")
        if args.write and figures["ok"]:   # after every lesson, so an interrupted run keeps what it measured
            write_table({path.name[:2]: table_row(figures)}, ROOT / "notebooks" / "README.md")
            write_time(path, figures)
    if args.write:
        results_md.write_section(__file__, markdown(results_md.latest(HERE / "results" / "lessons.jsonl", "lesson")),
                                 args.results_md)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

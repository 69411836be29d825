"""The generated blocks of benchmarks/RESULTS.md: each bench script's ``--write`` replaces its own block.

A block lies between ``<!-- begin generated: <script> -->`` and ``<!-- end generated: <script> -->`` and
starts with a line that describes the machine; everything outside the markers is written by hand
(methods, profiles, why a target is missed) and is kept as it is. ``python benchmarks/results_md.py``
(the last step of ``make bench``) writes the machine block at the top of the file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
NAMES = {"dccrn": "DCCRN-CL", "convtasnet": "Conv-TasNet", "dptnet": "DPTNet", "dpdcrn": "DPDCRN"}


def machine() -> str:
    """One line: CPU, cores, memory, OS, Python, torch and its threads, the load average now, the UTC time."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    torch = sys.modules.get("torch")  # not imported here: some scripts keep torch out of their own process
    version = torch.__version__ if torch else metadata.version("torch")
    threads = torch.get_num_threads() if torch else os.environ.get("OMP_NUM_THREADS", "default")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Machine: {cpu}, {len(os.sched_getaffinity(0))} cores, {memory:.1f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, torch {version}, {threads} torch thread(s), "
            f"load average {os.getloadavg()[0]:.1f}, {now}.")


def table(columns: list[str], rows: list[list], align: str) -> str:
    """A Markdown table; ``align`` has one letter per column: ``l`` (text) or ``r`` (figures)."""
    def line(cells) -> str:
        return "|" + "|".join(f" {cell} " if cell != "" else " " for cell in cells) + "|"

    return "\n".join([line(columns), "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
                      *map(line, rows)])


def verdict(value: float, target: float, at_most: bool = True) -> str:
    """``meets`` or ``misses``: ``value`` against ``target``, an upper bound unless ``at_most`` is false."""
    return "meets" if (value <= target if at_most else value >= target) else "misses"


def latest(path: Path, *fields: str) -> dict[tuple, dict]:
    """The last JSON line of ``path`` for each value of ``fields``, keyed by those values, in first-seen order."""
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        records[tuple(record[f] for f in fields)] = record
    return records


def add_options(parser: argparse.ArgumentParser, writes: str = "the figures into --results-md") -> None:
    """``--write`` (off by default: an ad-hoc run leaves RESULTS.md alone) and ``--results-md PATH``."""
    parser.add_argument("--write", action="store_true", help=f"write {writes} (make bench does)")
    parser.add_argument("--results-md", type=Path, default=RESULTS, help="default: %(default)s")


def write_section(script: str, markdown: str, path: Path = RESULTS) -> None:
    """Replace the block of ``script`` (a name or a path) in ``path`` with the machine line and ``markdown``,
    or append a ``## <script>`` section with the block when the file has none."""
    name = Path(script).name
    begin, end = f"<!-- begin generated: {name} -->", f"<!-- end generated: {name} -->"
    block = f"{begin}\n{machine()}\n\n{markdown.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    counts = text.count(begin), text.count(end)
    if counts == (0, 0):
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + f"## {name}\n\n{block}\n"
    elif counts == (1, 1) and text.index(begin) < text.index(end):
        head, rest = text.split(begin)
        text = head + block + rest.split(end)[1]
    else:
        raise ValueError(f"{path}: the markers of {name} are unbalanced or duplicated ({counts[0]} begin, "
                         f"{counts[1]} end); fix them by hand")
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_section("machine", "The machine of the last `make bench`; every block below starts with the machine "
                  "and the load of its own run.")

"""The summary of a regime grid (:mod:`selib.course.regimes`; docs/regimes.md): per family, axis, cell
and KD method, from the run folders only.

- Δ per test metric: KD minus the scratch student of the same seed on the same test utterances, with
  the seeds × utterances bootstrap 95 % interval (:func:`selib.stats.paired_bootstrap`); the
  teacher − scratch gap on the same utterances and the share of it closed (``denominator=``).
- Steps-to-quality (:func:`steps_to_quality`): the target of a seed is the scratch student's best
  validation SI-SDR over its run; a run reaches it at the first validation step whose score is at least
  the target. Per seed, the ratio KD steps / scratch steps (< 1: KD gets there sooner); its mean over
  seeds with a bootstrap interval over seeds, given only when every seed's KD run reached the target
  (else the number that did).
- Δ over the learning curve: KD minus scratch validation SI-SDR at every validation step both runs
  recorded, mean over seeds with a bootstrap interval over seeds.

:func:`summarize` writes ``summary.json`` (every number, the command, the grid file's SHA-256, the git
commit), ``summary.md``, ``map.png`` and ``curves.png``, and copies each finished run's small files
(``config.yaml``, ``history.json``, ``metrics.json``, ``scores.csv``; no checkpoints) to ``runs/``.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from selib.course import REPO_ROOT
from selib.files import write_json
from selib.report import fmt_interval, paired_matrices, read_scores
from selib.runs import DONE, RunDir
from selib.stats import paired_bootstrap

N_BOOT = 10_000
SMALL_FILES = ("config", "history", "metrics", "scores")      # RunDir attributes copied to the results


def steps_to_quality(history: list[dict], target: float) -> int | None:
    """The ``step`` of the first record of ``history`` whose ``valid_si_sdr`` is at least ``target``;
    None when no validation reaches it."""
    return next((h["step"] for h in history if h.get("valid_si_sdr") is not None and h["valid_si_sdr"] >= target),
                None)


def _interval(values, n_boot: int = N_BOOT) -> dict:
    """Mean of per-seed values and its bootstrap interval over seeds (a seeds × 1 paired bootstrap)."""
    stats = paired_bootstrap(np.asarray(values, dtype=float)[:, None], n_boot=n_boot)
    return {"mean": stats["mean"], "low": stats["low"], "high": stats["high"], "n_seeds": stats["n_seeds"]}


def quality_steps(pairs: list[tuple[list[dict], list[dict]]], n_boot: int = N_BOOT) -> dict:
    """Steps-to-quality of ``(kd history, scratch history)`` pairs, one per seed (see the module)."""
    seeds = []
    for kd, scratch in pairs:
        valid = [h["valid_si_sdr"] for h in scratch if h.get("valid_si_sdr") is not None]
        target = max(valid)
        seeds.append({"target": target, "scratch_steps": steps_to_quality(scratch, target),
                      "kd_steps": steps_to_quality(kd, target)})
    reached = [s for s in seeds if s["kd_steps"] is not None]
    ratio = (_interval([s["kd_steps"] / s["scratch_steps"] for s in seeds], n_boot)
             if len(reached) == len(seeds) else None)
    return {"per_seed": seeds, "reached": len(reached), "n_seeds": len(seeds), "ratio": ratio}


def curve_delta(pairs: list[tuple[list[dict], list[dict]]], n_boot: int = N_BOOT) -> list[dict]:
    """KD − scratch validation SI-SDR at every step validated in every run of ``pairs``."""
    curves = [tuple({h["step"]: h["valid_si_sdr"] for h in hist if h.get("valid_si_sdr") is not None}
                    for hist in pair) for pair in pairs]
    steps = sorted(set.intersection(*(set(kd) & set(scratch) for kd, scratch in curves)))
    rows = []
    for step in steps:
        delta = _interval([kd[step] - scratch[step] for kd, scratch in curves], n_boot)
        rows.append({"step": step, "kd": float(np.mean([kd[step] for kd, _ in curves])),
                     "scratch": float(np.mean([s[step] for _, s in curves])), **delta})
    return rows


def _group(plan) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for pair in plan.pairs:
        groups.setdefault((pair["family"], pair["axis"], pair["cell"], pair["method"]), []).append(pair)
    return groups


def cell_summary(pairs: list[dict], folders: dict[str, Path], n_boot: int = N_BOOT) -> dict:
    """Every number of one (family, axis, cell, method) from its pairs whose KD and scratch runs are done."""
    done = [p for p in pairs if all(RunDir(folders[p[k]]).status == DONE for k in ("kd", "scratch"))]
    out = {"seeds": [p["seed"] for p in done], "n_planned": len(pairs), "metrics": {}}
    if not done:
        return out
    teachers = [RunDir(folders[p["teacher"]]) for p in done]
    scores = [(read_scores(folders[p["kd"]]), read_scores(folders[p["scratch"]]),
               read_scores(t.path) if t.status == DONE else None) for p, t in zip(done, teachers)]
    for metric, (ids, diff, gap) in paired_matrices(scores).items():
        row = {"diff": paired_bootstrap(diff, n_boot=n_boot), "gap": None, "gap_closed": None}
        if gap is not None:
            row["gap"] = paired_bootstrap(gap, n_boot=n_boot)
            row["gap_closed"] = paired_bootstrap(diff, gap, n_boot=n_boot)
        out["metrics"][metric] = row
    histories = [(RunDir(folders[p["kd"]]).read_history(), RunDir(folders[p["scratch"]]).read_history())
                 for p in done]
    out["steps_to_quality"] = quality_steps(histories, n_boot)
    out["curve"] = curve_delta(histories, n_boot)
    return out


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def summarize(plan, results: str | Path, command: str = "", n_boot: int = N_BOOT) -> dict:
    """Write ``summary.json``, ``summary.md``, ``map.png`` and ``curves.png`` to ``results`` and copy the
    finished runs' small files to ``results/runs/<run folder>/``; returns the ``summary.json`` content."""
    results = Path(results)
    folders = {name: Path(run.folder) for name, run in plan.runs.items()}
    runs = {name: {"kind": run.kind, "name": run.name, "seed": run.seed, "folder": str(folders[name]), "test": run.test,
                   "status": RunDir(folders[name]).status} for name, run in plan.runs.items()}
    cells = [{"family": f, "axis": a, "cell": c, "method": m, **{k: p[0][k] for k in ("kd", "scratch", "teacher")},
              **cell_summary(p, folders, n_boot)} for (f, a, c, m), p in _group(plan).items()]
    grid = plan.grid
    summary = {"grid": {"name": grid["name"], "path": grid["path"], "sha256": grid["sha256"]},
               "command": command, "git_commit": _git_commit(), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
               "bootstrap": {"n_boot": n_boot, "seed": 0, "confidence": 0.95, "interval": "percentile",
                             "scheme": "seeds and utterances resampled independently with replacement"},
               "runs": runs, "cells": cells}
    (results / "runs").mkdir(parents=True, exist_ok=True)
    for name, info in runs.items():
        if info["status"] == DONE:
            run, copy = RunDir(folders[name]), results / "runs" / folders[name].name
            copy.mkdir(exist_ok=True)
            for attr in SMALL_FILES:
                if getattr(run, attr).is_file():
                    shutil.copy2(getattr(run, attr), copy / getattr(run, attr).name)
    write_json(results / "summary.json", summary)
    (results / "summary.md").write_text(markdown(summary))
    plot_map(cells, results / "map.png")
    plot_curves(cells, results / "curves.png")
    return summary


def _shown(stats: dict | None, digits: int = 2) -> str:
    return "—" if stats is None else fmt_interval(stats["mean"], stats["low"], stats["high"], digits)


def markdown(summary: dict) -> str:
    """``summary.md``: one table per axis."""
    grid = summary["grid"]
    lines = [f"# Regime map: {grid['name']}", "",
             f"Grid `{grid['path']}` (SHA-256 `{grid['sha256'][:16]}…`), code `{summary['git_commit']}`, "
             f"written {summary['written']}; command `{summary['command']}`.", "",
             "Δ: KD − scratch of the same seed on the same test utterances, mean with the 95 % bootstrap "
             "interval over seeds × utterances. Gap: teacher − scratch; closed: Δ / gap over the same draws. "
             "Steps: KD steps to reach the scratch student's best validation SI-SDR / the scratch student's "
             "steps to it (< 1: sooner; k/n: seeds whose KD run reached it). Embedded corpora are synthetic: "
             "compare rows with each other only.", ""]
    metrics = list(dict.fromkeys(m for c in summary["cells"] for m in c["metrics"]))
    for axis in dict.fromkeys(c["axis"] for c in summary["cells"]):
        header = ["family", "cell", "method", "seeds"] + [f"Δ {m}" for m in metrics] + \
                 ["gap si_sdr", "gap closed si_sdr", "steps ratio", "reached"]
        lines += [f"## {axis}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for c in (c for c in summary["cells"] if c["axis"] == axis):
            si = c["metrics"].get("si_sdr", {})
            steps = c.get("steps_to_quality") or {}
            cells = [c["family"], c["cell"], c["method"], f"{len(c['seeds'])}/{c['n_planned']}"]
            cells += [_shown(c["metrics"].get(m, {}).get("diff"), 3) for m in metrics]
            cells += [_shown(si.get("gap")), _shown(si.get("gap_closed")), _shown(steps.get("ratio")),
                      f"{steps['reached']}/{steps['n_seeds']}" if steps else "—"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    missing = [f"`{n}` ({r['status']})" for n, r in summary["runs"].items() if r["status"] != DONE]
    if missing:
        lines += ["## Runs not finished", "", ", ".join(missing), ""]
    return "\n".join(lines)


def _panels(cells: list[dict], title: str):
    """A figure with one panel per (family, axis) and the cells of each panel."""
    from matplotlib.figure import Figure  # not pyplot: leaves the caller's backend alone

    families = list(dict.fromkeys(c["family"] for c in cells))
    axes_names = list(dict.fromkeys(c["axis"] for c in cells))
    fig = Figure(figsize=(4.2 * len(axes_names), 3.4 * len(families)), layout="constrained")
    fig.suptitle(title)
    grid = fig.subplots(len(families), len(axes_names), squeeze=False)
    panels = [(grid[i][j], f"{family}: {axis}", [c for c in cells if c["family"] == family and c["axis"] == axis])
              for i, family in enumerate(families) for j, axis in enumerate(axes_names)]
    return fig, panels


def plot_map(cells: list[dict], path: Path, metric: str = "si_sdr") -> None:
    """Δ ``metric`` with its interval per cell (x) and method (markers), one panel per family and axis."""
    fig, panels = _panels(cells, f"KD − scratch, test {metric} (95 % interval over seeds × utterances)")
    for ax, title, members in panels:
        names, methods = list(dict.fromkeys(c["cell"] for c in members)), list(dict.fromkeys(c["method"] for c in members))
        for k, method in enumerate(methods):
            shown = [(names.index(c["cell"]), c["metrics"][metric]["diff"]) for c in members
                     if c["method"] == method and metric in c["metrics"]]
            if shown:
                x = np.array([i for i, _ in shown]) + 0.12 * (k - (len(methods) - 1) / 2)
                mean = np.array([d["mean"] for _, d in shown])
                err = np.array([[d["mean"] - d["low"] for _, d in shown], [d["high"] - d["mean"] for _, d in shown]])
                ax.errorbar(x, mean, yerr=err, fmt="o", capsize=3, label=method)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(f"Δ {metric}")
        if methods:
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)


def plot_curves(cells: list[dict], path: Path) -> None:
    """Validation SI-SDR over the steps, KD (solid) and scratch (dashed), mean over seeds, per cell and method."""
    fig, panels = _panels(cells, "validation SI-SDR over training: KD (solid) vs scratch (dashed), mean over seeds")
    for ax, title, members in panels:
        for c in (c for c in members if c.get("curve")):
            steps = [r["step"] for r in c["curve"]]
            line, = ax.plot(steps, [r["kd"] for r in c["curve"]], marker=".", label=f"{c['cell']} {c['method']}")
            ax.plot(steps, [r["scratch"] for r in c["curve"]], ls="--", color=line.get_color())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("valid SI-SDR (dB)")
        if ax.lines:
            ax.legend(fontsize=6)
    fig.savefig(path, dpi=100)

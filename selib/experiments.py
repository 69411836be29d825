"""Experiments: papermill runs from YAML configs, and reports built from the run folders only
(lesson ``11_results_and_deployment``).

:func:`run_configs` executes ``notebooks/runs/train.ipynb`` once per (config, seed) in a papermill
subprocess, into ``<runs_root>/<name>-s<seed>/``. A failed run leaves a ``FAILED`` file (the reason
and the path of its log) next to its executed notebook, and the other runs go on; a run whose
``metrics.json`` exists is skipped, so an interrupted batch resumes where it stopped.
:func:`report` groups the run folders by config name and tabulates mean ± std over seeds.
:func:`quickstart` is what ``make quickstart`` runs.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from selib.checkpoints import load_model  # noqa: F401  (lessons import it from here)

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_NOTEBOOK = REPO_ROOT / "notebooks" / "runs" / "train.ipynb"
COURSE_CONFIGS = REPO_ROOT / "configs" / "course"
# Rows of a report are ordered teacher, scratch student, logit baselines, DFKD, I2S-TFCKD.
_ROLE_ORDER = ["teacher", "none", "logits-mse", "logits-sisnr", "logits-spec", "dfkd", "i2s-tfckd",
               "dfkd+i2s-tfckd"]


def _run_name(config_path: Path, overrides: dict) -> str:
    """The run name of the resolved config; for a config that does not load (its run will fail and
    say why), the ``name`` written in the file, else the file stem."""
    from selib.config import load

    try:
        return load(config_path, overrides).name
    except ValueError:
        pass
    try:
        raw = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError):
        raw = None
    return str(raw["name"]) if isinstance(raw, dict) and raw.get("name") else config_path.stem


def _teacher_override(config_path: Path, runs_root: Path) -> dict:
    """Configs name their teacher ``runs/<teacher>-s{seed}/best.pt``; map that ``runs/`` onto
    ``runs_root`` so a batch run elsewhere finds the teachers it trained itself."""
    try:
        raw = yaml.safe_load(config_path.read_text())
        checkpoint = Path(raw["teacher"]["checkpoint"])
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return {}
    if checkpoint.is_absolute() or checkpoint.parts[0] != "runs" or runs_root == Path("runs"):
        return {}
    return {"teacher.checkpoint": str(runs_root.joinpath(*checkpoint.parts[1:]))}


def _failure_reason(notebook: Path, log: Path, returncode: int) -> str:
    """The exception the executed notebook stopped on, else the last line of the log."""
    import nbformat

    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except (OSError, ValueError):  # not written, or cut short: fall back to the log
        nb = nbformat.v4.new_notebook()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out['ename']}: {out['evalue']}"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    return (lines[-1] if lines else "no output") + f" (papermill exit code {returncode})"


def run_one(config_path: str | Path, seed: int = 0, runs_root: str | Path = "runs",
            overrides: dict | None = None, env: dict | None = None) -> dict:
    """Execute the training notebook for one (config, seed); returns ``{"run_dir", "status",
    "reason"}`` with status ``done``, ``skipped`` (metrics.json already there) or ``failed``."""
    config_path, runs_root = Path(config_path), Path(runs_root)
    overrides = {**_teacher_override(config_path, runs_root), **(overrides or {})}
    run_dir = runs_root / f"{_run_name(config_path, overrides)}-s{seed}"
    if (run_dir / "metrics.json").is_file():
        return {"run_dir": run_dir, "status": "skipped", "reason": ""}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "FAILED").unlink(missing_ok=True)
    params = run_dir / "params.yaml"
    params.write_text(yaml.safe_dump({"config_path": str(config_path), "overrides": overrides,
                                      "run_dir": str(run_dir), "seed": int(seed)}, sort_keys=False))
    notebook, log = run_dir / "train.ipynb", run_dir / "papermill.log"
    cmd = [sys.executable, "-m", "papermill", str(TRAIN_NOTEBOOK), str(notebook), "-f", str(params),
           "-k", "python3", "--log-output", "--no-progress-bar"]
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if proc.returncode == 0 and (run_dir / "metrics.json").is_file():
        return {"run_dir": run_dir, "status": "done", "reason": ""}
    reason = (_failure_reason(notebook, log, proc.returncode) if proc.returncode
              else "the notebook finished without writing metrics.json")
    (run_dir / "FAILED").write_text(f"reason: {reason}\nlog: {log}\nnotebook: {notebook}\n")
    return {"run_dir": run_dir, "status": "failed", "reason": reason}


def run_configs(configs, runs_root: str | Path = "runs", seeds=(0,), overrides: dict | None = None,
                workers: int = 1) -> list[dict]:
    """Run every (config, seed) with papermill (see :func:`run_one`); ``workers`` runs go at once,
    each with an equal share of the CPU threads. Prints one line per run; returns their results."""
    jobs = [(Path(c), int(s)) for c in configs for s in seeds]
    env = {**os.environ, "SELIB_PROGRESS": "0"}  # the log and the notebook get plain lines
    if workers > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))

    def job(item):
        result = run_one(item[0], item[1], runs_root, overrides, env)
        line = f"[{result['status']}] {result['run_dir']}"
        print(line + (f": {result['reason']}" if result["reason"] else ""), flush=True)
        return result

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(job, jobs))


def _expand(runs) -> list[Path]:
    """Run folders from paths, globs, or roots whose sub-folders are runs."""
    if isinstance(runs, (str, Path)):
        runs = [runs]
    found = []
    for item in runs:
        matches = [Path(p) for p in sorted(glob.glob(str(item)))] or [Path(item)]
        for path in matches:
            if not path.is_dir():
                raise FileNotFoundError(f"{path}: no such run folder; pass run folders or a runs root.")
            if (path / "params.yaml").is_file() or (path / "config.yaml").is_file():
                found.append(path)
            else:
                found.extend(p for p in sorted(path.iterdir())
                             if (p / "params.yaml").is_file() or (p / "config.yaml").is_file())
    return found


def _metric_means(metrics: dict) -> dict[str, float]:
    """Test-set mean of each metric in a run's metrics.json (its ``summary`` section)."""
    return {k: float(v["mean"]) for k, v in metrics["summary"].items()
            if isinstance(v, dict) and isinstance(v.get("mean"), (int, float))}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def report(runs, out_dir: str | Path = "runs", metrics: list[str] | None = None) -> list[dict]:
    """Comparison table from run folders only: one row per config name, with mean ± std over seeds
    of each metric in ``metrics.json``, the student's parameter count, the KD method and the number
    of seeds. Writes ``report.md``, ``report.csv`` and ``report.png`` to ``out_dir``; failed and
    unfinished runs are listed separately. Returns the rows (dicts)."""
    groups: dict[str, list] = {}
    failed = []
    for run_dir in _expand(runs):
        config_file = run_dir / "config.yaml"
        if not (run_dir / "metrics.json").is_file() or not config_file.is_file():
            reason = ((run_dir / "FAILED").read_text().splitlines()[0].removeprefix("reason: ")
                      if (run_dir / "FAILED").is_file() else "unfinished (no metrics.json)")
            failed.append({"run_dir": str(run_dir), "reason": reason,
                           "log": str(run_dir / "papermill.log")})
            continue
        config = yaml.safe_load(config_file.read_text())
        result = json.loads((run_dir / "metrics.json").read_text())
        groups.setdefault(config["name"], []).append((result, config, _metric_means(result)))

    table = []
    for name, members in groups.items():
        result, config = members[0][:2]
        method = config["kd"]["method"]
        role = "teacher" if "teacher" in config["model"]["preset"] and method == "none" else method
        row = {"name": name, "model": f"{config['model']['family']}/{config['model']['preset']}",
               "role": role, "kd": method, "data": config["data"]["name"],
               "params": result["model"]["params"], "seeds": len(members),
               "train_seconds": _mean_std([m[0]["timing"]["train_seconds"] for m in members])[0]}
        names = metrics or [k for k in members[0][2]]
        for metric in names:
            values = [m[2][metric] for m in members if metric in m[2]]
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(values) if values else (math.nan,) * 2
        table.append(row)
    table.sort(key=lambda r: (r["model"].split("/")[0],
                              _ROLE_ORDER.index(r["role"]) if r["role"] in _ROLE_ORDER else 99, r["name"]))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metric_names = list(dict.fromkeys(k[:-5] for r in table for k in r if k.endswith("_mean")))
    _write_csv(table, out_dir / "report.csv")
    _write_markdown(table, failed, metric_names, out_dir / "report.md")
    if table:
        _write_chart(table, metric_names, out_dir / "report.png")
    return table


def _write_csv(table: list[dict], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in table for k in r)) or ["name"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)


def _write_markdown(table, failed, metric_names, path: Path) -> None:
    lines = ["# Results", ""]
    if any(r["data"] == "embedded" for r in table):
        lines += ["Embedded corpus rows are synthetic TTS results: compare them with each other only, "
                  "never with published VoiceBank+DEMAND or DNS2020 numbers.", ""]
    header = ["run", "model", "KD", "params", "seeds", "train s"] + metric_names
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table:
        cells = [r["name"], r["model"], r["kd"], f"{r['params']:,}", str(r["seeds"]), f"{r['train_seconds']:.0f}"]
        cells += [_fmt(r.get(f"{m}_mean", math.nan), r.get(f"{m}_std", math.nan)) for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values are mean ± sample standard deviation over seeds of each run's test-set mean."]
    if failed:
        lines += ["", "## Failed or unfinished runs", ""]
        lines += [f"- `{f['run_dir']}`: {f['reason']} (log: `{f['log']}`)" for f in failed]
    path.write_text("\n".join(lines) + "\n")


def _write_chart(table, metric_names, path: Path) -> None:
    from matplotlib.figure import Figure  # not pyplot: leaves the caller's backend alone

    from selib import plots

    fig = Figure(figsize=(4.5 * len(metric_names), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metric_names), squeeze=False)
    for ax, metric in zip(axes[0], metric_names):
        plots.result_chart(table, metric, ax=ax)
    fig.savefig(path, dpi=110)


def quickstart(runs_root: str | Path = "runs", seeds=(0, 1, 2), data_root: str | Path = "data/embedded",
               configs_dir: str | Path = COURSE_CONFIGS) -> list[dict]:
    """Build the embedded corpus, train every course config for each seed (runs without a teacher
    first), then print and write the report to ``<runs_root>/report.md``.

    The runs train one after another in this process, into the same run folders ``selib run``
    writes (without the executed notebook): a papermill kernel per run would add about 8 s and a
    second process's memory to each of the 27 runs. A failed run leaves a ``FAILED`` file and the
    others go on; finished runs are skipped, so an interrupted quick start resumes.
    """
    import traceback

    from selib import data, train
    from selib.config import load

    runs_root = Path(runs_root)
    print(f"corpus: {data.build_embedded(data_root)}", flush=True)
    configs = sorted(Path(configs_dir).glob("*.yaml"))
    if not configs:
        raise FileNotFoundError(f"{configs_dir}: no course configs (*.yaml) found.")
    teachers = [c for c in configs if yaml.safe_load(c.read_text()).get("teacher") is None]
    for config_path in teachers + [c for c in configs if c not in teachers]:
        overrides = {**_teacher_override(config_path, runs_root), "data.root": str(data_root)}
        for seed in seeds:
            config = load(config_path, {**overrides, "seed": int(seed)})
            run_dir = runs_root / f"{config.name}-s{seed}"
            if (run_dir / "metrics.json").is_file():
                print(f"[skipped] {run_dir}", flush=True)
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "FAILED").unlink(missing_ok=True)
            try:
                train.run(config, run_dir)
            except Exception as err:  # one failed run must not stop the comparison
                (run_dir / "error.log").write_text(traceback.format_exc())
                (run_dir / "FAILED").write_text(f"reason: {type(err).__name__}: {err}\n"
                                                f"log: {run_dir / 'error.log'}\n")
                print(f"[failed] {run_dir}: {err}", flush=True)
                continue
            print(f"[done] {run_dir}", flush=True)
    table = report(runs_root, runs_root)
    print((runs_root / "report.md").read_text(), flush=True)
    return table

"""Executing runs (lesson ``11_results_and_deployment``): :func:`execute`, the one place that skips,
starts and records a run, in this process or as a papermill run of ``notebooks/runs/train.ipynb``;
:func:`run_configs` runs every (config, seed) with papermill into ``<runs_root>/<name>-s<seed>/``. A
failed run leaves a ``FAILED`` file (the reason and the path of its log) next to its executed notebook,
and the other runs go on; a run whose ``metrics.json`` exists is skipped, so an interrupted batch resumes
where it stopped.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from selib.runs import DONE, RunDir, run_name

TRAIN_NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "runs" / "train.ipynb"


def _config_name(config_path: Path, overrides: dict) -> str:
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
            overrides: dict | None = None, env: dict | None = None, via: str = "papermill") -> dict:
    """Train and test one (config, seed) into ``<runs_root>/<name>-s<seed>`` with :func:`execute`;
    the teacher paths ``runs/...`` of the config are mapped onto ``runs_root``."""
    config_path, runs_root = Path(config_path), Path(runs_root)
    overrides = {**_teacher_override(config_path, runs_root), **(overrides or {}), "seed": int(seed)}
    run = RunDir(runs_root / run_name(_config_name(config_path, overrides), seed))
    return execute(config_path, run, via, overrides, env=env)


def execute(config, run: RunDir, via: str = "process", overrides: dict | None = None,
            checkpoint: str | Path | None = None, env: dict | None = None) -> dict:
    """Execute one run into ``run``: the only place that skips, starts and records runs.

    ``config`` is a YAML path or a :class:`~selib.config.Config` (with ``overrides``). ``via="process"``
    trains and tests in this process (:func:`selib.train.run`; with ``checkpoint``, it only tests that
    checkpoint, e.g. a shipped teacher); ``via="papermill"`` executes ``notebooks/runs/train.ipynb`` in a
    papermill subprocess (with ``env``) and keeps the executed notebook. A finished run is skipped; a
    failed one leaves ``FAILED`` with the reason and the log that holds the details (``error.log``, or
    ``papermill.log`` next to the notebook) and does not stop the caller. Prints one line; returns
    ``{"run_dir", "status", "reason"}`` with status ``done``, ``skipped`` or ``failed``.
    """
    if via not in EXECUTORS:
        raise ValueError(f"via = {via!r}; choose one of {', '.join(EXECUTORS)}.")
    if via == "papermill" and checkpoint is not None:
        raise ValueError("via = 'papermill' trains the run; testing a given checkpoint runs in process.")
    if run.status == DONE:
        result = {"run_dir": run.path, "status": "skipped", "reason": ""}
    else:
        run.start()
        reason = EXECUTORS[via](config, run, overrides or {}, checkpoint, env)
        if reason is None and run.status != DONE:
            reason = f"the run finished without writing {run.metrics.name}"
            run.fail(reason, run.papermill_log if via == "papermill" else run.log)
        result = {"run_dir": run.path, "status": "failed" if reason else "done", "reason": reason or ""}
    print(f"[{result['status']}] {run.path}" + (f": {result['reason']}" if result["reason"] else ""), flush=True)
    return result


def _in_process(config, run: RunDir, overrides: dict, checkpoint, env) -> str | None:
    """Train and test (or only test ``checkpoint``) in this process; the failure reason, else None."""
    import traceback

    from selib import train
    from selib.config import load

    try:
        cfg = load(config, overrides)
        if checkpoint is None:
            train.run(cfg, run.path)
        else:
            train.Trainer(cfg, run.path).test(checkpoint)
    except Exception as err:  # one failed run must not stop the comparison
        run.error_log.write_text(traceback.format_exc())
        reason = f"{type(err).__name__}: {err}"
        run.fail(reason, run.error_log)
        return reason
    return None


def _papermill(config, run: RunDir, overrides: dict, checkpoint, env) -> str | None:
    """Execute the training notebook in a papermill subprocess; the failure reason, else None."""
    if not isinstance(config, (str, Path)):
        config = config.dump(run.config)
    run.params.write_text(yaml.safe_dump({"config_path": str(config), "overrides": overrides,
                                          "run_dir": str(run.path), "seed": int(overrides.get("seed", 0))},
                                         sort_keys=False))
    cmd = [sys.executable, "-m", "papermill", str(TRAIN_NOTEBOOK), str(run.notebook), "-f", str(run.params),
           "-k", "python3", "--log-output", "--no-progress-bar"]
    with open(run.papermill_log, "w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if proc.returncode == 0:
        return None
    reason = _failure_reason(run.notebook, run.papermill_log, proc.returncode)
    run.fail(reason, run.papermill_log, notebook=run.notebook)
    return reason


EXECUTORS = {"process": _in_process, "papermill": _papermill}


def run_configs(configs, runs_root: str | Path = "runs", seeds=(0,), overrides: dict | None = None,
                workers: int = 1) -> list[dict]:
    """Run every (config, seed) with papermill (see :func:`run_one`); ``workers`` runs go at once,
    each with an equal share of the CPU threads. Prints one line per run; returns their results."""
    jobs = [(Path(c), int(s)) for c in configs for s in seeds]
    env = {**os.environ, "SELIB_PROGRESS": "0"}  # the log and the notebook get plain lines
    if workers > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda job: run_one(*job, runs_root, overrides, env), jobs))

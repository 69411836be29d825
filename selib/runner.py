"""Executing runs (lesson ``11_results_and_deployment``): :func:`execute`, the one place that skips,
starts and records a run, in this process or as a papermill run of ``notebooks/runs/train.ipynb``;
:func:`run_configs` runs every (config, seed) with papermill into ``<runs_root>/<name>-s<seed>/``. A
failed run leaves a ``FAILED`` file (the reason and the path of its log) next to its executed notebook,
and the other runs go on; a run whose ``metrics.json`` exists is skipped, so an interrupted batch resumes
where it stopped. :func:`workers` runs a batch of jobs in worker processes (the quick start, ``selib
regimes``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

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
            checkpoint: str | Path | None = None, env: dict | None = None, datasets: dict | None = None) -> dict:
    """Execute one run into ``run``: the only place that skips, starts and records runs.

    ``config`` is a YAML path or a :class:`~selib.config.Config` (with ``overrides``). ``via="process"``
    trains and tests in this process (:func:`selib.train.run`; with ``checkpoint``, it only tests that
    checkpoint, e.g. a shipped teacher; ``datasets`` replace the config's splits, as in
    :class:`~selib.train.Trainer`); ``via="papermill"`` executes ``notebooks/runs/train.ipynb`` in a
    papermill subprocess (with ``env``) and keeps the executed notebook. A finished run is skipped; a
    failed one leaves ``FAILED`` with the reason and the log that holds the details (``error.log``, or
    ``papermill.log`` next to the notebook) and does not stop the caller. A run that another process
    is executing (it holds ``run.lock``) is left to it and reported as failed. Prints one line; returns
    ``{"run_dir", "status", "reason"}`` with status ``done``, ``skipped`` or ``failed``.
    """
    if via not in EXECUTORS:
        raise ValueError(f"via = {via!r}; choose one of {', '.join(EXECUTORS)}.")
    if via == "papermill" and checkpoint is not None:
        raise ValueError("via = 'papermill' trains the run; testing a given checkpoint runs in process.")
    if via == "papermill" and datasets:
        raise ValueError("via = 'papermill' reads the config's datasets; given datasets run in process.")
    if run.status == DONE:
        result = {"run_dir": run.path, "status": "skipped", "reason": ""}
    else:
        run.start()
        with run.claim() as claimed:
            if not claimed:
                reason = f"another process is executing it (it holds {run.lock}); run again when it ends"
            elif run.status == DONE:        # finished by that process while this one waited
                reason = None
            else:
                reason = EXECUTORS[via](config, run, overrides or {}, checkpoint, env, datasets)
                if reason is None and run.status != DONE:
                    reason = f"the run finished without writing {run.metrics.name}"
                    run.fail(reason, run.papermill_log if via == "papermill" else run.log)
        result = {"run_dir": run.path, "status": "failed" if reason else "done", "reason": reason or ""}
    print(f"[{result['status']}] {run.path}" + (f": {result['reason']}" if result["reason"] else ""), flush=True)
    return result


def _in_process(config, run: RunDir, overrides: dict, checkpoint, env, datasets) -> str | None:
    """Train and test (or only test ``checkpoint``) in this process; the failure reason, else None."""
    import traceback

    from selib import train
    from selib.config import load

    try:
        cfg = load(config, overrides)
        if checkpoint is None:
            train.run(cfg, run.path, datasets=datasets)
        else:
            train.Trainer(cfg, run.path, datasets=datasets).test(checkpoint)
    except Exception as err:  # one failed run must not stop the comparison
        run.error_log.write_text(traceback.format_exc())
        reason = f"{type(err).__name__}: {err}"
        run.fail(reason, run.error_log)
        return reason
    return None


def _papermill(config, run: RunDir, overrides: dict, checkpoint, env, datasets) -> str | None:
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


@contextmanager
def workers(jobs: int, each: Callable[[object], None] | None = None):
    """``run_all(fn, items) -> [fn(item), ...]``: in this process (``jobs == 1``), or in ``jobs`` worker
    processes with an equal share of the CPU threads and a fresh process for every item, so that no
    run's memory outlives it and this process stays small; ``each(result)`` is called here as each item
    finishes (in the order they finish). The workers are forked from a fork server that has imported what
    a run imports once (and never runs an operator, so forking it is safe): they share those ~0.9 GB of
    pages instead of each importing its own copy. A worker dies with the fork server, which ends when
    this process does, even by SIGKILL: no orphan goes on writing into a run folder."""
    each = each or (lambda result: None)
    if jobs <= 1:
        yield lambda fn, items: [_called(each, fn(item)) for item in items]
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("forkserver")
    # torch._dynamo (with sympy and triton, ~0.18 GB): torch.optim imports it at the first optimizer
    context.set_forkserver_preload(["torch", "torch._dynamo", "selib.data", "selib.models", "selib.kd",
                                    "selib.train", "selib.metrics"])
    threads = max(1, (os.cpu_count() or 1) // jobs)

    def run_all(fn, items):
        futures = [pool.submit(fn, item) for item in items]
        for future in as_completed(futures):
            each(future.result())
        return [future.result() for future in futures]

    with ProcessPoolExecutor(jobs, context, _start_worker, (threads,), max_tasks_per_child=1) as pool:
        yield run_all


def _called(each: Callable[[object], None], result):
    each(result)
    return result


def _start_worker(threads: int) -> None:
    """Worker start-up: ``threads`` torch and BLAS threads, and (Linux) death with the parent process."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # 1: PR_SET_PDEATHSIG

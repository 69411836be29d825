"""When does distillation help? Regime grids (``selib regimes GRID.yaml``, ``make regimes``; docs/regimes.md).

A grid file names the student families (a scratch base config and a teacher each), the KD methods, the
seeds and the axes of the map; every cell of an axis is a set of dotted config overrides. It expands to
one run per (family, cell, method or scratch, seed), trains them resumably in worker processes into
``runs/regimes/<grid>/`` and summarises them into ``benchmarks/results/regimes/<grid>/``
(:mod:`selib.course.regimes_summary`). The format::

    name: smoke                  # optional (default: the file's stem); names the output folders
    seeds: [0, 1]
    set: {optim.max_steps: 4}    # optional: overrides for every student run
    families:
      dccrn:
        base: configs/course/dccrn-tiny-scratch.yaml      # the scratch student (path from the repo root)
        teacher: {family: dccrn, preset: tiny-teacher, checkpoint: teachers/dccrn-tiny-teacher.pt, cache: true}
        set: {}                  # optional: this family's runs
        methods: {dfkd: {kd.weight: 1.5}}                 # optional: this family's changes to a method
    teachers:                    # optional: teachers the grid trains first, into <runs>/teachers/<name>-s<seed>/
      dccrn-early: {base: configs/teachers/dccrn-tiny-teacher.yaml, set: {optim.max_steps: 300}}
    methods:                     # KD overrides (kd.*, teacher.*, data.transfer, ...); scratch is implied
      logits: {kd.method: logits-sisnr, kd.weight: 1.0}
    axes:
      budget:
        methods: [logits]        # optional: default every method
        families: [dccrn]        # optional: default every family
        cells:
          s100: {optim.max_steps: 100}
          early: {kd_only: {teacher.checkpoint: "{teachers}/{family}-early-s0/best.pt"}}
          room: {test: {name: embedded-room, root: data/embedded-room}, kd_only: {data.transfer: rest}}
          narrow: {dccrn: {model.overrides: {rnn_units: 16}}}

In a cell, dotted keys apply to both sides of a pair; ``kd_only`` to the KD runs only (their teacher,
transfer set); a family's name to that family only; ``test`` names the dataset whose test split scores
the cell (default: the config's own), for the students and the teacher alike. Overrides apply in the
order grid ``set``, family ``set``, (KD: the family's ``teacher``), cell, cell[family], (KD: method,
family method, ``kd_only``), then ``--set`` of the command line. String values may hold ``{family}`` and
``{teachers}`` (``<runs root>/teachers``). Runs are named ``<family>_<axis>-<cell>_<method|scratch>``
(the teacher scored on a cell: ``..._<method>-teacher``), in ``<runs root>/<name>-s<seed>/``; runs whose
resolved configs and test sets are identical are one run, named after the first cell that needs it. Every
KD run uses one teacher cache, ``<runs root>/.teacher-cache``. Paths in the grid file are relative to the
repository root; paths inside configs (data, checkpoints) to the working directory, as for every config.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selib.config import ConfigError, load
from selib.constants import DATASETS
from selib.course import REPO_ROOT
from selib.runs import DONE, RunDir, run_name

RUNS_ROOT = Path("runs/regimes")
RESULTS_ROOT = REPO_ROOT / "benchmarks" / "results" / "regimes"
GRIDS = REPO_ROOT / "configs" / "regimes"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_TOP = {"name", "seeds", "set", "families", "teachers", "methods", "axes"}
_CELL_KEYS = {"kd_only", "test"}


@dataclass
class Run:
    """One run of a grid: ``kind`` is ``teacher`` (trained by the grid), ``teacher-test`` (a teacher
    checkpoint scored on a cell's test set), ``scratch`` or ``kd``."""
    name: str
    seed: int
    kind: str
    base: str
    overrides: dict[str, Any]
    folder: str
    test: dict | None = None
    checkpoint: str | None = None


@dataclass
class Plan:
    """The runs of a grid by folder name (``<name>-s<seed>``), in the order they start, and the pairs
    they form: one per (family, axis, cell, method, seed), naming the folders of its ``kd``, ``scratch``
    and ``teacher`` runs."""
    grid: dict
    runs: dict[str, Run] = field(default_factory=dict)
    pairs: list[dict] = field(default_factory=list)


def _error(path, where: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {problem}")


def _mapping(value, path, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _error(path, where, f"{value!r} must be a mapping (key: value); see docs/regimes.md.")
    return value


def _names(mapping: dict, path, where: str) -> dict:
    for key in mapping:
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise _error(path, where, f"name {key!r} must be letters, digits, '.' and '-' (it goes into run "
                         "names, where '_' separates the parts); rename it.")
    return mapping


def load_grid(path: str | Path) -> dict:
    """Read and check a grid file; returns its content with ``name``, ``path`` and ``sha256`` added."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such grid file; configs/regimes/ holds the grids.")
    text = path.read_bytes()
    try:
        grid = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())}).") from None
    grid = _mapping(grid, path, "the top level")
    unknown = sorted(set(grid) - _TOP)
    if unknown:
        raise _error(path, "top level", f"unknown keys {unknown}; valid keys: {', '.join(sorted(_TOP))}.")
    seeds = grid.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)):
        raise _error(path, "seeds", f"{seeds!r} must be a non-empty list of integers >= 0, e.g. [0, 1, 2].")
    families = _names(_mapping(grid.get("families"), path, "families"), path, "families")
    methods = _names(_mapping(grid.get("methods"), path, "methods"), path, "methods")
    axes = _names(_mapping(grid.get("axes"), path, "axes"), path, "axes")
    if not families or not axes:
        raise _error(path, "families, axes", "a grid needs at least one family and one axis.")
    for name, family in families.items():
        family = _mapping(family, path, f"families.{name}")
        for key in ("base", "teacher"):
            if key not in family:
                raise _error(path, f"families.{name}", f"needs {key!r} (the scratch config and the teacher section).")
        extra = sorted(set(family) - {"base", "teacher", "set", "methods"})
        if extra:
            raise _error(path, f"families.{name}", f"unknown keys {extra}; valid: base, teacher, set, methods.")
        _base(family["base"], path, f"families.{name}.base")
        _check_methods(_mapping(family.get("methods"), path, f"families.{name}.methods"), methods, path,
                       f"families.{name}.methods")
    for name, teacher in _names(_mapping(grid.get("teachers"), path, "teachers"), path, "teachers").items():
        _base(_mapping(teacher, path, f"teachers.{name}").get("base"), path, f"teachers.{name}.base")
    for name, axis in axes.items():
        axis = _mapping(axis, path, f"axes.{name}")
        extra = sorted(set(axis) - {"cells", "methods", "families"})
        if extra or not _mapping(axis.get("cells"), path, f"axes.{name}.cells"):
            raise _error(path, f"axes.{name}", "needs cells (a mapping of cell name to overrides) and may have "
                         f"methods and families{f'; unknown keys {extra}' if extra else ''}.")
        _check_methods(dict.fromkeys(axis.get("methods", [])), methods, path, f"axes.{name}.methods")
        _check_methods(dict.fromkeys(axis.get("families", [])), families, path, f"axes.{name}.families")
        for cell, spec in _names(axis["cells"], path, f"axes.{name}.cells").items():
            _check_cell(_mapping(spec, path, f"axes.{name}.cells.{cell}"), families, path, f"axes.{name}.cells.{cell}")
    return {**grid, "name": grid.get("name") or path.stem, "seeds": seeds, "path": str(path),
            "sha256": hashlib.sha256(text).hexdigest()}


def _base(value, path, where: str) -> Path:
    base = _repo_path(value) if isinstance(value, str) else None
    if base is None or not base.is_file():
        raise _error(path, where, f"{value!r} is not a config file; give a path from the repository root, "
                     "e.g. configs/course/dccrn-tiny-scratch.yaml.")
    return base


def _repo_path(value: str) -> Path:
    return Path(value) if Path(value).is_absolute() else REPO_ROOT / value


def _check_methods(given: dict, known: dict, path, where: str) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise _error(path, where, f"{unknown} not defined; defined: {', '.join(known) or 'none'}.")


def _check_cell(cell: dict, families: dict, path, where: str) -> None:
    for key, value in cell.items():
        if key in families or key == "kd_only":
            _mapping(value, path, f"{where}.{key}")
    test = cell.get("test")
    if test is not None and not (isinstance(test, dict) and test.get("name") in DATASETS
                                 and set(test) <= {"name", "root"}):
        raise _error(path, f"{where}.test", f"{test!r} must be {{name: DATASET, root: PATH}} with a dataset of "
                     f"{', '.join(DATASETS)} (root optional).")


def _fill(value, family: str, teachers: Path):
    """``{family}`` and ``{teachers}`` in the strings of ``value`` (other braces, e.g. ``{seed}``, stay)."""
    if isinstance(value, str):
        return value.replace("{family}", family).replace("{teachers}", str(teachers))
    if isinstance(value, dict):
        return {k: _fill(v, family, teachers) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, family, teachers) for v in value]
    return value


def expand(grid: dict, runs_root: str | Path, cli_set: dict | None = None) -> Plan:
    """Every run of ``grid`` under ``runs_root`` (each config resolved and checked by
    :func:`selib.config.load`) and the pairs the summary compares."""
    runs_root, cli_set, path = Path(runs_root), dict(cli_set or {}), grid["path"]
    teachers_root = runs_root / "teachers"
    plan, by_key = Plan(grid), {}

    def add(run: Run, where: str) -> str:
        try:
            cfg = load(_repo_path(run.base), {**run.overrides, "name": run.name, "seed": run.seed})
        except ConfigError as err:
            raise _error(path, where, str(err)) from None
        key = json.dumps([{**cfg.to_dict(), "name": None}, run.test, run.checkpoint, run.kind], sort_keys=True)
        if key not in by_key:
            run.overrides = {**run.overrides, "name": run.name, "seed": run.seed}
            run.folder = str((teachers_root if run.kind == "teacher" else runs_root) / run_name(run.name, run.seed))
            by_key[key] = plan.runs[Path(run.folder).name] = run
        return Path(by_key[key].folder).name

    for name, spec in (grid.get("teachers") or {}).items():
        cfg = load(_repo_path(spec["base"]), spec.get("set") or {})
        add(Run(name, cfg.seed, "teacher", spec["base"], {**(spec.get("set") or {}), **cli_set}, ""), f"teachers.{name}")
    cells = [(axis_name, axis, cell_name, cell or {}) for axis_name, axis in grid["axes"].items()
             for cell_name, cell in axis["cells"].items()]
    for seed in grid["seeds"]:
        for axis_name, axis, cell_name, cell in cells:
            for family, fam in grid["families"].items():
                if family not in axis.get("families", grid["families"]):
                    continue
                common = {**(grid.get("set") or {}), **(fam.get("set") or {})}
                own = {k: v for k, v in cell.items() if k not in _CELL_KEYS and k not in grid["families"]}
                sides = {**own, **(cell.get(family) or {})}
                prefix, where = f"{family}_{axis_name}-{cell_name}", f"axes.{axis_name}.cells.{cell_name} ({family})"
                scratch = add(Run(f"{prefix}_scratch", seed, "scratch", fam["base"],
                                  _fill({**common, **sides, **cli_set}, family, teachers_root), "", cell.get("test")),
                              where)
                for method in axis.get("methods", grid["methods"]):
                    kd = _fill({**common, "teacher": fam["teacher"], **sides, **grid["methods"][method],
                                **(fam.get("methods") or {}).get(method, {}), **(cell.get("kd_only") or {}),
                                **cli_set, "teacher.cache_dir": str(runs_root / ".teacher-cache")},
                               family, teachers_root)
                    student = add(Run(f"{prefix}_{method}", seed, "kd", fam["base"], kd, "", cell.get("test")),
                                  f"{where}, method {method}")
                    teacher = load(_repo_path(fam["base"]), {**kd, "seed": seed}).teacher
                    scored = {k: v for k, v in kd.items() if k.startswith(("data", "eval", "device"))
                              and k != "data.transfer"}        # what the test set and its scores depend on
                    judge = add(Run(f"{prefix}_{method}-teacher", 0, "teacher-test", fam["base"],
                                    {**scored, "teacher": None, "kd.method": "none", "data.transfer": None,
                                     "role": "teacher", "model": {"family": teacher.family, "preset": teacher.preset,
                                                                  "overrides": teacher.overrides.to_dict()}},
                                    "", cell.get("test"), teacher.checkpoint), f"{where}, teacher of {method}")
                    plan.pairs.append({"family": family, "axis": axis_name, "cell": cell_name, "method": method,
                                       "seed": seed, "kd": student, "scratch": scratch, "teacher": judge})
    return plan


def _test_dataset(cfg, test: dict):
    """The test split of ``test`` (``{name, root}``) with the config's ``data.test_limit``."""
    from selib.train import dataset

    return dataset(load(cfg.to_dict(), {"data.name": test["name"], "data.root": test.get("root"),
                                        "data.transfer": None, "kd.method": "none", "teacher": None,
                                        "kd.schedule": "none"}), "test")


def _execute(job: dict) -> dict:
    """One grid run in this (worker) process; its output goes to its own log files, not the terminal."""
    import contextlib
    import traceback

    from selib.runner import execute

    os.environ["SELIB_PROGRESS"] = "0"
    started, run = time.perf_counter(), RunDir(job["folder"])
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        try:
            cfg = load(_repo_path(job["base"]), job["overrides"])
            datasets = {"test": _test_dataset(cfg, job["test"])} if job["test"] and run.status != DONE else None
        except Exception as err:  # a missing dataset fails this run, not the grid
            run.start()
            run.error_log.write_text(traceback.format_exc())
            run.fail(f"{type(err).__name__}: {err}", run.error_log)
            result = {"run_dir": run.path, "status": "failed", "reason": f"{type(err).__name__}: {err}"}
        else:
            result = execute(cfg, run, "process", checkpoint=job["checkpoint"], datasets=datasets)
    return {**result, "run_dir": str(result["run_dir"]), "name": job["name"], "seconds": time.perf_counter() - started}


def run_grid(grid_path: str | Path, runs_root: str | Path | None = None, results: str | Path | None = None,
             jobs: int = 2, cli_set: dict | None = None, summary_only: bool = False, command: str = "") -> dict:
    """Expand a grid, execute its unfinished runs (``jobs`` at once, each in its own process; the grid's
    teachers first), print one line per finished run, then write the summary. Returns
    ``{"plan", "results", "failed", "summary"}``; failed runs are listed, the others go on."""
    from selib.course.regimes_summary import summarize
    from selib.runner import workers

    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: must be at least 1.")
    grid = load_grid(grid_path)
    runs_root = Path(runs_root or RUNS_ROOT / grid["name"])
    results = Path(results or RESULTS_ROOT / grid["name"])
    plan = expand(grid, runs_root, cli_set)
    outcomes: list[dict] = []
    if not summary_only:
        total = len(plan.runs)
        print(f"{grid['path']}: {total} runs in {runs_root} ({sum(RunDir(r.folder).status == DONE for r in plan.runs.values())}"
              f" done), {jobs} at a time", flush=True)

        def report(result: dict) -> None:
            outcomes.append(result)
            reason = f": {result['reason']}" if result["reason"] else ""
            print(f"[{len(outcomes)}/{total}] {result['status']} {result['name']} ({result['seconds']:.0f} s){reason}",
                  flush=True)

        phases = [[r for r in plan.runs.values() if r.kind == "teacher"],
                  [r for r in plan.runs.values() if r.kind != "teacher"]]
        with workers(jobs, report) as run_all:
            for phase in phases:
                run_all(_execute, [asdict(r) for r in phase])
    failed = [r for r in outcomes if r["status"] == "failed"]
    for result in failed:
        print(f"failed: {result['run_dir']}: {result['reason']}", flush=True)
    summary = summarize(plan, results, command=command)
    print(f"summary: {results / 'summary.md'}", flush=True)
    return {"plan": plan, "results": outcomes, "failed": failed, "summary": summary}

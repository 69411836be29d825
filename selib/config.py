"""The one YAML schema that drives training runs, the CLI, the papermill notebook and the tests.

:func:`load` merges a YAML file (or a dict) into :data:`DEFAULTS`, applies dotted overrides
(``{"optim.epochs": 1}`` or ``["optim.epochs=1"]``), rejects unknown keys and bad values with an error
that names the file, the key, the value and the valid choices, and resolves ``{seed}`` in the teacher
checkpoint path. The result is a :class:`Config`: a nested dict with attribute access
(``cfg.optim.lr``). Lesson ``06_training_teacher_student`` walks through a config.
"""
from __future__ import annotations

import ast
import copy
import functools
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from selib.constants import DATASETS, FAMILIES, KD_METHODS, LOSSES, METRICS, SPLITS

# Beyond the docs/CONTRACTS.md schema: device; optim.step_size (epochs) and gamma for the step scheduler,
# gamma (factor) and patience (epochs) for plateau (on validation SI-SDR); optim.checkpoint_every: steps
# between last.pt saves (0: only at epoch ends); teacher.overrides (model constructor overrides);
# role (teacher | student, for reports; null: inferred); teacher.cache and teacher.cache_dir (the
# teacher-output cache, selib.kd.cache); kd.balance, kd.balance_batches, kd.balance_ratio, kd.balance_at
# (lambda set from gradient norms after balance_at steps; docs/kd.md, "Weights that mean the same ...");
# data.transfer (noisy audio for the KD term only, selib.data.transfer); kd.schedule and kd.pretrain_share
# (two-step KD: the KD term alone for that share of the steps, then L_SE + lambda KD; docs/kd.md).
DEFAULTS: dict[str, Any] = {
    "name": None,            # run name; None -> "<family>-<preset>-<kd method>"
    "role": None,            # teacher | student; None -> inferred by the report
    "seed": 0,
    "device": "auto",        # auto (CUDA when available) | cpu | cuda
    "data": {"name": "embedded", "root": None, "segment_seconds": 2.0, "batch_size": 8,
             "num_workers": 0, "train_limit": None, "valid_limit": None, "test_limit": None, "transfer": None},
    "model": {"family": "dccrn", "preset": "tiny-student", "overrides": {}},
    "teacher": None,
    "kd": {"method": "none", "weight": 1.0, "options": {}, "balance": "none", "balance_batches": 8,
           "balance_ratio": 1.0, "balance_at": 0, "schedule": "none", "pretrain_share": 0.5},
    "loss": {"se": "sisnr"},
    "optim": {"name": "adam", "lr": 1.0e-3, "weight_decay": 0.0, "epochs": 10, "max_steps": None,
              "grad_clip": 5.0, "scheduler": "none", "step_size": 1, "gamma": 0.5, "patience": 2,
              "amp": "auto", "compile": False, "checkpoint_every": 50},
    "eval": {"metrics": ["pesq_wb", "stoi", "si_sdr"], "workers": 2, "every_epochs": 1},
}
TEACHER_DEFAULTS: dict[str, Any] = {"family": None, "preset": None, "checkpoint": None, "overrides": {},
                                    "cache": False, "cache_dir": None}
# Free-form sections: passed as keyword arguments to the model / KD method, checked there.
FREE_FORM = {"model.overrides", "teacher.overrides", "kd.options"}

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("none", "cosine", "step", "plateau")
AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
ROLES = ("teacher", "student")
BALANCES = ("none", "grad")
KD_SCHEDULES = ("none", "two-step")


class ConfigError(ValueError):
    """A config selib cannot use; the message names the file, the key, the value and the fix."""


class Config(dict):
    """A validated config: a nested dict whose keys also read as attributes (``cfg.optim.lr``)."""

    def __init__(self, data: Mapping[str, Any] = ()):
        super().__init__({k: Config(v) if isinstance(v, Mapping) else v for k, v in dict(data).items()})

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}; keys: {sorted(self)}") from None

    def to_dict(self) -> dict[str, Any]:
        """A plain, deep-copied ``dict`` (what is dumped and stored in checkpoints)."""
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}

    def dump(self, path: str | Path) -> Path:
        """Write the resolved config as YAML; :func:`load` reads it back to an equal config."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


def load(source: str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | Iterable[str] | None = None
         ) -> Config:
    """Load, merge with :data:`DEFAULTS`, override, validate and resolve a config.

    ``source`` is a YAML file, a dict or a :class:`Config`; ``overrides`` maps dotted keys to values
    (``{"data.batch_size": 2}``) or is a list of ``"key=value"`` strings whose values are parsed as YAML.
    """
    if isinstance(source, Mapping):
        where, raw = "<config dict>", copy.deepcopy(dict(source))
    else:
        where = str(source)
        if not Path(source).is_file():
            raise ConfigError(f"{where}: no such config file; check the path (configs/ holds examples).")
        try:
            raw = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"{where}: not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}); "
                              "save the config as UTF-8.") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: not valid YAML ({_one_line(err)}).") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: the top level must be a mapping of keys, got {type(raw).__name__}.")
    cfg = _merge(DEFAULTS, raw, "", where)
    for key, value in parse_overrides(overrides).items():
        for part in reversed(key.split(".")):
            value = {part: value}
        cfg = _merge(cfg, value, "", f"{where} (override {key})")
    _validate(cfg, where)
    if cfg["name"] is None:
        cfg["name"] = f"{cfg['model']['family']}-{cfg['model']['preset']}-{cfg['kd']['method']}"
    if cfg["teacher"] is not None:
        cfg["teacher"]["checkpoint"] = cfg["teacher"]["checkpoint"].replace("{seed}", str(cfg["seed"]))
    return Config(cfg)


def parse_overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """``["optim.lr=1e-4", "teacher=null"]`` (CLI ``--set``) or a dict -> ``{dotted key: value}``."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.epochs=1).")
        try:
            parsed[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_one_line(err)}); quote "
                              "strings, e.g. --set 'name=\"my run\"'.") from None
    return parsed


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _free_form(path: str) -> bool:
    return any(path == f or path.startswith(f + ".") for f in FREE_FORM)


def _merge(current: Mapping[str, Any], given: Any, path: str, where: str) -> dict:
    """``current`` (a section at dotted ``path``) updated with ``given``; unknown keys are errors."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"{where}: {path} = {given!r} must be a mapping with keys "
                          f"{', '.join(sorted(current))}.")
    out = copy.deepcopy(dict(current))
    for key, value in given.items():
        full = f"{path}.{key}" if path else str(key)
        if _free_form(path):
            nested = isinstance(value, Mapping) and isinstance(out.get(key), dict)
            out[key] = _merge(out[key], value, full, where) if nested else copy.deepcopy(value)
        elif key not in out:
            raise ConfigError(f"{where}: unknown key {full!r}; valid keys here: {', '.join(sorted(out))}.")
        elif full == "teacher":
            out[key] = None if value is None else _merge(out[key] or TEACHER_DEFAULTS, value, full, where)
        elif isinstance(out[key], dict):
            out[key] = _merge(out[key], value, full, where)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------------
# Validation: one checker per key; each returns None or the text of the problem.

def _choice(choices: Callable[[dict], Iterable[str]] | Iterable[str]):
    def check(value, cfg):
        valid = list(choices(cfg) if callable(choices) else choices)
        return None if value in valid else f"choose one of: {', '.join(map(str, valid))}"
    return check


def _number(kind: type, low: float | None = None, optional: bool = False, strict: bool = False):
    def check(value, cfg):
        if value is None and optional:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok_type = isinstance(value, int) and not isinstance(value, bool)
        if ok_type and (low is None or value > low or (value == low and not strict)):
            return None
        what = "an integer" if kind is int else "a number"
        bound = "" if low is None else f" {'>' if strict else '>='} {low}"
        return f"must be {what}{bound}" + (" or null" if optional else "")
    check.parses_float = kind is float
    return check


def _string(optional: bool = False):
    def check(value, cfg):
        if isinstance(value, str) and value or (optional and value is None):
            return None
        return "must be a non-empty string" + (" or null" if optional else "")
    return check


def _boolean(value, cfg):
    return None if isinstance(value, bool) else "must be true or false"


def _mapping(value, cfg):
    return None if isinstance(value, dict) else "must be a mapping (key: value)"


def _metrics(value, cfg):
    if isinstance(value, list) and value and all(m in METRICS for m in value):
        return None
    return f"must be a non-empty list drawn from: {', '.join(METRICS)}"


@functools.lru_cache(maxsize=None)
def model_signature(family: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    """``(preset names, {constructor argument: default})`` of a model family, read from the source of
    ``selib/models/<family>.py`` with ``ast`` (its ``PRESETS`` keys and the ``__init__`` of its
    ``MODEL``), so that checking a config imports no torch; an argument without a default maps to
    ``inspect.Parameter.empty``. Lesson ``03_dccrn`` shows a family's ``MODEL`` and ``PRESETS``."""
    tree = ast.parse((Path(__file__).parent / "models" / f"{family}.py").read_text(encoding="utf-8"))
    assigned = {node.targets[0].id: node.value for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    init = next(node for node in classes[assigned["MODEL"].id].body
                if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    args = init.args
    positional = args.posonlyargs + args.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults))[1:] + list(zip(args.kwonlyargs, args.kw_defaults))
    params = {arg.arg: inspect.Parameter.empty if default in (None, inspect.Parameter.empty)
              else ast.literal_eval(default) for arg, default in pairs}
    return tuple(ast.literal_eval(key) for key in assigned["PRESETS"].keys), params


def _presets(section: str):
    def choices(cfg):
        family = cfg[section]["family"]
        return sorted(model_signature(family)[0]) if family in FAMILIES else []
    return choices


def _transfer(value, cfg):
    """``data.transfer``: null, ``rest`` (needs ``data.train_limit``), ``{name, split?, root?, limit?}`` or
    ``{folder}`` (selib.data.transfer)."""
    if value is None:
        return None
    if value == "rest":
        return None if cfg["data"]["train_limit"] is not None else (
            "rest means the training items after data.train_limit; set data.train_limit to the number "
            "of labelled items")
    shapes = "null, rest, {name: DATASET, split: SPLIT} or {folder: PATH}"
    if not isinstance(value, Mapping):
        return f"must be {shapes}"
    extra = sorted(set(value) - ({"folder"} if "folder" in value else {"name", "split", "root", "limit"}))
    if "folder" in value and not extra:
        return None if isinstance(value["folder"], str) and value["folder"] else "folder must be a path"
    if "name" not in value or extra:
        return f"must be {shapes} (optional keys root, limit){f'; unknown keys {extra}' if extra else ''}"
    if value["name"] not in DATASETS:
        return f"name must be one of: {', '.join(DATASETS)}"
    if value.get("split", "train") not in SPLITS:
        return f"split must be one of: {', '.join(SPLITS)}"
    return _number(int, 1, optional=True)(value.get("limit"), cfg)


def _share(value, cfg):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    return None if ok else "must be a number between 0 and 1 (the share of the steps)"


CHECKS: dict[str, Callable[[Any, dict], str | None]] = {
    "name": _string(optional=True),
    "role": _choice([*ROLES, None]),
    "seed": _number(int, 0),
    "device": _choice(DEVICES),
    "data.name": _choice(DATASETS),
    "data.root": _string(optional=True),
    "data.segment_seconds": _number(float, 0, strict=True),
    "data.batch_size": _number(int, 1),
    "data.num_workers": _number(int, 0),
    "data.train_limit": _number(int, 1, optional=True),
    "data.valid_limit": _number(int, 1, optional=True),
    "data.test_limit": _number(int, 1, optional=True),
    "data.transfer": _transfer,
    "model.family": _choice(sorted(FAMILIES)),
    "model.preset": _choice(_presets("model")),
    "model.overrides": _mapping,
    "teacher.family": _choice(sorted(FAMILIES)),
    "teacher.preset": _choice(_presets("teacher")),
    "teacher.checkpoint": _string(),
    "teacher.overrides": _mapping,
    "teacher.cache": _boolean,
    "teacher.cache_dir": _string(optional=True),
    "kd.method": _choice(KD_METHODS),
    "kd.weight": _number(float, 0),
    "kd.options": _mapping,
    "kd.balance": _choice(BALANCES),
    "kd.balance_batches": _number(int, 1),
    "kd.balance_ratio": _number(float, 0, strict=True),
    "kd.balance_at": _number(int, 0),
    "kd.schedule": _choice(KD_SCHEDULES),
    "kd.pretrain_share": _share,
    "loss.se": _choice(LOSSES),
    "optim.name": _choice(OPTIMIZERS),
    "optim.lr": _number(float, 0, strict=True),
    "optim.weight_decay": _number(float, 0),
    "optim.epochs": _number(int, 1),
    "optim.max_steps": _number(int, 1, optional=True),
    "optim.grad_clip": _number(float, 0, optional=True, strict=True),
    "optim.scheduler": _choice(SCHEDULERS),
    "optim.step_size": _number(int, 1),
    "optim.gamma": _number(float, 0, strict=True),
    "optim.patience": _number(int, 0),
    "optim.amp": _choice(AMP_MODES),
    "optim.compile": _boolean,
    "optim.checkpoint_every": _number(int, 0),
    "eval.metrics": _metrics,
    "eval.workers": _number(int, 1, optional=True),
    "eval.every_epochs": _number(int, 1),
}


def _validate(cfg: dict, where: str) -> None:
    for key, check in CHECKS.items():
        section, _, leaf = key.rpartition(".")
        node = cfg[section] if section else cfg
        if node is None:        # teacher: null
            continue
        if getattr(check, "parses_float", False) and isinstance(node[leaf], str):
            try:                # YAML 1.1 reads 1e-4 (no dot) as a string
                node[leaf] = float(node[leaf])
            except ValueError:
                pass
        problem = check(node[leaf], cfg)
        if problem:
            raise ConfigError(f"{where}: {key} = {node[leaf]!r} is not valid; {problem}.")
    for section in ("model", "teacher"):
        if cfg[section] is not None:
            _check_model_options(cfg[section], section, where)
    _check_finite(cfg["kd"]["options"], "kd.options", where)
    method = cfg["kd"]["method"]
    if method == "none" and cfg["teacher"] is not None:
        raise ConfigError(f"{where}: teacher is set but kd.method is 'none'; set teacher: null for a "
                          "run without distillation, or pick a KD method.")
    for needs_kd, what in ((cfg["data"]["transfer"] is not None, "data.transfer feeds only the KD term"),
                           (cfg["kd"]["schedule"] != "none", "kd.schedule schedules the KD term")):
        if needs_kd and method == "none":
            raise ConfigError(f"{where}: {what}, and kd.method is 'none'; pick a KD method and a teacher, "
                              "or remove it.")
    if method != "none" and cfg["teacher"] is None:
        raise ConfigError(f"{where}: kd.method = {method!r} needs a teacher; add teacher: {{family, preset, "
                          "checkpoint}} (e.g. checkpoint: runs/<teacher-name>-s{seed}/best.pt).")


def _check_finite(value: Any, key: str, where: str) -> None:
    """Non-finite numbers (``.inf``, ``.nan``) anywhere in a free-form section are errors."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}", where)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]", where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key} = {value!r} is not valid; must be a finite number.")


def _check_model_options(spec: Mapping[str, Any], section: str, where: str) -> None:
    """``<section>.overrides`` keys must be constructor arguments of the family's model, with values of
    the type of the argument's default (an int where an int is expected, a list for a tuple, ...)."""
    overrides = spec["overrides"]
    _check_finite(overrides, f"{section}.overrides", where)
    params = model_signature(spec["family"])[1]
    valid = sorted(params)
    for key, value in overrides.items():
        full = f"{section}.overrides.{key}"
        if key not in params:
            raise ConfigError(f"{where}: unknown key {full!r} for a {spec['family']} model; valid keys: "
                              f"{', '.join(valid)}.")
        problem = _option_type_problem(value, params[key])
        if problem:
            raise ConfigError(f"{where}: {full} = {value!r} is not valid; {problem}.")


def _option_type_problem(value: Any, default: Any) -> str | None:
    """None if ``value`` has the type of ``default`` (ints pass for floats), else what it must be."""
    if default is inspect.Parameter.empty or default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "must be a string"
    if isinstance(default, (tuple, list)):
        if not isinstance(value, (list, tuple)):
            return f"must be a list like {list(default)}"
        kinds = {type(v) for v in default}
        if all(type(v) in kinds for v in value):
            return None
        return f"must be a list of {' or '.join(sorted(k.__name__ for k in kinds))} like {list(default)}"
    return None

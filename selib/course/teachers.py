"""Shipped course teachers: trained from committed configs and stored with their SHA-256 and validation
score (``make teachers``, ``selib teachers``; docs/kd.md "Shipped teachers"; lesson ``06_training_teacher_student``).

For each ``configs/teachers/<name>.yaml`` (a run without KD), :func:`ship` trains the run into
``runs/teachers/<name>-s<seed>/`` and writes

- ``teachers/<name>.pt``: the weights of ``best.pt`` with the config, epoch, step and training history
  (no optimiser state), which ``teacher.checkpoint: teachers/<name>.pt`` in a student config loads;
- ``teachers/<name>.json``: the record: the checkpoint's SHA-256, the resolved config and the command
  that made it, the validation SI-SDR of the shipped weights (mean over the whole utterances of the
  config's validation split, recomputed from the file on the CPU) and, for the embedded corpus, the
  SHA-256 of the validation files it was measured on.

``tests/test_shipped_teachers.py`` checks every shipped pair against its record.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from selib.course import REPO_ROOT
from selib.runs import RunDir

SHIPPED_KEYS = ("model", "config", "epoch", "step", "best", "history")   # no optimiser state
CONFIGS = REPO_ROOT / "configs" / "teachers"
FOLDER = REPO_ROOT / "teachers"


def _data_root(config) -> Path:
    """The dataset folder of a config (relative paths are relative to the repository)."""
    root = Path(config.data.root or Path("data") / config.data.name)
    return root if root.is_absolute() else REPO_ROOT / root


def validation_dataset(config):
    """The whole utterances of the config's validation split (``data.valid_limit`` of them), its data
    folder taken relative to the repository (:func:`selib.train.dataset`)."""
    from selib.config import load
    from selib.train import dataset

    return dataset(load(config, {"data.root": str(_data_root(config))}), "valid")


def validation_files_sha256(dataset) -> str | None:
    """SHA-256 over the SHA-256 of every noisy and clean validation file, in order (file datasets only)."""
    pairs = getattr(dataset, "pairs", None)
    if pairs is None:
        return None
    digest = hashlib.sha256()
    for _, noisy, clean in pairs:
        for path in (noisy, clean):
            digest.update(hashlib.sha256(Path(path).read_bytes()).hexdigest().encode())
    return digest.hexdigest()


def record(checkpoint: str | Path) -> dict:
    """The record written next to a shipped teacher ``<name>.pt``: ``<name>.json``."""
    path = Path(checkpoint).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no record next to the teacher {checkpoint}; `make teachers` writes both.")
    return json.loads(path.read_text())


def ship(config_path: str | Path, folder: str | Path = FOLDER, runs_root: str | Path = "runs/teachers",
         overrides=None) -> dict:
    """Train one teacher config and write ``<folder>/<name>.pt`` and its record ``<folder>/<name>.json``;
    returns the record. A finished run in ``runs_root`` is reused (delete it to train again)."""
    import torch

    from selib import train
    from selib.evaluation import validation_score
    from selib.checkpoints import load_checkpoint, load_model, save_model_only
    from selib.config import ConfigError, load
    from selib.kd.cache import file_sha256

    config_path = Path(config_path)
    cfg = load(config_path, overrides)
    if cfg.kd.method != "none":
        raise ConfigError(f"{config_path}: kd.method = {cfg.kd.method!r}; a shipped teacher trains without KD "
                          "(kd.method: none, teacher: null).")
    run = RunDir.of(cfg, runs_root)
    train.run(cfg, run.path, test=False)     # resumes an interrupted run; a finished one trains no more
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = save_model_only(run.best, folder / f"{cfg.name}.pt", SHIPPED_KEYS)
    state = load_checkpoint(checkpoint)
    model, _ = load_model(checkpoint)
    valid = validation_dataset(cfg)
    si_sdr, n_utterances = validation_score(model, valid)
    shown = config_path.resolve().relative_to(REPO_ROOT) if config_path.resolve().is_relative_to(REPO_ROOT) \
        else config_path
    record = {"name": cfg.name, "checkpoint": checkpoint.name, "sha256": file_sha256(checkpoint),
              "config_path": str(shown), "command": f"selib teachers {shown}", "config": cfg.to_dict(),
              "params": model.n_params, "step": state["step"], "epoch": state["epoch"],
              "valid": {"si_sdr": si_sdr, "n_utterances": n_utterances,
                        "files_sha256": validation_files_sha256(valid)},
              "torch": torch.__version__}
    (folder / f"{cfg.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record

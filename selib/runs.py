"""Run folders: the one place that names a run's files, tells its status and records its failure
(lesson ``06_training_teacher_student``; the layout is in docs/CONTRACTS.md).

A run folder is ``<runs root>/<name>-s<seed>``. :class:`selib.train.Trainer` writes ``config.yaml``,
``last.pt``, ``best.pt``, ``history.json`` and ``train.log`` into it, ``Trainer.test`` ``metrics.json``
and ``scores.csv``; a papermill run adds ``params.yaml``, ``train.ipynb`` and ``papermill.log``, an
in-process run that fails ``error.log``; a failed run of either kind leaves ``FAILED``. ``.lock`` is
held (``flock``) by the process executing the run.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DONE, FAILED, UNFINISHED = "done", "failed", "unfinished"


def run_name(name: str, seed: int) -> str:
    """The folder name of seed ``seed`` of config ``name``: ``<name>-s<seed>``."""
    return f"{name}-s{int(seed)}"


class RunDir:
    """The files of one run folder, its status, its failure record, and its model and metrics."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.params = self.path / "params.yaml"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.history = self.path / "history.json"
        self.metrics = self.path / "metrics.json"
        self.scores = self.path / "scores.csv"
        self.log = self.path / "train.log"
        self.notebook = self.path / "train.ipynb"
        self.papermill_log = self.path / "papermill.log"
        self.error_log = self.path / "error.log"
        self.failed = self.path / "FAILED"
        self.lock = self.path / ".lock"

    @classmethod
    def of(cls, config, root: str | Path = "runs") -> "RunDir":
        """The run folder of a resolved config under ``root``."""
        return cls(Path(root) / run_name(config.name, config.seed))

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def is_run(self) -> bool:
        """Whether the folder belongs to a run (it has its config, or a papermill run's parameters)."""
        return self.config.is_file() or self.params.is_file()

    @property
    def status(self) -> str:
        """``done`` (``metrics.json`` written), ``failed`` (``FAILED`` written) or ``unfinished``."""
        if self.metrics.is_file():
            return DONE
        return FAILED if self.failed.is_file() else UNFINISHED

    def start(self) -> None:
        """Create the folder and clear an earlier failure, before a (re)try."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.failed.unlink(missing_ok=True)

    @contextmanager
    def claim(self):
        """Hold ``.lock`` while the run executes: yields True, or False when another process holds it
        (POSIX ``flock``: the lock goes with the process that held it, however it ended)."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    def fail(self, reason: str, log: Path, **extra: Path) -> None:
        """Record a failure: its one-line reason, the log that holds the details, and any other files."""
        lines = [f"reason: {reason}", f"log: {log}"] + [f"{k}: {v}" for k, v in extra.items()]
        self.failed.write_text("\n".join(lines) + "\n")

    def failure(self) -> str:
        """Why the run is not done: the reason in ``FAILED``, or ``unfinished (no metrics.json)``."""
        if self.failed.is_file():
            return self.failed.read_text().splitlines()[0].removeprefix("reason: ")
        return f"unfinished (no {self.metrics.name})"

    def log_line(self, message: str) -> None:
        """Append ``message`` to ``train.log``, after the date and time."""
        with open(self.log, "a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def read_config(self):
        """The run's ``config.yaml`` through :func:`selib.config.load` (defaults filled in)."""
        from selib.config import load

        return load(self.config)

    def read_metrics(self) -> dict[str, Any]:
        """The content of ``metrics.json`` (test summary, model, checkpoint, timing, history, config)."""
        return json.loads(self.metrics.read_text())

    def read_history(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``history.json``."""
        return json.loads(self.history.read_text())

    def load_model(self, which: str = "best", device="cpu"):
        """``(model, config)`` rebuilt from ``best.pt`` or ``last.pt`` (:func:`selib.checkpoints.load_model`)."""
        from selib.checkpoints import load_model

        return load_model({"best": self.best, "last": self.last}[which], device)

"""The training loop: :class:`Trainer` (lesson ``06_training_teacher_student``) and :func:`run`."""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from selib import evaluation
from selib.checkpoints import load_checkpoint, save_checkpoint
from selib.config import Config, load
from selib.kd.balance import balance_weight, grad_norms, mean_grad_norms
from selib.runs import RunDir
from selib.train import state as st
from selib.train.step import Parts, build, dataset


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


def progress_enabled() -> bool:
    """Progress bars on a terminal or in a notebook; off in CI, in logs and with ``SELIB_PROGRESS=0``."""
    if os.environ.get("SELIB_PROGRESS") is not None:
        return os.environ["SELIB_PROGRESS"] not in ("0", "", "false", "no")
    if os.environ.get("CI"):
        return False
    in_kernel = "ipykernel" in sys.modules
    return in_kernel or sys.stderr.isatty()


class Trainer:
    """Fit a model from a config and test it (lesson ``06_training_teacher_student``).

    ``fit()`` resumes from ``run_dir/last.pt`` when present; ``test()`` enhances the test split with
    ``best.pt`` and writes ``metrics.json`` and ``scores.csv``. ``datasets`` may map ``train``,
    ``valid`` and/or ``test`` to your own datasets (items ``{"id", "noisy", "clean"}``) instead of
    ``selib.data.get_dataset``. What the run trains with (:class:`selib.train.step.Parts`) reads as
    attributes: ``trainer.student``, ``.teacher``, ``.distiller``, ``.optimizer``, ``.training_step``, ...

    With ``teacher.cache: true`` the teacher's outputs for output-level KD come from
    :class:`selib.kd.TeacherCache` in ``teacher.cache_dir`` (default ``<run_dir>/../.teacher-cache``,
    shared by the runs of one runs root); the weights end bit-identical to a run without it.
    ``kd.balance: grad`` and the gradient norms the history records: :mod:`selib.kd.balance`.
    """

    def __init__(self, config: Config | Mapping | str | Path, run_dir: str | Path,
                 datasets: Mapping[str, Dataset] | None = None, parts: Parts | None = None):
        self.cfg = cfg = config if isinstance(config, Config) else load(config)
        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        self.rank, self.world, self.device = st.init_distributed(cfg.device)
        self.progress = progress_enabled() and self.rank == 0
        self._datasets = dict(datasets or {})
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        st.seed_everything(cfg.seed)
        self.parts = parts or build(cfg, self.device, self._datasets.get("train"), self.world,
                                    self.run_dir.parent / ".teacher-cache", self._log)
        self.amp_dtype, self.teacher_cache = self.training_step.amp_dtype, self.training_step.cache
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch = self.batch = self.step = 0
        self.best = -math.inf
        self.history: list[dict[str, Any]] = []
        self.running = st.new_running()
        if st.resume(self):
            self._log(f"resumed from {self.run.last}: epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")
        if self.rank == 0:
            cfg.dump(self.run.config)
        if self.world > 1:
            has_own = len(self.params) > sum(1 for _ in self.student.parameters())
            self.training_step.distribute([self.device.index] if self.device.type == "cuda" else None, has_own)

    def __getattr__(self, name: str) -> Any:
        if name in Parts.__dataclass_fields__ and "parts" in self.__dict__:
            return getattr(self.parts, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _dataset(self, split: str) -> Dataset:
        """The split given to ``__init__``, else the config's (:func:`selib.train.step.dataset`)."""
        if split not in self._datasets:
            self._datasets[split] = dataset(self.cfg, split)
        return self._datasets[split]

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: Path) -> Path:
        """Write a checkpoint (``self.run.last`` or ``.best``) atomically (rank 0; every rank must call
        it under DDP)."""
        if not all(torch.isfinite(p).all() for p in self.params):
            raise TrainingDiverged(f"the weights hold NaN/Inf after step {self.step}; {self._last_good()} "
                                   "Train again in a new run folder with a lower optim.lr or optim.grad_clip.")
        state = st.snapshot(self)
        if self.rank == 0:
            save_checkpoint(state, path)
        return path

    def _last_good(self) -> str:
        path = self.run.last
        if not path.is_file():
            return "no checkpoint was written before it."
        return f"the last good checkpoint is {path} (step {load_checkpoint(path)['step']})."

    # ------------------------------------------------------------------ training
    def fit(self) -> list[dict[str, Any]]:
        """Train until ``optim.epochs`` (or ``optim.max_steps``); returns the per-epoch history."""
        cfg = self.cfg
        self._log(f"training {cfg.name}: {cfg.model.family} {cfg.model.preset} ({self.student.n_params:,} "
                  f"parameters), kd {cfg.kd.method}, {self.n_batches} batches of {cfg.data.batch_size} per "
                  f"epoch, {self.world} process(es), {self.device}"
                  + (f"; transfer set: {cfg.data.transfer}" if cfg.data.transfer is not None else "")
                  + (f"; KD alone for the first {cfg.kd.pretrain_share:.0%} of the steps"
                     if cfg.kd.schedule == "two-step" else ""))
        self._balance_if_due()
        try:      # batch > 0: an epoch left open by a kill
            while self.epoch < cfg.optim.epochs and self.step < self.total_steps or self.batch > 0:
                if self.step < self.total_steps:
                    self._train_epoch()
                self._end_epoch()
        except TrainingDiverged as err:
            self._log(f"stopped: {err}")
            raise
        cache = self.teacher_cache
        if cache is not None:
            self._log(f"teacher cache {cache.folder}: {cache.hits} of {cache.hits + cache.misses} batches "
                      "served from disk")
        if self.world > 1:
            dist.barrier()
        return self.history

    def _loader(self, epoch: int, start: int = 0) -> DataLoader:
        """The training batches of ``epoch`` from global batch ``start`` on (this rank's slices)."""
        return st.epoch_loader(self.train_set, self.cfg, epoch, start, self.rank, self.world, self.device)

    def _train_epoch(self) -> None:
        from tqdm.auto import tqdm
        bar = tqdm(total=self.n_batches, initial=self.batch, disable=not self.progress, leave=False,
                   desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}", unit="batch")
        self._set_train(True)
        started = time.perf_counter()
        for batch in self._loader(self.epoch, start=self.batch):
            logged = self._train_step(batch)
            self.batch, self.step = self.batch + 1, self.step + 1
            self._balance_if_due()
            bar.update(1)
            bar.set_postfix(loss=f"{logged['loss']:.3f}")
            every = self.cfg.optim.checkpoint_every
            if every and self.step % every == 0:
                self.running["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                self.save(self.run.last)
            if self.step >= self.total_steps:
                break
        bar.close()
        self.running["seconds"] += time.perf_counter() - started

    def _balance_if_due(self) -> None:
        """Set the KD weight by ``kd.balance: grad`` at step ``kd.balance_at`` (:mod:`selib.kd.balance`);
        the student, the distiller, the random states and the data position are left as they were."""
        kd_cfg = self.cfg.kd
        if not (kd_cfg.balance == "grad" and self.teacher is not None and self.step == kd_cfg.balance_at
                and (self.step > 0 or self.batch == 0)):
            return
        saved, rng = [copy.deepcopy(m.state_dict()) for m in (self.student, self.distiller)], st.rng_state()
        self._set_train(True)
        se_norm, kd_norm, n = mean_grad_norms(self.training_step, islice(self._loader(0), kd_cfg.balance_batches),
                                              self._student_params(), self.device, self.world)
        for module, state in zip((self.student, self.distiller), saved):
            module.load_state_dict(state)
        st.set_rng_state(rng)
        if hasattr(self.train_set, "set_epoch"):    # _loader(0) moved the crops to epoch 0
            self.train_set.set_epoch(self.epoch)
        weight = balance_weight(se_norm, kd_norm, kd_cfg.balance_ratio, kd_cfg.method, kd_cfg.balance_batches)
        self._log(f"kd.balance: grad at step {self.step}, over {n} batches: |grad SE| {se_norm:.4g}, "
                  f"|grad KD| {kd_norm:.4g} -> kd weight {weight:.4g} (ratio {kd_cfg.balance_ratio:g})")
        self.distiller.weight = weight

    def _student_params(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def supervised(self, step: int) -> bool:
        """Whether step ``step`` (0-based) trains on ``L_SE`` too: not in the KD-only first
        ``kd.pretrain_share`` of the steps of ``kd.schedule: two-step``."""
        kd_cfg = self.cfg.kd
        return kd_cfg.schedule != "two-step" or step >= round(kd_cfg.pretrain_share * self.total_steps)

    def _train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        noisy, clean, labelled = self.training_step.inputs(batch, self.device)
        with self.training_step.autocast():
            se, kd_loss, logged = self.training_step.losses(noisy, clean, labelled=labelled)
            loss = self.distiller.combine(se, kd_loss, supervised=self.supervised(self.step))
        self._check_finite(loss)
        if kd_loss is not None and self.batch == 0 and (self.epoch + 1) % self.cfg.eval.every_epochs == 0:
            self.running["grad_norms"] = grad_norms(se, kd_loss, self._student_params(), self.world)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.cfg.optim.scheduler == "cosine":
            self.scheduler.step()
        logged = {"loss": float(loss.detach()), **logged}
        st.accumulate(self.running, logged, self.distiller.step_counts())
        return logged

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not st.finite_everywhere(loss, self.world):
            raise TrainingDiverged(
                f"the loss is {float(loss.detach()):.4g} at step {self.step + 1} (epoch {self.epoch + 1}, batch "
                f"{self.batch + 1}); {self._last_good()} Check the data for NaN/Inf, or train again in a new "
                "run folder with a lower optim.lr, a smaller optim.grad_clip or optim.amp: off.")

    def _set_train(self, mode: bool) -> None:
        self.training_step.train(mode)

    def _end_epoch(self) -> None:
        """Validate, step the epoch schedulers, log, checkpoint ``last.pt`` (and ``best.pt``)."""
        cfg = self.cfg
        last = self.epoch + 1 >= cfg.optim.epochs or self.step >= self.total_steps
        valid = self.validate() if last or (self.epoch + 1) % cfg.eval.every_epochs == 0 else None
        means, counts = st.epoch_means(self.running, self.world)
        record = {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"], **means,
                  **({"kd_weight": self.distiller.weight} if self.teacher is not None else {}),
                  **st.grad_ratio(self.running, self.distiller.weight), **self.distiller.epoch_summary(counts),
                  "valid_si_sdr": valid, "seconds": self.running["seconds"]}
        if cfg.optim.scheduler == "step":
            self.scheduler.step()
        elif cfg.optim.scheduler == "plateau" and valid is not None:
            self.scheduler.step(valid)
        improved = valid is not None and valid > self.best
        self.best = valid if improved else self.best
        self.history.append(record)
        self.epoch, self.batch, self.running = self.epoch + 1, 0, st.new_running()
        self.save(self.run.last)
        if improved:
            self.save(self.run.best)
        if self.rank == 0:
            self.run.history.write_text(json.dumps(self.history, indent=1))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()  # I²S alphas: history.json only
                          if isinstance(v, float) and "alpha" not in k)
        self._log(f"epoch {record['epoch']}/{cfg.optim.epochs} step {self.step}: {shown}"
                  + (" (best)" if improved else ""))

    def validate(self) -> float:
        """Mean SI-SDR (dB) of the student on the whole validation utterances (shared over ranks)."""
        self._set_train(False)
        mean, _ = evaluation.validation_score(self.student, self._dataset("valid"), self.device, self.rank, self.world)
        self._set_train(True)
        return mean

    def test(self, checkpoint: str | Path | None = None) -> dict[str, Any]:
        """Enhance the test split with ``best.pt`` (or ``checkpoint``, e.g. a shipped teacher); write
        ``metrics.json`` and ``scores.csv`` (rank 0; :func:`selib.evaluation.test_run`)."""
        if self.rank != 0:
            return {}
        summary = evaluation.test_run(self.cfg, self.run, self._dataset("test"), checkpoint, self.device,
                                      self.history, self.progress)
        self._log("test: " + ", ".join(f"{k} {v['mean']:.4g}" for k, v in summary["summary"].items()))
        return summary

    def _log(self, message: str) -> None:
        """One line to ``run_dir/train.log`` and to stdout (rank 0 only)."""
        if self.rank != 0:
            return
        self.run.log_line(message)
        if self.progress:
            from tqdm.auto import tqdm
            tqdm.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        """Leave the process group joined in ``__init__`` (under ``torchrun``)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def run(config: Config | Mapping | str | Path, run_dir: str | Path | None = None,
        overrides: Mapping[str, Any] | list[str] | None = None, datasets: Mapping[str, Dataset] | None = None,
        test: bool = True) -> dict[str, Any]:
    """Fit and test one run: ``config.yaml``, checkpoints, ``train.log``, ``history.json``,
    ``metrics.json`` and ``scores.csv`` in ``run_dir`` (default ``runs/<name>-s<seed>``). Returns the
    ``metrics.json`` content (empty on ranks other than 0, and without ``test``)."""
    cfg = load(config, overrides)
    trainer = Trainer(cfg, run_dir or RunDir.of(cfg).path, datasets=datasets)
    try:
        trainer.fit()
        return trainer.test() if test else {}
    finally:
        trainer.close()

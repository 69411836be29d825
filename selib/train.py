"""Training teachers and students: the :class:`Trainer` (lesson ``06_training_teacher_student``).

One loop serves every run: a teacher (``kd.method: none``, no teacher) or a student distilled from a
frozen teacher by any :mod:`selib.kd` method. It checkpoints ``last.pt`` every epoch and every
``optim.checkpoint_every`` steps and ``best.pt`` by validation SI-SDR, and resumes *exactly*: the data
order is a pure function of ``(seed, epoch)``, a resumed run skips the batches already consumed and
restores every random state, so a run killed mid-epoch ends with the same weights as one never stopped.

Under ``torchrun`` (``WORLD_SIZE > 1``) the same code runs distributed data parallel (gloo on CPU, NCCL
on GPU): ``data.batch_size`` is the *global* batch; each of the W ranks takes its own slice of
``batch_size / W`` items of every global batch, so the averaged gradient is the single-process one.
Only rank 0 writes files. Command line::

    torchrun --nproc_per_node 2 -m selib train CONFIG --run-dir DIR [--set key=value ...]
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from itertools import islice
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from selib import kd, models
from selib.checkpoints import load_checkpoint, load_model, save_checkpoint
from selib.config import Config, ConfigError, load
from selib.runs import RunDir



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


class EpochBatches(Sampler):
    """The batches of one epoch: a permutation seeded by ``(seed, epoch)`` cut into global batches
    (the incomplete last one dropped); rank ``rank`` of ``world`` takes its slice of each; iteration
    starts at global batch ``start`` (resuming mid-epoch)."""

    def __init__(self, n_items: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                 world: int = 1, start: int = 0):
        self.n_items, self.n_batches = n_items, n_items // batch_size
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.rank, self.world, self.start = rank, world, start

    def __len__(self) -> int:
        return self.n_batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n_items, generator=epoch_generator(self.seed, self.epoch))
        per_rank = self.batch_size // self.world
        for b in range(self.start, self.n_batches):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random generator of one epoch's data order (a pure function of ``seed`` and ``epoch``)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def rng_state() -> dict[str, Any]:
    """Every random state (torch CPU/CUDA, numpy, python) as tensors and lists, so that a checkpoint
    holding it loads with ``torch.load(..., weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(py_state), py_gauss]}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


@torch.no_grad()
def si_sdr_total(model: nn.Module, dataset: Dataset, indices, device: torch.device) -> torch.Tensor:
    """``[sum of SI-SDR (dB), count]`` (float64) of ``model`` on the whole utterances ``indices`` of
    ``dataset``: the validation score of :meth:`Trainer.validate` and of shipped teachers."""
    from selib.metrics import si_sdr_torch

    total = torch.zeros(2, dtype=torch.float64)
    for i in indices:
        item = dataset[i]
        est = model(item["noisy"].to(device)[None])
        total += torch.tensor([float(si_sdr_torch(est.float(), item["clean"].to(device)[None])[0]), 1.0],
                              dtype=torch.float64)
    return total


class _Objective(nn.Module):
    """Student and distiller as one module, so that DDP averages the gradients of both."""

    def __init__(self, student: nn.Module, distiller: nn.Module):
        super().__init__()
        self.student, self.distiller = student, distiller

    def forward(self, noisy, clean, teacher_out=None, teacher_features=None):
        student_features = None
        if self.distiller.needs_features:
            out, student_features = self.student(noisy, return_features=True)
        else:
            out = self.student(noisy)
        return self.distiller.split(out, clean, noisy, teacher_out=teacher_out,
                                    student_features=student_features, teacher_features=teacher_features)


class TrainingStep:
    """The losses of one training step, in one place: the frozen teacher's output (from the teacher
    cache when there is one) and, for feature KD, its features; the student's forward; the distiller's
    ``(L_SE, KD or None, parts)`` (:meth:`selib.kd.Distiller.split`). ``module`` is what DDP wraps
    (:meth:`distribute`); ``local=True`` bypasses the wrapper (measurements that take no step)."""

    def __init__(self, student: nn.Module, distiller: nn.Module, teacher: nn.Module | None = None,
                 cache: kd.TeacherCache | None = None):
        self.local_module = self.module = _Objective(student, distiller)
        self.teacher, self.cache, self.distiller = teacher, cache, distiller

    def distribute(self, device_ids: list[int] | None, find_unused_parameters: bool) -> None:
        self.module = nn.parallel.DistributedDataParallel(self.local_module, device_ids=device_ids,
                                                          find_unused_parameters=find_unused_parameters)

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)
        if self.teacher is not None:
            self.teacher.eval()

    @torch.no_grad()
    def teacher_outputs(self, noisy: torch.Tensor) -> tuple[torch.Tensor | None, dict | None]:
        if self.teacher is None:
            return None, None
        if self.distiller.needs_features:
            return self.teacher(noisy, return_features=True)
        if self.cache is not None:
            return self.cache(self.teacher, noisy), None
        return self.teacher(noisy), None

    def losses(self, noisy: torch.Tensor, clean: torch.Tensor, local: bool = False):
        teacher_out, teacher_features = self.teacher_outputs(noisy)
        module = self.local_module if local else self.module
        return module(noisy, clean, teacher_out, teacher_features)


@dataclass
class Parts:
    """What a run trains with, made from its config by :func:`build` and given to :class:`Trainer`."""
    train_set: Dataset
    student: nn.Module
    teacher: nn.Module | None
    distiller: kd.Distiller
    params: list[nn.Parameter]          # the student's and the distiller's own trainable parameters
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: TrainingStep
    n_batches: int                      # global batches per epoch
    total_steps: int


def dataset(config: Config, split: str) -> Dataset:
    """A split of the config's dataset (``selib.data.get_dataset``; training: fixed segments)."""
    from selib.data import get_dataset

    data = config.data
    segment = data.segment_seconds if split == "train" else None
    return get_dataset(data.name, split, root=data.root, segment_seconds=segment, seed=config.seed,
                       limit=data[f"{split}_limit"])


def build(config: Config, device: torch.device, train_set: Dataset | None = None, world: int = 1,
          cache_root: str | Path = "runs/.teacher-cache", log: Callable[[str], None] = print) -> Parts:
    """Student, frozen teacher, distiller, optimiser, scheduler, teacher cache and training data of a
    config on ``device`` (``train_set`` replaces the config's training split; ``world`` processes
    share each global batch). Seed the random generators first: the initial weights come from them."""
    cfg, data = config, config.data
    if data.batch_size % world:
        raise ConfigError(f"data.batch_size = {data.batch_size} is the global batch and must divide "
                          f"evenly over {world} processes; pick a multiple of {world}.")
    train_set = dataset(cfg, "train") if train_set is None else train_set
    n_batches = len(train_set) // data.batch_size
    if n_batches == 0:
        raise ConfigError(f"the train split has {len(train_set)} items, fewer than one batch of "
                          f"data.batch_size = {data.batch_size}; lower the batch size or raise "
                          "data.train_limit.")
    student = models.build(cfg.model.family, cfg.model.preset, **cfg.model.overrides).to(device)
    teacher = _load_teacher(cfg.teacher, device) if cfg.teacher is not None else None
    if cfg.optim.compile:   # in place: the state dict keeps its keys, so checkpoints do not change
        for model in (student, teacher) if teacher is not None else (student,):
            model.compile()
    distiller = kd.build(cfg.kd.method, student, teacher, weight=cfg.kd.weight, options=dict(cfg.kd.options),
                         se_loss=cfg.loss.se, batch_size=data.batch_size // world,
                         segment_samples=int(round(data.segment_seconds * student.sample_rate))).to(device)
    frozen = {id(p) for p in student.parameters()}
    frozen |= {id(p) for p in teacher.parameters()} if teacher is not None else set()
    params = list(student.parameters()) + [p for p in distiller.parameters()
                                           if p.requires_grad and id(p) not in frozen]
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optim.name](
        params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    total_steps = min(cfg.optim.epochs * n_batches, cfg.optim.max_steps or math.inf)
    cache = _teacher_cache(cfg, distiller, device, cache_root, log)
    return Parts(train_set, student, teacher, distiller, params, optimizer,
                 _scheduler(cfg.optim, optimizer, total_steps), TrainingStep(student, distiller, teacher, cache),
                 n_batches, total_steps)


def _load_teacher(spec, device: torch.device) -> nn.Module:
    if not Path(spec.checkpoint).is_file():
        raise FileNotFoundError(
            f"teacher checkpoint {spec.checkpoint} not found; train the teacher first (selib train <teacher "
            "config>) or fix teacher.checkpoint in the config.")
    teacher, _ = load_model(spec.checkpoint, device, spec.family, spec.preset, spec.overrides,
                            fix="fix teacher.checkpoint/family/preset/overrides, or train the teacher "
                                "again (selib train <teacher config>)")
    teacher.requires_grad_(False)
    return teacher


def _teacher_cache(cfg: Config, distiller, device, cache_root, log) -> kd.TeacherCache | None:
    """The teacher-output cache of ``teacher.cache`` (output-level KD only: features are not cached)."""
    spec = cfg.teacher
    if spec is None or not spec.cache:
        return None
    if distiller.needs_features:
        log(f"teacher.cache: off for {cfg.kd.method}, which distils features (only outputs are cached)")
        return None
    root = Path(spec.cache_dir) if spec.cache_dir else Path(cache_root)
    return kd.TeacherCache(spec.checkpoint, root, device, _amp_dtype(cfg.optim.amp, device))


def _scheduler(o, optimizer, total_steps: int):
    if o.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if o.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma)
    if o.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=o.gamma,
                                                          patience=o.patience)
    return None


def _init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the ``torchrun`` process group when ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA GPU is visible; set device: auto or cpu.")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if not use_cuda:
        return rank, world, torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return rank, world, torch.device("cuda", local)


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: AMP runs on CUDA only (``auto`` = bf16 where supported, else fp16)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


# Keys a resumed run may change (longer schedules, evaluation settings, where the data lives, workers).
RESUMABLE_CHANGES = ("optim.epochs", "optim.max_steps", "optim.checkpoint_every", "data.root",
                     "data.num_workers", "data.test_limit", "eval.", "device", "teacher.cache",
                     "role")


class Trainer:
    """Fit a model from a config and test it (lesson ``06_training_teacher_student``).

    ``fit()`` resumes from ``run_dir/last.pt`` when present; ``test()`` enhances the test split with
    ``best.pt`` and writes ``metrics.json`` and ``scores.csv``. ``datasets`` may map ``train``,
    ``valid`` and/or ``test`` to your own datasets (items ``{"id", "noisy", "clean"}``) instead of
    ``selib.data.get_dataset``.

    With ``teacher.cache: true`` the teacher's outputs for output-level KD come from
    :class:`selib.kd.TeacherCache` in ``teacher.cache_dir`` (default ``<run_dir>/../.teacher-cache``,
    shared by the runs of one runs root); the weights end bit-identical to a run without it.
    ``kd.balance: grad`` sets the KD weight to ``kd.balance_ratio`` times the ratio of the SE to the KD
    gradient norm (student parameters, mean over the first ``kd.balance_batches`` batches of epoch 0,
    no update), measured before the first step or, with ``kd.balance_at: N``, after N steps trained
    with ``kd.weight`` (an untrained student's gradients can mislead); it is stored in the checkpoints
    and logged.
    On the first batch of every epoch the history records ``grad_se_norm``, ``grad_kd_norm`` (of the
    unweighted KD term) and ``grad_ratio`` = ``kd_weight * grad_kd_norm / grad_se_norm`` (two extra
    backward passes per epoch). Lesson ``07_logit_kd``.
    """

    def __init__(self, config: Config | Mapping | str | Path, run_dir: str | Path,
                 datasets: Mapping[str, Dataset] | None = None, parts: Parts | None = None):
        self.cfg = config if isinstance(config, Config) else load(config)
        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        self.rank, self.world, self.device = _init_distributed(self.cfg.device)
        self.progress = progress_enabled() and self.rank == 0
        self._datasets = dict(datasets or {})
        cfg = self.cfg
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        if parts is None:
            parts = build(cfg, self.device, self._datasets.get("train"), self.world,
                          self.run_dir.parent / ".teacher-cache", self._log)
        self.parts = parts
        self.train_set, self.student, self.teacher, self.distiller = (
            parts.train_set, parts.student, parts.teacher, parts.distiller)
        self.params, self.optimizer, self.scheduler = parts.params, parts.optimizer, parts.scheduler
        self.training_step, self.n_batches, self.total_steps = parts.step, parts.n_batches, parts.total_steps
        self.teacher_cache = parts.step.cache
        self.batch_per_rank = cfg.data.batch_size // self.world
        self.segment_samples = int(round(cfg.data.segment_seconds * self.student.sample_rate))
        self.amp_dtype = _amp_dtype(cfg.optim.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.epoch = self.batch = self.step = 0
        self.best = -math.inf
        self.history: list[dict[str, Any]] = []
        self.running = self._new_running()
        self._resume()
        if self.rank == 0:
            cfg.dump(self.run.config)
        if self.world > 1:
            has_own = len(self.params) > sum(1 for _ in self.student.parameters())
            self.training_step.distribute([self.device.index] if self.device.type == "cuda" else None, has_own)

    # ------------------------------------------------------------------ data
    def _dataset(self, split: str) -> Dataset:
        """The split given to ``__init__``, else the config's (:func:`dataset`)."""
        if split not in self._datasets:
            self._datasets[split] = dataset(self.cfg, split)
        return self._datasets[split]

    # ------------------------------------------------------------------ checkpoints
    def _new_running(self) -> dict[str, Any]:
        return {"n": 0, "sums": {}, "kd_counts": {}, "seconds": 0.0, "grad_norms": None}

    def _state(self) -> dict[str, Any]:
        rng = rng_state()
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        return {"model": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "kd": self.distiller.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng,
                "epoch": self.epoch, "batch": self.batch, "step": self.step, "best": self.best,
                "history": self.history, "running": self.running, "world_size": self.world,
                "kd_weight": self.distiller.weight, "config": self.cfg.to_dict()}

    def save(self, path: Path) -> Path:
        """Write a checkpoint (``self.run.last`` or ``.best``) atomically (rank 0; every rank must call
        it under DDP)."""
        if not all(torch.isfinite(p).all() for p in self.params):
            raise TrainingDiverged(f"the weights hold NaN/Inf after step {self.step}; {self._last_good()} "
                                   "Train again in a new run folder with a lower optim.lr or optim.grad_clip.")
        state = self._state()
        if self.rank == 0:
            save_checkpoint(state, path)
        return path

    def _last_good(self) -> str:
        path = self.run.last
        if not path.is_file():
            return "no checkpoint was written before it."
        step = load_checkpoint(path)["step"]
        return f"the last good checkpoint is {path} (step {step})."

    def _resume(self) -> None:
        path, best = self.run.last, self.run.best
        if not path.is_file():
            return
        fix = ("delete it to start this run again" + (f", or copy {best} over it to resume from the best "
                                                      "epoch" if best.is_file() else ""))
        state = load_checkpoint(path, fix=fix)    # on the CPU: load_state_dict moves it
        # The stored config goes through load() too, so keys added to the schema since it was written
        # compare at their defaults.
        old, new = _flatten(load(state["config"]).to_dict()), _flatten(self.cfg.to_dict())
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)
                         and not k.startswith(RESUMABLE_CHANGES))
        if changed:
            raise ConfigError(f"{path}: was written with another config ({', '.join(changed)} differ); use a "
                              "new --run-dir, or delete last.pt to start this run from scratch.")
        self.student.load_state_dict(state["model"])
        self.distiller.load_state_dict(state["kd"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        set_rng_state(rng[self.rank] if len(rng) == self.world else rng[0])
        for key in ("epoch", "batch", "step", "best", "history", "running"):
            setattr(self, key, state[key])
        self.distiller.weight = float(state.get("kd_weight", self.distiller.weight))
        self._log(f"resumed from {path}: epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")

    # ------------------------------------------------------------------ training
    def _finished(self) -> bool:
        return self.epoch >= self.cfg.optim.epochs or self.step >= self.total_steps

    def fit(self) -> list[dict[str, Any]]:
        """Train until ``optim.epochs`` (or ``optim.max_steps``); returns the per-epoch history."""
        self._log(f"training {self.cfg.name}: {self.cfg.model.family} {self.cfg.model.preset} "
                  f"({self.student.n_params:,} parameters), kd {self.cfg.kd.method}, {self.n_batches} "
                  f"batches of {self.cfg.data.batch_size} per epoch, {self.world} process(es), {self.device}")
        self._balance_if_due()
        try:
            while not self._finished() or self.batch > 0:     # batch > 0: an epoch left open by a kill
                if self.step < self.total_steps:
                    self._train_epoch()
                self._end_epoch()
        except TrainingDiverged as err:
            self._log(f"stopped: {err}")
            raise
        if self.teacher_cache is not None:
            cache = self.teacher_cache
            self._log(f"teacher cache {cache.folder}: {cache.hits} of {cache.hits + cache.misses} batches "
                      "served from disk")
        if self.world > 1:
            dist.barrier()
        return self.history

    def _loader(self, epoch: int, start: int = 0) -> DataLoader:
        """The training batches of ``epoch`` from global batch ``start`` on (this rank's slices)."""
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        sampler = EpochBatches(len(self.train_set), self.cfg.data.batch_size, self.cfg.seed, epoch,
                               self.rank, self.world, start=start)
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.cfg.data.num_workers,
                          generator=epoch_generator(self.cfg.seed, epoch), pin_memory=self.device.type == "cuda")

    def _train_epoch(self) -> None:
        loader = self._loader(self.epoch, start=self.batch)
        from tqdm.auto import tqdm
        bar = tqdm(total=self.n_batches, initial=self.batch, disable=not self.progress, leave=False,
                   desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}", unit="batch")
        self._set_train(True)
        started = time.perf_counter()
        for batch in loader:
            parts = self._train_step(batch)
            self.batch += 1
            self.step += 1
            self._balance_if_due()
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
            every = self.cfg.optim.checkpoint_every
            if every and self.step % every == 0:
                self.running["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                self.save(self.run.last)
            if self.step >= self.total_steps:
                break
        bar.close()
        self.running["seconds"] += time.perf_counter() - started

    def _autocast(self):
        return (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                else nullcontext())

    def _grad_norms(self, se: torch.Tensor, kd_loss: torch.Tensor) -> list[float]:
        """L2 norms of the gradients of ``L_SE`` and of the unweighted ``KD`` w.r.t. the student's
        parameters (under DDP of the gradients averaged over ranks, as the optimiser sees them); the
        graph is kept for the training backward."""
        params = [p for p in self.student.parameters() if p.requires_grad]
        norms = []
        for loss in (se, kd_loss):
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            flat = torch.cat([(torch.zeros_like(p) if g is None else g).float().flatten()
                              for g, p in zip(grads, params)])
            if self.world > 1:
                dist.all_reduce(flat)
                flat /= self.world
            norms.append(float(torch.linalg.vector_norm(flat)))
        return norms

    def _balance_if_due(self) -> None:
        """Set the KD weight by ``kd.balance: grad`` when training reaches step ``kd.balance_at``."""
        kd_cfg = self.cfg.kd
        if kd_cfg.balance == "grad" and self.teacher is not None and self.step == kd_cfg.balance_at \
                and (self.step > 0 or self.batch == 0):
            self.distiller.weight = self.balance_weight()

    def balance_weight(self) -> float:
        """``kd.balance: grad``: ``kd.balance_ratio * mean ||grad L_SE|| / mean ||grad KD||`` over the
        first ``kd.balance_batches`` batches of epoch 0, measured on the present weights; the student,
        the distiller, the random states and the data position are left as they were."""
        kd_cfg = self.cfg.kd
        saved = [copy.deepcopy(m.state_dict()) for m in (self.student, self.distiller)]
        rng = rng_state()
        self._set_train(True)
        sums = torch.zeros(3, dtype=torch.float64)
        for batch in islice(self._loader(0), kd_cfg.balance_batches):
            noisy, clean = batch["noisy"].to(self.device), batch["clean"].to(self.device)
            with self._autocast():
                se, kd_loss, _ = self.training_step.losses(noisy, clean, local=True)
            sums += torch.tensor([*self._grad_norms(se, kd_loss), 1.0], dtype=torch.float64)
        for module, state in zip((self.student, self.distiller), saved):
            module.load_state_dict(state)
        set_rng_state(rng)
        if hasattr(self.train_set, "set_epoch"):    # _loader(0) moved the crops to epoch 0
            self.train_set.set_epoch(self.epoch)
        se_norm, kd_norm = float(sums[0] / sums[2]), float(sums[1] / sums[2])
        if not kd_norm > 0:
            raise ConfigError(f"kd.balance = grad: the KD term of {kd_cfg.method!r} has no gradient on the "
                              f"first {kd_cfg.balance_batches} batches; set kd.balance: none and pick kd.weight.")
        weight = kd_cfg.balance_ratio * se_norm / kd_norm
        self._log(f"kd.balance: grad at step {self.step}, over {int(sums[2])} batches: |grad SE| {se_norm:.4g}, "
                  f"|grad KD| {kd_norm:.4g} -> kd weight {weight:.4g} (ratio {kd_cfg.balance_ratio:g})")
        return weight

    def _train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        noisy = batch["noisy"].to(self.device, non_blocking=True)
        clean = batch["clean"].to(self.device, non_blocking=True)
        with self._autocast():
            se, kd_loss, parts = self.training_step.losses(noisy, clean)
            loss = self.distiller.combine(se, kd_loss)
        self._check_finite(loss)
        if kd_loss is not None and self.batch == 0:
            self.running["grad_norms"] = self._grad_norms(se, kd_loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.cfg.optim.scheduler == "cosine":
            self.scheduler.step()
        parts = {"loss": float(loss.detach()), **parts}
        self._accumulate(parts)
        return parts

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.world > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            raise TrainingDiverged(
                f"the loss is {float(loss.detach()):.4g} at step {self.step + 1} (epoch {self.epoch + 1}, batch "
                f"{self.batch + 1}); {self._last_good()} Check the data for NaN/Inf, or train again in a new "
                "run folder with a lower optim.lr, a smaller optim.grad_clip or optim.amp: off.")

    def _accumulate(self, parts: Mapping[str, float]) -> None:
        running = self.running
        running["n"] += 1
        for key, value in parts.items():
            running["sums"][key] = running["sums"].get(key, 0.0) + float(value)
        counts = running.setdefault("kd_counts", {})    # a checkpoint from before it had none
        for name, step in self.distiller.step_counts().items():
            counts[name] = counts[name] + step if name in counts else step

    def _set_train(self, mode: bool) -> None:
        self.training_step.train(mode)

    def _end_epoch(self) -> None:
        """Validate, step the epoch schedulers, log, checkpoint ``last.pt`` (and ``best.pt``)."""
        cfg = self.cfg
        last = self.epoch + 1 >= cfg.optim.epochs or self.step >= self.total_steps
        valid = self.validate() if last or (self.epoch + 1) % cfg.eval.every_epochs == 0 else None
        record = {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
        record.update(self._epoch_means())
        record["valid_si_sdr"] = valid
        record["seconds"] = self.running["seconds"]
        if cfg.optim.scheduler == "step":
            self.scheduler.step()
        elif cfg.optim.scheduler == "plateau" and valid is not None:
            self.scheduler.step(valid)
        improved = valid is not None and valid > self.best
        if improved:
            self.best = valid
        self.history.append(record)
        self.epoch, self.batch, self.running = self.epoch + 1, 0, self._new_running()
        self.save(self.run.last)
        if improved:
            self.save(self.run.best)
        if self.rank == 0:
            self.run.history.write_text(json.dumps(self.history, indent=1))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items()  # I²S alphas: history.json only
                          if isinstance(v, float) and "alpha" not in k)
        self._log(f"epoch {record['epoch']}/{cfg.optim.epochs} step {self.step}: {shown}"
                  + (" (best)" if improved else ""))

    def _epoch_means(self) -> dict[str, Any]:
        running = self.running
        names = sorted(running["sums"])
        stats = torch.tensor([running["n"]] + [running["sums"][k] for k in names], dtype=torch.float64)
        counts = {name: c.clone() for name, c in sorted(running.get("kd_counts", {}).items())}
        if self.world > 1:
            dist.all_reduce(stats)
            for total in counts.values():
                dist.all_reduce(total)
        out = {f"train_{k}": float(v / max(stats[0], 1)) for k, v in zip(names, stats[1:])}
        if self.teacher is not None:
            out["kd_weight"] = self.distiller.weight
        if running.get("grad_norms") is not None:
            se_norm, kd_norm = running["grad_norms"]
            out.update(grad_se_norm=se_norm, grad_kd_norm=kd_norm,
                       grad_ratio=self.distiller.weight * kd_norm / se_norm if se_norm > 0 else math.inf)
        out.update(self.distiller.epoch_summary(counts))
        return out

    @torch.no_grad()
    def validate(self) -> float:
        """Mean SI-SDR (dB) of the student on the whole validation utterances (shared over ranks)."""
        valid = self._dataset("valid")
        self._set_train(False)
        total = si_sdr_total(self.student, valid, range(self.rank, len(valid), self.world), self.device)
        if self.world > 1:
            dist.all_reduce(total)
        self._set_train(True)
        if total[1] == 0:
            raise ConfigError("the valid split is empty; raise data.valid_limit or check the dataset.")
        return float(total[0] / total[1])

    # ------------------------------------------------------------------ testing
    @torch.no_grad()
    def test(self, checkpoint: str | Path | None = None) -> dict[str, Any]:
        """Enhance the test split with ``best.pt`` (or ``checkpoint``, e.g. a shipped teacher); write
        ``metrics.json`` and ``scores.csv`` (rank 0).
        An unreadable test file is a row with its status and reason; the rest is scored."""
        if self.rank != 0:
            return {}
        import resource   # POSIX only: imported where the peak memory is read

        from selib.inference import enhance_and_score
        best = Path(checkpoint) if checkpoint is not None else self.run.best
        if not best.is_file():
            raise FileNotFoundError(f"{best} not found; run fit() first (it writes the best checkpoint).")
        model, _ = load_model(best, self.device, self.cfg.model.family, self.cfg.model.preset,
                              self.cfg.model.overrides, fix="train this run again (delete its folder)")
        state = load_checkpoint(best)
        result, timing = enhance_and_score(model, self._dataset("test"), self.cfg.eval.metrics,
                                           workers=self.cfg.eval.workers, csv_path=self.run.scores,
                                           progress=self.progress)
        summary = {
            "name": self.cfg.name, "summary": result.summary,
            "model": {"family": model.family, "preset": model.preset, "params": model.n_params},
            "checkpoint": {"path": str(best), "epoch": state["epoch"], "step": state["step"],
                           "valid_si_sdr": state["best"]},
            "timing": {"train_seconds": sum(r["seconds"] for r in state["history"]),
                       "enhance_seconds": timing["enhance_seconds"],
                       "test_audio_seconds": timing["audio_seconds"], "eval_seconds": timing["eval_seconds"],
                       # the largest resident memory of this process so far (a quick-start run has its own)
                       "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
            "history": self.history, "config": self.cfg.to_dict(),
        }
        self.run.metrics.write_text(json.dumps(summary, indent=1, default=float))
        self._log("test: " + ", ".join(f"{k} {v['mean']:.4g}" for k, v in result.summary.items()))
        return summary

    # ------------------------------------------------------------------ logging
    def _log(self, message: str) -> None:
        """One line to ``run_dir/train.log`` and to stdout (rank 0 only)."""
        if self.rank != 0:
            return
        with open(self.run.log, "a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        if self.progress:
            from tqdm.auto import tqdm
            tqdm.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        """Leave the process group joined in ``__init__`` (under ``torchrun``)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def dry_run(config: Config | Mapping | str | Path, steps: int = 3) -> dict[str, Any]:
    """Time ``steps`` training steps (after one warm-up step) on the present device and project the
    time per epoch and for the whole run, without training or writing anything: the trainer works
    in a temporary folder that is deleted. A batch that does not fit in GPU memory is a
    :class:`ConfigError` naming ``data.batch_size`` (what ``selib train --dry-run`` prints)."""
    import resource
    import statistics
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(config, scratch)
        device, times = trainer.device, []
        batches = iter(trainer._loader(trainer.epoch, start=trainer.batch))
        try:
            for i in range(min(steps + 1, trainer.n_batches)):
                batch = next(batches)
                started = time.perf_counter()
                trainer._train_step(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i:  # the first step warms up
                    times.append(time.perf_counter() - started)
        except torch.OutOfMemoryError as err:
            raise ConfigError(f"data.batch_size = {trainer.cfg.data.batch_size} does not fit in the memory "
                              f"of {device}; lower data.batch_size or train on a larger device.") from err
        peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        trainer.close()
    step = statistics.median(times or [math.nan])
    return {"device": str(device), "step_seconds": step, "steps_timed": len(times),
            "batches_per_epoch": trainer.n_batches, "epoch_seconds": step * trainer.n_batches,
            "total_steps": trainer.total_steps, "run_seconds": step * trainer.total_steps,
            "peak_memory_bytes": peak}


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

"""One training step's parts, made from a config (lesson ``06_training_teacher_student``): the student,
the frozen teacher (or its output cache), the distiller, the optimiser and scheduler (:func:`build`,
gathered in :class:`Parts`), and :class:`TrainingStep`, which computes the losses of one batch."""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from selib import kd, models
from selib.checkpoints import load_model
from selib.config import Config, ConfigError


class _Objective(nn.Module):
    """Student and distiller as one module, so that DDP averages the gradients of both."""

    def __init__(self, student: nn.Module, distiller: nn.Module):
        super().__init__()
        self.student, self.distiller = student, distiller

    def forward(self, noisy, clean, teacher_out=None, teacher_features=None, labelled=None):
        student_features = None
        if self.distiller.needs_features:
            out, student_features = self.student(noisy, return_features=True)
        else:
            out = self.student(noisy)
        return self.distiller.split(out, clean, noisy, teacher_out=teacher_out, student_features=student_features,
                                    teacher_features=teacher_features, labelled=labelled)


class TrainingStep:
    """The losses of one training step, in one place: the frozen teacher's output (from the teacher
    cache when there is one) and, for feature KD, its features; the student's forward; the distiller's
    ``(L_SE, KD or None, logged values)`` (:meth:`selib.kd.Distiller.split`), under autocast to
    ``amp_dtype`` when one is set (:meth:`autocast`). ``module`` is what DDP wraps (:meth:`distribute`);
    ``local=True`` bypasses the wrapper (measurements that take no step)."""

    def __init__(self, student: nn.Module, distiller: nn.Module, teacher: nn.Module | None = None,
                 cache: kd.TeacherCache | None = None, amp_dtype: torch.dtype | None = None):
        self.local_module = self.module = _Objective(student, distiller)
        self.teacher, self.cache, self.distiller, self.amp_dtype = teacher, cache, distiller, amp_dtype
        self.device_type = next(student.parameters()).device.type

    def autocast(self):
        """Autocast to ``amp_dtype`` (CUDA only), or nothing."""
        return (torch.autocast(self.device_type, dtype=self.amp_dtype) if self.amp_dtype is not None
                else nullcontext())

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

    @staticmethod
    def inputs(batch: Mapping[str, torch.Tensor], device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(noisy, clean, labelled)`` of a training batch on ``device``. With a transfer set
        (``transfer_noisy``, :class:`selib.data.transfer.WithTransfer`) its rows follow the labelled ones,
        with zeros where a reference would stand and ``labelled`` false; without one ``labelled`` is None."""
        noisy = batch["noisy"].to(device, non_blocking=True)
        clean = batch["clean"].to(device, non_blocking=True)
        if "transfer_noisy" not in batch:
            return noisy, clean, None
        transfer = batch["transfer_noisy"].to(device, non_blocking=True)
        labelled = torch.cat([torch.ones(len(noisy), dtype=torch.bool), torch.zeros(len(transfer), dtype=torch.bool)])
        return torch.cat([noisy, transfer]), torch.cat([clean, torch.zeros_like(transfer)]), labelled.to(device)

    def losses(self, noisy: torch.Tensor, clean: torch.Tensor, local: bool = False,
               labelled: torch.Tensor | None = None):
        """``(L_SE, KD or None, logged values)`` of one batch (:meth:`selib.kd.Distiller.split`)."""
        teacher_out, teacher_features = self.teacher_outputs(noisy)
        module = self.local_module if local else self.module
        return module(noisy, clean, teacher_out, teacher_features, labelled)


@dataclass
class Parts:
    """What a run trains with, made from its config by :func:`build` and given to :class:`selib.train.Trainer`."""
    train_set: Dataset
    student: nn.Module
    teacher: nn.Module | None
    distiller: kd.Distiller
    params: list[nn.Parameter]          # the student's and the distiller's own trainable parameters
    optimizer: torch.optim.Optimizer
    scheduler: Any
    training_step: TrainingStep
    n_batches: int                      # global batches per epoch
    total_steps: int


def dataset(config: Config, split: str) -> Dataset:
    """A split of the config's dataset (``selib.data.get_dataset``; training: fixed segments, and with
    ``data.transfer`` a transfer item beside every labelled one)."""
    from selib.data import get_dataset

    data = config.data
    segment = data.segment_seconds if split == "train" else None
    items = get_dataset(data.name, split, root=data.root, segment_seconds=segment, seed=config.seed,
                        limit=data[f"{split}_limit"])
    if split != "train" or data.transfer is None:
        return items
    from selib.data.transfer import WithTransfer, transfer_set

    return WithTransfer(items, transfer_set(data.transfer, data, config.seed), config.seed)


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
    rows = data.batch_size // world * (2 if data.transfer is not None else 1)   # transfer rows follow
    distiller = kd.build(cfg.kd.method, student, teacher, weight=cfg.kd.weight, options=dict(cfg.kd.options),
                         se_loss=cfg.loss.se, batch_size=rows,
                         segment_samples=int(round(data.segment_seconds * student.sample_rate))).to(device)
    frozen = {id(p) for p in student.parameters()}
    frozen |= {id(p) for p in teacher.parameters()} if teacher is not None else set()
    params = list(student.parameters()) + [p for p in distiller.parameters()
                                           if p.requires_grad and id(p) not in frozen]
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optim.name](
        params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    total_steps = min(cfg.optim.epochs * n_batches, cfg.optim.max_steps or math.inf)
    cache = _teacher_cache(cfg, distiller, device, cache_root, log)
    step = TrainingStep(student, distiller, teacher, cache, autocast_dtype(cfg.optim.amp, device))
    return Parts(train_set, student, teacher, distiller, params, optimizer,
                 _scheduler(cfg.optim, optimizer, total_steps), step, n_batches, total_steps)


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
    return kd.TeacherCache(spec.checkpoint, root, device, autocast_dtype(cfg.optim.amp, device))


def _scheduler(o, optimizer, total_steps: int):
    if o.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if o.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma)
    if o.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=o.gamma,
                                                          patience=o.patience)
    return None


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: AMP runs on CUDA only (``auto`` = bf16 where supported, else fp16)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]

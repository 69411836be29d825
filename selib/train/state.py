"""What makes a run resumable exactly, and shared over processes (lesson ``06_training_teacher_student``):
the data order as a pure function of ``(seed, epoch)``, every random state as plain tensors, the
config keys a resumed run may change, the running sums of an epoch, and the ``torchrun`` process group."""
from __future__ import annotations

import math
import os
import random
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from selib.checkpoints import load_checkpoint
from selib.config import Config, ConfigError, load

# Keys a resumed run may change (longer schedules, evaluation settings, where the data lives, workers).
RESUMABLE_CHANGES = ("optim.epochs", "optim.max_steps", "optim.checkpoint_every", "data.root",
                     "data.num_workers", "data.test_limit", "eval.", "device", "teacher.cache",
                     "role")


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


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python (the initial weights come from them)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def check_resumable(stored: Mapping[str, Any], config: Config, path) -> None:
    """A :class:`ConfigError` unless the config stored in checkpoint ``path`` differs from ``config`` only
    in :data:`RESUMABLE_CHANGES`. The stored config goes through :func:`selib.config.load` too, so keys
    added to the schema since it was written compare at their defaults."""
    old, new = _flatten(load(stored).to_dict()), _flatten(config.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)
                     and not k.startswith(RESUMABLE_CHANGES))
    if changed:
        raise ConfigError(f"{path}: was written with another config ({', '.join(changed)} differ); use a "
                          "new --run-dir, or delete last.pt to start this run from scratch.")


def new_running() -> dict[str, Any]:
    """The running sums of an epoch (stored in checkpoints, so a resumed epoch averages over all of it)."""
    return {"n": 0, "sums": {}, "kd_counts": {}, "seconds": 0.0, "grad_norms": None}


def accumulate(running: dict[str, Any], losses: Mapping[str, float], kd_counts: Mapping[str, Any]) -> None:
    """Add one step's logged losses and the distiller's step counts to ``running``."""
    running["n"] += 1
    for key, value in losses.items():
        running["sums"][key] = running["sums"].get(key, 0.0) + float(value)
    counts = running.setdefault("kd_counts", {})    # a checkpoint from before it had none
    for name, step in kd_counts.items():
        counts[name] = counts[name] + step if name in counts else step


def epoch_means(running: Mapping[str, Any], world: int) -> tuple[dict[str, float], dict[str, Any]]:
    """``({"train_<loss>": mean over the epoch and the ranks}, the distiller's step counts summed over
    the ranks)``."""
    names = sorted(running["sums"])
    stats = torch.tensor([running["n"]] + [running["sums"][k] for k in names], dtype=torch.float64)
    counts = {name: c.clone() for name, c in sorted(running.get("kd_counts", {}).items())}
    if world > 1:
        dist.all_reduce(stats)
        for total in counts.values():
            dist.all_reduce(total)
    return {f"train_{k}": float(v / max(stats[0], 1)) for k, v in zip(names, stats[1:])}, counts


def grad_ratio(running: Mapping[str, Any], weight: float) -> dict[str, float]:
    """The gradient norms measured on the epoch's first batch and ``weight * |grad KD| / |grad SE|``."""
    if running.get("grad_norms") is None:
        return {}
    se_norm, kd_norm = running["grad_norms"]
    return {"grad_se_norm": se_norm, "grad_kd_norm": kd_norm,
            "grad_ratio": weight * kd_norm / se_norm if se_norm > 0 else math.inf}


def epoch_loader(train_set, config: Config, epoch: int, start: int, rank: int, world: int,
                 device: torch.device) -> DataLoader:
    """The training batches of ``epoch`` from global batch ``start`` on (rank ``rank``'s slices), with
    the dataset's random crops set to ``epoch``."""
    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)
    sampler = EpochBatches(len(train_set), config.data.batch_size, config.seed, epoch, rank, world, start=start)
    return DataLoader(train_set, batch_sampler=sampler, num_workers=config.data.num_workers,
                      generator=epoch_generator(config.seed, epoch), pin_memory=device.type == "cuda")


# What a checkpoint holds of a Trainer: key -> attribute with a state dict, and the plain counters.
MODULES = {"model": "student", "optimizer": "optimizer", "scheduler": "scheduler", "kd": "distiller",
           "scaler": "scaler"}
COUNTERS = ("epoch", "batch", "step", "best", "history", "running")


def snapshot(trainer) -> dict[str, Any]:
    """A :class:`selib.train.Trainer`'s checkpoint: its modules' state dicts, every rank's random state,
    its counters, the KD weight and the config (every rank must call it under DDP)."""
    rng = [rng_state()]
    if trainer.world > 1:        # every rank's state: a resumed rank continues its own stream
        rng = [None] * trainer.world
        dist.all_gather_object(rng, rng_state())
    modules = {key: getattr(trainer, name) for key, name in MODULES.items()}
    return {**{key: None if m is None else m.state_dict() for key, m in modules.items()}, "rng": rng,
            **{key: getattr(trainer, key) for key in COUNTERS}, "world_size": trainer.world,
            "kd_weight": trainer.distiller.weight, "config": trainer.cfg.to_dict()}


def resume(trainer) -> bool:
    """Restore what :func:`snapshot` saved in the trainer's ``last.pt``, if there is one (the config
    may differ only in :data:`RESUMABLE_CHANGES`); whether it did."""
    path, best = trainer.run.last, trainer.run.best
    if not path.is_file():
        return False
    fix = ("delete it to start this run again" + (f", or copy {best} over it to resume from the best "
                                                  "epoch" if best.is_file() else ""))
    state = load_checkpoint(path, fix=fix)    # on the CPU: load_state_dict moves it
    check_resumable(state["config"], trainer.cfg, path)
    for key in ("model", "kd", "optimizer", "scheduler", "scaler"):
        module = getattr(trainer, MODULES[key])
        if module is not None:
            module.load_state_dict(state[key])
    rng = state["rng"]
    set_rng_state(rng[trainer.rank] if len(rng) == trainer.world else rng[0])
    for key in COUNTERS:
        setattr(trainer, key, state[key])
    trainer.distiller.weight = float(state.get("kd_weight", trainer.distiller.weight))
    return True


def finite_everywhere(loss: torch.Tensor, world: int) -> bool:
    """Whether ``loss`` is finite on every rank."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bad.item()


def init_distributed(device: str) -> tuple[int, int, torch.device]:
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

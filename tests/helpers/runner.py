"""Test-only data and a script that trains in a real process, alone or under ``torchrun``:

    python tests/helpers/runner.py CONFIG RUN_DIR [--delay S] [--dump-params]

It trains on the config's dataset like ``python -m selib train --no-test``, with two test hooks:
``--delay`` slows every training item down (so that a test can SIGKILL the run mid-epoch) and
``--dump-params`` writes each rank's final student weights to ``RUN_DIR/params_rank<R>.pt``.
:class:`SyntheticPairs` are generated pairs for fast in-process tests (NaN injection included).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from selib.config import load
from selib.data import get_dataset
from selib.train import Trainer

SAMPLE_RATE = 16000


class SyntheticPairs(Dataset):
    """``n`` (noisy, clean) pairs of ``seconds`` each: harmonic tones with a slow envelope in white noise,
    item ``i`` a pure function of ``(seed, i)``. From epoch ``nan_epoch`` on (``set_epoch``), every
    noisy item holds a NaN sample."""

    def __init__(self, n: int, seconds: float, seed: int = 0, nan_epoch: int | None = None):
        self.n, self.length, self.seed = n, int(round(seconds * SAMPLE_RATE)), seed
        self.nan_epoch, self.epoch = nan_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(f"item {i} of a {self.n}-item dataset")
        rng = np.random.default_rng([self.seed, i])
        t = np.arange(self.length) / SAMPLE_RATE
        f0 = rng.uniform(100, 300)
        clean = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
                    for k in range(1, 6))
        clean *= 0.1 * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t)) / 2
        noisy = clean + rng.uniform(0.01, 0.05) * rng.standard_normal(self.length)
        if self.nan_epoch is not None and self.epoch >= self.nan_epoch:
            noisy[self.length // 2] = np.nan
        return {"id": f"syn{self.seed}-{i:04d}", "noisy": torch.tensor(noisy, dtype=torch.float32),
                "clean": torch.tensor(clean, dtype=torch.float32)}


def synthetic(n_train: int, seconds: float, nan_epoch: int | None = None) -> dict:
    """Train / valid / test splits from disjoint seeds (valid and test: 4 items of 0.5 s)."""
    return {"train": SyntheticPairs(n_train, seconds, seed=1, nan_epoch=nan_epoch),
            "valid": SyntheticPairs(4, 0.5, seed=2), "test": SyntheticPairs(4, 0.5, seed=3)}


class Slowed(Dataset):
    """``dataset`` with a pause before every item (``set_epoch`` passes through)."""

    def __init__(self, dataset: Dataset, delay: float):
        self.dataset, self.delay = dataset, delay

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        time.sleep(self.delay)
        return self.dataset[i]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("run_dir")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--dump-params", action="store_true")
    args = parser.parse_args()
    cfg = load(args.config)
    d = cfg.data
    train = get_dataset(d.name, "train", root=d.root, segment_seconds=d.segment_seconds, seed=cfg.seed,
                        limit=d.train_limit)
    trainer = Trainer(cfg, args.run_dir, datasets={"train": Slowed(train, args.delay)})
    trainer.fit()
    if args.dump_params:
        torch.save(trainer.student.state_dict(), Path(args.run_dir) / f"params_rank{trainer.rank}.pt")
    trainer.close()


if __name__ == "__main__":
    main()

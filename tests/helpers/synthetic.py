"""Test-only data (generated harmonic speech-like tones in white noise) and a script that trains on it
in a real process, alone or under ``torchrun``:

    python tests/helpers/synthetic.py CONFIG RUN_DIR [--train N] [--delay S] [--dump-params]

``--delay`` slows every item down (so that a test can kill the run mid-epoch); ``--dump-params`` writes
each rank's final student weights to ``RUN_DIR/params_rank<R>.pt``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from selib.config import load
from selib.train import Trainer

SAMPLE_RATE = 16000


class SyntheticPairs(Dataset):
    """``n`` (noisy, clean) pairs of ``seconds`` each, item ``i`` a pure function of ``(seed, i)``.

    ``nan_epoch``: from that epoch on (``set_epoch``), every noisy item holds a NaN sample.
    """

    def __init__(self, n: int, seconds: float, seed: int = 0, delay: float = 0.0, nan_epoch: int | None = None):
        self.n, self.length, self.seed = n, int(round(seconds * SAMPLE_RATE)), seed
        self.delay, self.nan_epoch, self.epoch = delay, nan_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(f"item {i} of a {self.n}-item dataset")
        if self.delay:
            time.sleep(self.delay)
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


def datasets(n_train: int, seconds: float, delay: float = 0.0, nan_epoch: int | None = None) -> dict:
    """Train / valid / test splits from disjoint seeds (valid and test: 4 items of 0.5 s)."""
    return {"train": SyntheticPairs(n_train, seconds, seed=1, delay=delay, nan_epoch=nan_epoch),
            "valid": SyntheticPairs(4, 0.5, seed=2), "test": SyntheticPairs(4, 0.5, seed=3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("run_dir")
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--dump-params", action="store_true")
    args = parser.parse_args()
    cfg = load(args.config)
    trainer = Trainer(cfg, args.run_dir, datasets=datasets(args.train, cfg.data.segment_seconds, args.delay))
    trainer.fit()
    if args.dump_params:
        torch.save(trainer.student.state_dict(), Path(args.run_dir) / f"params_rank{trainer.rank}.pt")
    trainer.close()


if __name__ == "__main__":
    main()

"""Paired statistics for comparing runs: the seed × utterance bootstrap of ``selib report`` (lesson
``11_results_and_deployment``, docs/kd.md "Paired statistics")."""
from __future__ import annotations

import numpy as np


def paired_bootstrap(diff, denominator=None, n_boot: int = 10_000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Mean of a seeds × utterances matrix of paired differences and its bootstrap interval.

    ``diff[s, u]`` is, for seed ``s`` and test utterance ``u``, a student's score minus the scratch
    student's score of the same seed on the same utterance. Seeds and utterances are crossed (every seed
    scores the same utterances), so a bootstrap replicate draws ``S`` seeds and, independently, ``U``
    utterances, both with replacement, and takes the mean of ``diff`` over the drawn rows and columns
    (a row or column drawn twice counts twice). The interval is the ``confidence`` percentile interval
    of ``n_boot`` replicates from ``numpy.random.default_rng(seed)``.

    With ``denominator`` (same shape, e.g. teacher minus scratch), the statistic is the ratio of the two
    means over the same draw: the share of the teacher–student gap closed. Returns ``mean``, ``low``,
    ``high``, ``n_seeds`` and ``n_utterances``.
    """
    diff = np.asarray(diff, dtype=np.float64)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"paired_bootstrap takes a non-empty seeds x utterances matrix, got shape {diff.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    n_seeds, n_utts = diff.shape
    rng = np.random.default_rng(seed)
    if denominator is not None:
        denominator = np.asarray(denominator, dtype=np.float64)
        if denominator.shape != diff.shape:
            raise ValueError(f"denominator shape {denominator.shape} differs from diff shape {diff.shape}")
    numerators, denominators = [], []
    chunk = max(1, 2_000_000 // (n_seeds + n_utts))        # replicates per chunk: bounded memory
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        seeds, utts = _counts(rng, size, n_seeds), _counts(rng, size, n_utts)   # [b, S], [b, U] draw counts
        numerators.append(((seeds @ diff) * utts).sum(axis=1))
        if denominator is not None:
            denominators.append(((seeds @ denominator) * utts).sum(axis=1))
    replicates = np.concatenate(numerators) / (n_seeds * n_utts)
    mean = diff.mean()
    if denominator is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            replicates = replicates / (np.concatenate(denominators) / (n_seeds * n_utts))
            mean = mean / denominator.mean()
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return {"mean": float(mean), "low": float(low), "high": float(high), "n_seeds": n_seeds,
            "n_utterances": n_utts}


def _counts(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """How often each of ``n`` indices is drawn in ``n`` draws with replacement, for ``size`` replicates."""
    draws = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
    return np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)

"""Weights that mean the same across KD methods: the gradient norms of ``L_SE`` and of the unweighted KD
term, and ``kd.balance: grad``, which sets the KD weight from their ratio (lesson ``07_logit_kd``;
docs/kd.md, "Weights that mean the same ...").

``kd.balance: grad`` sets the KD weight to ``kd.balance_ratio`` times the ratio of the SE to the KD
gradient norm (student parameters, mean over the first ``kd.balance_batches`` batches of epoch 0, no
update), measured before the first step or, with ``kd.balance_at: N``, after N steps trained with
``kd.weight`` (an untrained student's gradients can mislead); the Trainer stores it in the checkpoints
and logs it. On the first batch of every epoch that validates (``eval.every_epochs``) the history
records ``grad_se_norm``, ``grad_kd_norm`` (of the unweighted KD term) and ``grad_ratio`` =
``kd_weight * grad_kd_norm / grad_se_norm`` (two extra backward passes each time).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from selib.config import ConfigError


def grad_norms(se: torch.Tensor, kd_loss: torch.Tensor, params: list[nn.Parameter], world: int = 1) -> list[float]:
    """L2 norms of the gradients of ``L_SE`` and of the unweighted ``KD`` w.r.t. ``params`` (under DDP
    of the gradients averaged over the ``world`` ranks, as the optimiser sees them); the graph is kept
    for the training backward."""
    norms = []
    for loss in (se, kd_loss):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).float().flatten()
                          for g, p in zip(grads, params)])
        if world > 1:
            dist.all_reduce(flat)
            flat /= world
        norms.append(float(torch.linalg.vector_norm(flat)))
    return norms


def mean_grad_norms(step, batches: Iterable[Mapping[str, torch.Tensor]], params: list[nn.Parameter],
                    device: torch.device, world: int = 1) -> tuple[float, float, int]:
    """``(mean |grad L_SE|, mean |grad KD|, batches)`` over ``batches`` for a
    :class:`selib.train.step.TrainingStep` ``step``; no parameter is updated."""
    sums = torch.zeros(3, dtype=torch.float64)
    for batch in batches:
        noisy, clean, labelled = step.inputs(batch, device)
        with step.autocast():
            se, kd_loss, _ = step.losses(noisy, clean, local=True, labelled=labelled)
        sums += torch.tensor([*grad_norms(se, kd_loss, params, world), 1.0], dtype=torch.float64)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2]), int(sums[2])


def balance_weight(se_norm: float, kd_norm: float, ratio: float, method: str, batches: int) -> float:
    """``kd.balance: grad``: ``ratio * |grad L_SE| / |grad KD|``; a KD term without gradient is a
    :class:`ConfigError`."""
    if not kd_norm > 0:
        raise ConfigError(f"kd.balance = grad: the KD term of {method!r} has no gradient on the "
                          f"first {batches} batches; set kd.balance: none and pick kd.weight.")
    return ratio * se_norm / kd_norm

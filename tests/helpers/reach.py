"""How far into the future a model's output sample hears, measured by autograd (the causal models' tests)."""
from __future__ import annotations

import torch


def future_reach(model, length: int, positions) -> dict[int, int]:
    """For each output position n, the last input sample its gradient touches minus n (float64 noise)."""
    noisy = (0.3 * torch.randn(1, length, dtype=torch.float64)).requires_grad_()
    out = model(noisy)
    reach = {}
    for n in positions:
        grad, = torch.autograd.grad(out[0, n], noisy, retain_graph=True)
        reach[n] = int(grad[0].nonzero().max()) - n
    return reach

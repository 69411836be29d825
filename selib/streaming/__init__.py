"""Frame-by-frame enhancement with a causal student, lesson ``11_results_and_deployment``: one file
per family (``convtasnet``, ``dccrn``, ``dpdcrn``) on one engine (``engine``).

A streamer takes the input in blocks of ``hop`` samples (``step(block [B, hop])`` returns the samples
that became final, ``flush()`` the rest) and carries every piece of state the offline ``forward``
keeps implicitly (the previous frames of causal convolutions, LSTM states, cumulative norm
statistics, pending overlap-add samples). The concatenated output equals ``model(noisy)`` up to float rounding; the tests check it for each causal
student. ``latency`` is the longest time, in samples, from an input sample's arrival to the output
of its enhanced sample: the wait for its block to fill plus the model's look-ahead.

Causal students: DCCRN (every preset), DPDCRN built with ``causal=True`` and Conv-TasNet built with
``causal=True`` (``paper-causal``). DPTNet and the default DPDCRN attend over the whole utterance and
cannot stream.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from selib.models import SEModel
from selib.models.convtasnet import ConvTasNet
from selib.models.dccrn import DCCRN
from selib.models.dpdcrn import DPDCRN
from selib.streaming.convtasnet import ConvTasNetStreamer
from selib.streaming.dccrn import DCCRNStreamer
from selib.streaming.dpdcrn import DPDCRNStreamer

__all__ = ["ConvTasNetStreamer", "DCCRNStreamer", "DPDCRNStreamer", "stream", "streamer"]


def streamer(model: SEModel) -> DCCRNStreamer | DPDCRNStreamer | ConvTasNetStreamer:
    """The streamer of a causal model (eval mode); a clear error for models that cannot stream."""
    model.eval()
    if isinstance(model, DCCRN):
        return DCCRNStreamer(model)
    if isinstance(model, DPDCRN):
        return DPDCRNStreamer(model)
    if isinstance(model, ConvTasNet):
        return ConvTasNetStreamer(model)
    raise ValueError(f"{type(model).__name__} is not causal and cannot stream; stream DCCRN, or a DPDCRN "
                     "or Conv-TasNet built with causal=True (Conv-TasNet preset paper-causal)")


def stream(model: SEModel, noisy: torch.Tensor) -> torch.Tensor:
    """Enhance ``noisy [B, T]`` block by block; the same result as ``model(noisy)``."""
    s = streamer(model)
    length = noisy.shape[-1]
    padded = F.pad(noisy, (0, (-length) % s.hop))
    with torch.inference_mode():
        out = [s.step(block) for block in padded.split(s.hop, -1)]
        out.append(s.flush())
    return torch.cat(out, -1)[:, :length]

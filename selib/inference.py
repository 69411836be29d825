"""Running a trained model on audio: files of any length in bounded memory (lesson
``11_results_and_deployment``; ``selib enhance`` and :mod:`selib.evaluation` use it).

:func:`enhance` cuts a long waveform into overlapping chunks, runs the model on one chunk at a time
and cross-fades the outputs (overlap-add with weights that sum to one), so memory depends on the chunk
length, not on the file length. Each chunk keeps ``overlap / 4`` samples of context on each side out
of its cross-fade, so a model whose receptive field reaches at most that far gives the output of one
whole-file pass (to float rounding); recurrent models see their state restart at every chunk.
"""
from __future__ import annotations


import torch

from selib.constants import SAMPLE_RATE

CHUNK_SECONDS = 5.0     # about 50 MB of activations for the tiny DCCRN student
OVERLAP_SECONDS = 1.0   # 0.25 s of context each side, 0.5 s cross-fade
QUANTUM = 1024  # chunk starts are multiples of this, so STFT frames fall where a whole-file pass puts them


class ModelOutputError(ValueError):
    """The model produced NaN/Inf samples: the model (its checkpoint) is at fault, not the input."""


def _samples(seconds: float, rate: int) -> int:
    return int(round(seconds * rate / QUANTUM)) * QUANTUM


def _fade(length: int) -> torch.Tensor:
    """Raised-cosine ramp from 0 to 1; ``ramp + ramp.flip(0) == 1`` sample by sample."""
    phase = (torch.arange(length, dtype=torch.float64) + 0.5) / length
    return (torch.sin(0.5 * torch.pi * phase) ** 2).float()


@torch.no_grad()
def enhance(model: torch.nn.Module, noisy: torch.Tensor, chunk_seconds: float = CHUNK_SECONDS,
            overlap_seconds: float = OVERLAP_SECONDS) -> torch.Tensor:
    """The model's output ``[T]`` (float32, on the CPU) for a mono waveform ``[T]``, computed chunk by
    chunk for inputs longer than ``chunk_seconds``; raises :class:`ModelOutputError` on NaN/Inf output."""
    rate = getattr(model, "sample_rate", SAMPLE_RATE)
    chunk, overlap = _samples(chunk_seconds, rate), _samples(overlap_seconds, rate)
    if not (0 <= 2 * overlap <= chunk and chunk > 0):
        raise ValueError(f"need 0 <= 2 * overlap <= chunk, got {overlap_seconds} s and {chunk_seconds} s "
                         f"(rounded to multiples of {QUANTUM} samples: {overlap} and {chunk}).")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    noisy = noisy.detach().float().cpu()
    length = noisy.shape[-1]

    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device)[None])[0].float().cpu()

    if length <= chunk:
        out = run(noisy)
    else:
        hop, context, fade = chunk - overlap, overlap // 4, _fade(overlap - 2 * (overlap // 4))
        out = torch.zeros(length)
        n_chunks = -(-(length - overlap) // hop)
        for k in range(n_chunks):
            start, end = k * hop, min(k * hop + chunk, length)
            weight = torch.ones(end - start)
            if k > 0:                  # fade in over the middle of the overlap with the previous chunk
                weight[:context] = 0
                weight[context:context + len(fade)] = fade
            if k < n_chunks - 1:       # fade out over the middle of the overlap with the next chunk
                weight[len(weight) - context:] = 0
                weight[len(weight) - context - len(fade):len(weight) - context] = fade.flip(0)
            out[start:end] += weight * run(noisy[start:end])
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise ModelOutputError(f"the model output holds {bad} NaN/Inf samples (of {length}); the "
                               "model's weights are broken or it diverged: retrain it or use another "
                               "checkpoint.")
    return out

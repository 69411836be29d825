"""How big and how fast a model is: parameters, MACs per second of audio, real-time factor, and how
long a training step takes (:func:`dry_run`, ``selib train --dry-run``).

Lessons ``03_dccrn`` (how MACs are counted; exercise 3.1 checks it by hand), ``04``/``05`` (the preset
table) and ``11_results_and_deployment`` (and the teacher/student sizes of ``06_training_teacher_student``).

MACs are counted by running the model once on ``seconds`` of noise under
``torch.utils.flop_counter.FlopCounterMode`` and halving its FLOPs (one multiply-accumulate = 2 FLOPs).
That counter sees matrix products and convolutions but, on the CPU, misses the fused kernels: LSTMs
entirely, and the attention products (and, in inference mode, everything) of ``nn.MultiheadAttention``.
So inside every ``nn.LSTM``, ``nn.GRU`` and ``nn.MultiheadAttention`` the counter's figure is replaced by
the closed form, from the shapes the module saw (biases, norms and activations are not counted):

- LSTM / GRU, per layer, direction and time step: ``4 H (I + H)`` / ``3 H (I + H)``;
- multi-head attention over ``Lq`` queries and ``Lk`` keys of width ``E``:
  ``Lq E^2 + Lk E (kdim + vdim) + Lq E^2`` (projections) ``+ 2 Lq Lk E`` (scores and weighted sum).

The real-time factor is wall time / audio duration for one forward pass on the model's device
(inference mode, batch 1), the median of ``runs`` timed runs after one warm-up run.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.flop_counter import FlopCounterMode

from selib.constants import SAMPLE_RATE
from selib.models.base import FAMILIES, build, presets as family_presets

_RNN_GATES = {nn.LSTM: 4, nn.GRU: 3}


def _rnn_macs(module: nn.RNNBase, args: tuple, kwargs: dict) -> int:
    x = args[0] if args else kwargs["input"]
    x = x.data if isinstance(x, PackedSequence) else x
    steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]  # batch x time (or time alone)
    directions = 2 if module.bidirectional else 1
    width, hidden = module.input_size, module.hidden_size
    macs = 0
    for _ in range(module.num_layers):
        macs += directions * _RNN_GATES[type(module)] * hidden * (width + hidden)
        width = hidden * directions
    return macs * steps


def _attention_macs(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> int:
    named = {**dict(zip(("query", "key"), args)), **kwargs}
    query, key = named["query"], named["key"]
    seq_axis = 1 if module.batch_first else 0
    lq, lk = query.shape[seq_axis], key.shape[seq_axis]
    batch = query.numel() // (lq * module.embed_dim)
    e = module.embed_dim
    return batch * (2 * lq * e * e + lk * e * (module.kdim + module.vdim) + 2 * lq * lk * e)


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """MACs of one forward pass ``model(*inputs)`` (method in the module docstring)."""
    closed_form: dict[str, int] = {}
    hooks = []
    root = type(model).__name__
    for name, module in model.named_modules():
        if type(module) in _RNN_GATES or isinstance(module, nn.MultiheadAttention):
            formula = _attention_macs if isinstance(module, nn.MultiheadAttention) else _rnn_macs
            key = f"{root}.{name}" if name else root

            def hook(mod, args, kwargs, output, key=key, formula=formula):
                closed_form[key] = closed_form.get(key, 0) + formula(mod, args, kwargs)

            hooks.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for handle in hooks:
            handle.remove()
    per_module = counter.get_flop_counts()
    counted = sum(sum(per_module.get(key, {}).values()) for key in closed_form)
    return (counter.get_total_flops() - counted) // 2 + sum(closed_form.values())


def profile_model(model: nn.Module, seconds: float = 1.0, runs: int = 3) -> dict:
    """``dict(params, macs_per_second, rtf)`` of a waveform model on ``seconds`` of audio at its rate."""
    if seconds <= 0 or runs < 1:
        raise ValueError(f"profile_model needs seconds > 0 and runs >= 1, got seconds={seconds}, runs={runs}")
    rate = getattr(model, "sample_rate", SAMPLE_RATE)
    device = next(model.parameters()).device
    wav = torch.randn(1, max(1, round(seconds * rate)), generator=torch.Generator().manual_seed(0)).to(device)
    duration = wav.shape[-1] / rate
    was_training = model.training
    model.eval()
    try:
        macs = count_macs(model, wav)
        with torch.inference_mode():
            times = time_steps(lambda: model(wav), runs, device)
    finally:
        model.train(was_training)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs_per_second": macs / duration,
        "rtf": statistics.median(times) / duration,
    }


def time_steps(step: Callable[[], Any], runs: int, device: torch.device) -> list[float]:
    """Wall times of ``runs`` calls of ``step`` after one warm-up call (CUDA work waited for): the one
    timing loop of the real-time factor and of :func:`dry_run`."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return times


def dry_run(config, steps: int = 3) -> dict[str, Any]:
    """Time ``steps`` training steps (after one warm-up step) on the present device and project the
    time per epoch and for the whole run, without training or writing anything: the trainer works
    in a temporary folder that is deleted. A batch that does not fit in GPU memory is a
    :class:`ConfigError` naming ``data.batch_size`` (what ``selib train --dry-run`` prints; lesson
    ``06_training_teacher_student``)."""
    import math
    import resource
    import tempfile
    from itertools import islice

    from selib.config import ConfigError
    from selib.train import Trainer

    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(config, scratch)
        device = trainer.device
        runs = min(steps, trainer.n_batches - 1)
        batches = iter(list(islice(trainer._loader(trainer.epoch, start=trainer.batch), runs + 1)))
        try:      # the batches are loaded before the timing starts
            times = time_steps(lambda: trainer._train_step(next(batches)), runs, device)
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


def profile_table(families=None, presets=None, seconds: float = 1.0, runs: int = 3) -> list[dict]:
    """One row ``{family, preset, params, macs_per_second, rtf}`` per registered preset.

    ``families`` / ``presets`` (a name or an iterable of names) restrict the table; by default every
    preset of every family in :data:`selib.models.FAMILIES`.
    """
    families, presets = ([n] if isinstance(n, str) else n for n in (families, presets))
    families = list(FAMILIES) if families is None else list(families)
    available = {family: list(family_presets(family)) for family in families}
    chosen = [(f, p) for f, names in available.items() for p in names if presets is None or p in presets]
    missing = set(presets or ()) - {p for _, p in chosen}
    if missing:
        valid = sorted({p for names in available.values() for p in names})
        raise ValueError(f"unknown preset(s) {sorted(missing)} for families {families}; choose from {valid}")
    rows = []
    for family, preset in chosen:
        torch.manual_seed(0)
        figures = profile_model(build(family, preset), seconds=seconds, runs=runs)
        rows.append({"family": family, "preset": preset, **figures})
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`profile_table` as a Markdown table (M params, GMAC/s, RTF)."""
    lines = ["| family | preset | params (M) | GMAC/s | RTF |", "|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['family']} | {row['preset']} | {row['params'] / 1e6:.3f} | "
                     f"{row['macs_per_second'] / 1e9:.3f} | {row['rtf']:.3f} |")
    return "\n".join(lines) + "\n"


def step_times(model: nn.Module, seconds_before: float = 0.0, warmup: int = 20, steps: int = 200) -> dict:
    """What one streaming step costs on one thread: stream ``seconds_before`` of noise (a streamer whose
    state grows, like the causal DPDCRN's, gets dearer), then ``warmup`` steps, then the median CPU time
    of the thread and wall time over ``steps`` steps, in ms, with the streamer's ``hop`` and ``latency``
    (samples). CPU time does not count waiting for a core on a shared machine."""
    from selib.streaming import streamer

    s = streamer(model)
    skipped = int(seconds_before * model.sample_rate) // s.hop + warmup
    blocks = 0.1 * torch.randn(skipped + steps, 1, s.hop, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu, wall = [], []
    try:
        with torch.inference_mode():
            for block in blocks:
                start, start_cpu = time.perf_counter(), time.thread_time()
                s.step(block)
                cpu.append(time.thread_time() - start_cpu)
                wall.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {"hop": s.hop, "latency": s.latency, "cpu_ms": 1e3 * statistics.median(cpu[skipped:]),
            "wall_ms": 1e3 * statistics.median(wall[skipped:])}

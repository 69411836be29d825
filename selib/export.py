"""Exporting a model for deployment: ``torch.export`` and ONNX, lesson ``11_results_and_deployment``.

Both routes capture the model's ``forward(noisy [B, T]) -> enhanced [B, T]`` once, with a dynamic batch
axis and a dynamic time axis, so the exported graph runs on lengths it never saw. The graph takes
lengths that are a whole number of :func:`time_unit` samples (the STFT hop or the encoder stride: the
unit every model already pads its input to); :func:`pad_to_unit` pads any other length with zeros at
the end, which is what the model itself does, and the runners here cut the output back to ``T``.

The recurrent layers go through one ``selib::recurrent`` operator (:func:`selib.models.blocks.rnn_sequence`),
which :func:`onnx_translations` maps to the ONNX ``LSTM`` and ``GRU`` operators; ``onnx``,
``onnxscript`` and ``onnxruntime`` are imported only here, when an ONNX file is written or run.
ONNX files use opset :data:`ONNX_OPSET`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.export import Dim

from selib.models import SEModel

ONNX_OPSET = 18  # the first opset with every operator the models need (STFT arrived in 17)
MAX_BATCH = 64
MAX_SECONDS = 600.0


def time_unit(model: SEModel) -> int:
    """Samples the exported graph's input length must be a multiple of: the STFT hop or the encoder
    stride."""
    return model.stft.hop_length if hasattr(model, "stft") else model.codec.stride


def pad_to_unit(noisy: torch.Tensor, unit: int) -> torch.Tensor:
    """Zero-pad ``[B, T]`` at the end to a whole number of ``unit`` samples."""
    return torch.nn.functional.pad(noisy, (0, (-noisy.shape[-1]) % unit))


def _example_and_shapes(model: SEModel, seconds: float):
    unit = time_unit(model)
    units = max(2, round(seconds * model.sample_rate / unit))
    example = torch.randn(2, unit * units, generator=torch.Generator().manual_seed(0))
    if unit == 1:
        # Any length (DPTNet's paper layout, stride 1). A named Dim makes export prove every guard it
        # derives, and it cannot prove the chunk-count guards of the dual-path split although they hold
        # for every length; Dim.DYNAMIC keeps them as checks of the graph (tests/test_export.py).
        return example, ({0: Dim("batch", min=1, max=MAX_BATCH), 1: Dim.DYNAMIC},)
    steps = Dim("steps", min=2, max=int(MAX_SECONDS * model.sample_rate) // unit)
    return example, ({0: Dim("batch", min=1, max=MAX_BATCH), 1: unit * steps},)


def export_program(model: SEModel, seconds: float = 1.0) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the model in eval mode, traced on ``seconds`` of noise.

    Save it with ``torch.export.save``; :func:`torch.export.load` needs ``selib.models`` imported
    (it registers ``selib::recurrent``).
    """
    model = model.eval()
    example, shapes = _example_and_shapes(model, seconds)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=shapes)


def run_program(program: torch.export.ExportedProgram, noisy: torch.Tensor, unit: int) -> torch.Tensor:
    """Run an exported program on ``[B, T]`` of any length ``T``: pad to ``unit``, run, cut to ``T``."""
    with torch.no_grad():
        return program.module()(pad_to_unit(noisy, unit))[..., :noisy.shape[-1]]


def onnx_translations() -> dict:
    """The ONNX translation of ``selib::recurrent`` for ``torch.onnx.export(custom_translation_table=...)``."""
    from onnxscript import opset18 as op

    # PyTorch stacks the gates as (i, f, g, o) for LSTM and (r, z, n) for GRU; ONNX wants (i, o, f, c)
    # and (z, r, h).
    gate_order = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}

    def recurrent(x, weights, mode: str, bidirectional: bool):
        order = gate_order[mode]

        def reorder(w):
            parts = op.Split(w, axis=0, num_outputs=len(order))
            return op.Concat(*(parts[i] for i in order), axis=0)

        def stacked(tensors):
            return op.Concat(*(op.Unsqueeze(t, [0]) for t in tensors), axis=0)

        directions = [weights[4 * d:4 * d + 4] for d in range(2 if bidirectional else 1)]
        w = stacked([reorder(d[0]) for d in directions])
        r = stacked([reorder(d[1]) for d in directions])
        b = stacked([op.Concat(reorder(d[2]), reorder(d[3]), axis=0) for d in directions])
        hidden = weights[1].shape[1]
        attributes = dict(hidden_size=hidden, direction="bidirectional" if bidirectional else "forward")
        seq = op.Transpose(x, perm=[1, 0, 2])  # [T, B, I]
        if mode == "LSTM":
            y, _, _ = op.LSTM(seq, w, r, b, **attributes)
        else:
            y, _ = op.GRU(seq, w, r, b, linear_before_reset=1, **attributes)
        y = op.Transpose(y, perm=[2, 0, 1, 3])  # [T, D, B, H] -> [B, T, D, H]
        return op.Reshape(y, op.Constant(value_ints=[0, 0, -1]))

    return {torch.ops.selib.recurrent.default: recurrent}


def export_onnx(model: SEModel, path: str | Path, program: torch.export.ExportedProgram | None = None,
                seconds: float = 1.0) -> Path:
    """Write the model as an ONNX file (opset :data:`ONNX_OPSET`, dynamic batch and time axes).

    ``program`` (from :func:`export_program`) saves tracing the model a second time. The ONNX
    optimiser is off: it drops ``+ 1e-8`` terms as if they were zero (DCCRN's mask then divides 0 by 0);
    onnxruntime optimises the graph itself when it loads it.
    """
    model = model.eval()
    example, shapes = _example_and_shapes(model, seconds)
    with torch.no_grad():
        onnx_program = torch.onnx.export(program or model, (example,), dynamic_shapes=shapes, dynamo=True,
                                         opset_version=ONNX_OPSET, optimize=False,
                                         custom_translation_table=onnx_translations(),
                                         input_names=["noisy"], output_names=["enhanced"], verbose=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path))
    return path


def export_files(model: SEModel, out_dir: str | Path, lengths=(16000, 40_810)) -> dict:
    """Write ``student.pt2`` (torch.export) and ``student.onnx`` into ``out_dir``, reload both and
    compare them with the eager model on ``lengths``; returns the paths and the largest
    ``|exported - eager|`` per format and length (what ``selib export`` prints)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unit = time_unit(model)
    program = export_program(model)
    pt2 = out_dir / "student.pt2"
    torch.export.save(program, str(pt2))
    onnx_path = export_onnx(model, out_dir / "student.onnx", program)
    runners = {"torch.export": lambda x: run_program(torch.export.load(str(pt2)), x, unit).numpy(),
               "onnx": OnnxModel(onnx_path, unit)}
    generator = torch.Generator().manual_seed(1)
    differences = {name: {} for name in runners}
    for length in lengths:
        noisy = torch.randn(1, length, generator=generator)
        with torch.no_grad():
            eager = model(noisy).numpy()
        for name, run in runners.items():
            differences[name][length] = float(np.abs(run(noisy) - eager).max())
    return {"torch.export": pt2, "onnx": onnx_path, "max_abs_diff": differences}


class OnnxModel:
    """An ONNX file run with onnxruntime on one thread: ``model(noisy [B, T]) -> enhanced [B, T]``."""

    def __init__(self, path: str | Path, unit: int, threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.unit = unit

    def __call__(self, noisy: torch.Tensor | np.ndarray) -> np.ndarray:
        noisy = torch.as_tensor(noisy, dtype=torch.float32)
        padded = pad_to_unit(noisy, self.unit).numpy()
        return self.session.run(None, {"noisy": padded})[0][..., :noisy.shape[-1]]

"""Exported students (torch.export and ONNX via onnxruntime) against the eager model, lesson 11."""
import numpy as np
import pytest
import torch

from selib.export import OnnxModel, export_onnx, export_program, run_program, time_unit
from selib.models import FAMILIES, build

# The tiny students in the fast suite; the paper students (the same graphs, wider) are slow.
STUDENTS = [pytest.param(f, "tiny-student", id=f"{f}-tiny") for f in FAMILIES] + [
    pytest.param(f, "paper-student", id=f"{f}-paper", marks=pytest.mark.slow) for f in FAMILIES]
# seconds traced, then two lengths never seen (not whole numbers of hops either); the paper students get
# shorter ones (DPTNet's paper student makes 16,000 frames a second)
LENGTHS = {"tiny-student": (1.0, 12_345, 40_000), "paper-student": (0.5, 6_789, 12_000)}


@pytest.mark.parametrize("family,preset", STUDENTS)
def test_exported_student_matches_eager_on_unseen_lengths(family, preset, tmp_path):
    torch.manual_seed(0)
    model = build(family, preset).eval()
    unit = time_unit(model)
    seconds, unseen, longer = LENGTHS[preset]
    program = export_program(model, seconds=seconds)  # traced on 2 x seconds
    torch.export.save(program, str(tmp_path / "student.pt2"))
    reloaded = torch.export.load(str(tmp_path / "student.pt2"))
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "student.onnx", program), unit)
    generator = torch.Generator().manual_seed(1)
    # the traced length, lengths it never saw, another batch size
    for batch, length in [(2, program.example_inputs[0][0].shape[-1]), (1, unseen), (3, longer)]:
        noisy = torch.randn(batch, length, generator=generator)
        with torch.no_grad():
            eager = model(noisy)
        exported = run_program(reloaded, noisy, unit)
        assert exported.shape == eager.shape
        assert (exported - eager).abs().max() < 1e-4, (batch, length)
        onnx_out = onnx_model(noisy)
        assert onnx_out.shape == tuple(eager.shape)
        assert np.abs(onnx_out - eager.numpy()).max() < 1e-4, (batch, length)


def test_models_keep_the_shape_check_under_export():
    program = export_program(build("dccrn", "tiny-student"))
    with pytest.raises(Exception):
        program.module()(torch.randn(16000))  # [T] instead of [B, T]

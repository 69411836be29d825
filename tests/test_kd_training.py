"""Short real training runs with every KD method: a briefly trained, frozen teacher and a tiny student
trained with Adam on a few fixed batches of the embedded corpus; both the SE part and the KD part of the
loss must go down (mean of the first steps against the mean of the last steps).

KD weights follow docs/kd.md#total-loss-se-loss-and-temperature (scale the KD term to be comparable with
L_SE at the start): the time-domain MSE to the teacher is ~0.02 against an SE loss of ~20 dB, so its weight is 3000.

I²S-TFCKD's inter-set loss compares the fused representatives of two trainable fusion blocks; the
teacher-side block learns only through the calibration weights (docs/kd.md#gradient-paths), so its target
moves and that part alone can rise early in training; the total KD loss and the intra-set sum must still fall.
"""
import pytest
import torch

from selib import kd
from selib.data import build_embedded, get_dataset
from selib.models import build as build_model

BATCH, SEGMENT, WINDOW = 4, 4000, 4  # 0.25-s segments; compare means over 4 steps (2 of each batch)


# The module fixtures build real corpora and runs: one worker builds them once (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("kd_training")


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    root = build_embedded(tmp_path_factory.mktemp("embedded"), seed=0, n_train=2 * BATCH, n_valid=1, n_test=1,
                          min_seconds=1.0, max_seconds=1.0, workers=1, verbose=False)
    data = get_dataset("embedded", "train", root=root, segment_seconds=SEGMENT / 16000)
    items = [data[i] for i in range(2 * BATCH)]
    assert all(item["noisy"].shape == (SEGMENT,) for item in items)
    return [(torch.stack([it["noisy"] for it in items[i:i + BATCH]]),
             torch.stack([it["clean"] for it in items[i:i + BATCH]])) for i in (0, BATCH)]


def _teacher(family, batches, steps=12):
    torch.manual_seed(1)
    teacher = build_model(family, "tiny-teacher")
    optimiser, se = torch.optim.Adam(teacher.parameters(), 3e-3), kd.build("none")
    for step in range(steps):
        noisy, clean = batches[step % len(batches)]
        loss, _ = se(teacher(noisy), clean)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    teacher.zero_grad(set_to_none=True)
    return teacher.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def teachers(batches):
    return {family: _teacher(family, batches) for family in ("convtasnet", "dpdcrn")}


def _distil(family, method, teacher, batches, steps, weight=1.0, options=None, lr=3e-3):
    torch.manual_seed(0)
    student = build_model(family, "tiny-student")
    distiller = kd.build(method, student, teacher, weight=weight, options=options, batch_size=BATCH,
                         segment_samples=SEGMENT)
    optimiser = torch.optim.Adam([*student.parameters(), *distiller.parameters()], lr)
    feats = distiller.needs_features
    history = []
    for step in range(steps):
        noisy, clean = batches[step % len(batches)]
        with torch.no_grad():
            teacher_out = teacher(noisy, return_features=feats)
        out = student(noisy, return_features=feats)
        (teacher_out, teacher_feats), (out, student_feats) = (teacher_out, out) if feats else \
            ((teacher_out, None), (out, None))
        loss, parts = distiller(out, clean, noisy, teacher_out, student_feats, teacher_feats)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(parts)
    assert all(p.grad is None for p in teacher.parameters())
    return history


def _first_last(history, key):
    return (sum(h[key] for h in history[:WINDOW]) / WINDOW, sum(h[key] for h in history[-WINDOW:]) / WINDOW)


@pytest.mark.parametrize("method, weight", [("logits-mse", 3000.0), ("logits-sisnr", 1.0), ("logits-spec", 1.0),
                                            ("dfkd", 3.0)])
def test_logit_and_dfkd_training_lowers_se_and_kd(batches, teachers, method, weight):
    history = _distil("convtasnet", method, teachers["convtasnet"], batches, steps=24, weight=weight)
    for key in ("se", "kd"):
        first, last = _first_last(history, key)
        assert last < first, (method, key, first, last)
    if method == "dfkd":
        assert all(0 <= h["split_hz_mean"] <= 8000 for h in history)


@pytest.mark.parametrize("method, options", [
    ("i2s-tfckd", {"mid_channels": 16}),
    ("dfkd+i2s-tfckd", {"mid_channels": 16, "dfkd_weight": 3.0}),
])
def test_i2s_training_lowers_se_and_kd(batches, teachers, method, options):
    history = _distil("dpdcrn", method, teachers["dpdcrn"], batches, steps=24, weight=10.0, options=options,
                      lr=1e-3)
    for h in history:
        h["intra"] = h["enc"] + h["mid"] + h["dec"]
    keys = ("se", "kd") + (("dfkd",) if "+" in method else ("intra",))
    for key in keys:
        first, last = _first_last(history, key)
        assert last < first, (method, key, first, last)
    alphas = [v for k, v in history[-1].items() if k.startswith("alpha_inter_time_s0")]
    assert len(alphas) == 3 and sum(alphas) == pytest.approx(1.0, rel=1e-5)

"""KD weights that mean the same for every method: ``kd.balance: grad`` checked against gradients computed
here independently, the logged gradient ratio, and the energy-normalised ``logits-mse``."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from selib import kd, models
from selib.config import load
from selib.train import EpochBatches, Trainer

from runner import synthetic

BASE = {"seed": 0, "data": {"segment_seconds": 0.25, "batch_size": 2},
        "model": {"family": "dccrn", "preset": "tiny-student"},
        "optim": {"epochs": 1, "checkpoint_every": 0}, "eval": {"metrics": ["si_sdr"], "workers": 1}}


def _neg_si_snr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-mean negative SI-SNR in dB, mean over the batch, written out here as the reference."""
    est, ref = est - est.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    target = (est * ref).sum(-1, keepdim=True) / (ref * ref).sum(-1, keepdim=True) * ref
    return -(10 * torch.log10((target * target).sum(-1) / ((est - target) ** 2).sum(-1))).mean()


def _norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    loss.backward(retain_graph=True)
    norm = float(torch.cat([p.grad.flatten() for p in params]).double().norm())
    for p in params:
        p.grad = None
    return norm


def _first_batch_norms(student_state, teacher, datasets) -> list[tuple[float, float]]:
    """(|grad L_SE|, |grad logits-mse|) of a student with ``student_state`` on each of the first two
    batches of epoch 0, with the losses written here."""
    student = models.build("dccrn", "tiny-student")
    student.load_state_dict(student_state)
    student.train()
    params = list(student.parameters())
    norms = []
    for rows in list(EpochBatches(6, 2, seed=0, epoch=0))[:2]:
        items = [datasets["train"][i] for i in rows]
        noisy, clean = (torch.stack([it[k] for it in items]) for k in ("noisy", "clean"))
        out = student(noisy)
        with torch.no_grad():
            target = teacher(noisy)
        norms.append((_norm(_neg_si_snr(out, clean), params), _norm(((out - target) ** 2).mean(), params)))
    return norms


def _teacher_and_config(tmp_path, **balance):
    torch.manual_seed(5)
    teacher = models.build("dccrn", "tiny-teacher").eval().requires_grad_(False)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pt")
    cfg = load(BASE, {"kd": {"method": "logits-mse", "balance_batches": 2, "balance_ratio": 0.5, **balance},
                      "teacher": {"family": "dccrn", "preset": "tiny-teacher",
                                  "checkpoint": str(tmp_path / "teacher.pt")}})
    return teacher, cfg


def test_balance_sets_the_weight_so_the_measured_gradient_ratio_is_the_target(tmp_path):
    teacher, cfg = _teacher_and_config(tmp_path, balance="grad")
    datasets = synthetic(6, 0.25)
    trainer = Trainer(cfg, tmp_path / "run", datasets=datasets)
    initial = copy.deepcopy(trainer.student.state_dict())
    history = trainer.fit()
    weight = trainer.distiller.weight
    assert weight != 1.0

    # The same two batches through a fresh copy of the initial student, with the losses written here.
    norms = _first_batch_norms(initial, teacher, datasets)
    se_norm, kd_norm = np.mean(norms, axis=0)
    assert weight * kd_norm / se_norm == pytest.approx(0.5, rel=1e-4)
    # The history's gradient ratio is measured on the first batch of the epoch (the initial weights here).
    record = history[0]
    assert record["kd_weight"] == weight
    assert record["grad_se_norm"] == pytest.approx(norms[0][0], rel=1e-4)
    assert record["grad_kd_norm"] == pytest.approx(norms[0][1], rel=1e-4)
    assert record["grad_ratio"] == pytest.approx(weight * norms[0][1] / norms[0][0], rel=1e-4)
    # The weight is in the checkpoint, and a resumed trainer uses it instead of measuring again.
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["kd_weight"] == weight
    resumed = Trainer(cfg, tmp_path / "run", datasets=datasets)
    assert resumed.distiller.weight == weight


def test_balance_at_measures_the_student_after_that_many_steps_at_kd_weight(tmp_path):
    """kd.balance_at: 2 trains two steps with kd.weight = 1, then sets the weight from the gradients of
    the student as it is then: the student of a run that stops after those two steps."""
    datasets = synthetic(6, 0.25)
    teacher, plain = _teacher_and_config(tmp_path, balance="none")
    stopped = Trainer(load(plain, {"optim.max_steps": 2}), tmp_path / "two-steps", datasets=datasets)
    stopped.fit()
    _, cfg = _teacher_and_config(tmp_path, balance="grad", balance_at=2)
    trainer = Trainer(cfg, tmp_path / "run", datasets=datasets)
    history = trainer.fit()
    se_norm, kd_norm = np.mean(_first_batch_norms(stopped.student.state_dict(), teacher, datasets), axis=0)
    assert trainer.distiller.weight * kd_norm / se_norm == pytest.approx(0.5, rel=1e-4)
    assert history[0]["kd_weight"] == trainer.distiller.weight != 1.0
    assert "kd.balance: grad at step 2" in (tmp_path / "run" / "train.log").read_text()


def test_runs_without_kd_log_no_gradient_ratio(tmp_path):
    history = Trainer(load(BASE), tmp_path / "run", datasets=synthetic(4, 0.25)).fit()
    assert not {"kd_weight", "grad_ratio", "grad_se_norm"} & set(history[0])


def test_normalised_logits_mse_divides_by_the_teachers_energy_and_ignores_its_gain():
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 4000), torch.randn(2, 4000)
    s, t = student.double().numpy(), teacher.double().numpy()
    reference = np.mean(((s - t) ** 2).mean(-1) / (t ** 2).mean(-1))
    term = kd.LogitKD("mse", normalise=True)
    assert float(term(student, teacher)[0]) == pytest.approx(reference, rel=1e-5)
    assert float(term(7 * student, 7 * teacher)[0]) == pytest.approx(reference, rel=1e-5)
    distiller = kd.build("logits-mse", teacher=torch.nn.Identity(), options={"normalise": True})
    assert distiller(student, teacher, None, teacher)[1]["kd"] == pytest.approx(reference, rel=1e-5)
    with pytest.raises(ValueError, match="normalise is for logits-mse only"):
        kd.LogitKD("spec", normalise=True)


def test_a_checkpoint_written_before_the_balance_and_cache_keys_existed_still_resumes(tmp_path):
    cfg = load(BASE, {"optim.epochs": 2})
    trainer = Trainer(cfg, tmp_path / "run", datasets=synthetic(4, 0.25))
    trainer.fit()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    del state["config"]["role"], state["kd_weight"]
    for key in ("balance", "balance_batches", "balance_ratio", "balance_at"):
        del state["config"]["kd"][key]
    torch.save(state, tmp_path / "run" / "last.pt")
    resumed = Trainer(load(BASE, {"optim.epochs": 3}), tmp_path / "run", datasets=synthetic(4, 0.25))
    assert resumed.epoch == 2 and resumed.distiller.weight == 1.0
    with pytest.raises(ValueError, match="kd.balance differ"):
        Trainer(load(BASE, {"optim.epochs": 3, "kd.balance": "grad"}), tmp_path / "run",
                datasets=synthetic(4, 0.25))

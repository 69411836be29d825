"""The Trainer: exact resume after SIGKILL, divergence errors, checkpoints, frozen teacher, test()."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from selib import models
from selib.config import load
from selib.data import build_embedded, get_dataset
from selib.cli import main
from selib.train import EpochBatches, Trainer, TrainingDiverged, progress_enabled, run

from runner import synthetic
import reference  # tests/helpers: independent numpy references

HELPER = Path(__file__).parent / "helpers" / "runner.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SELIB_PROGRESS": "0"}
# In-process tests pass their own SyntheticPairs; the others read a small embedded corpus.
BASE = {"seed": 0, "data": {"segment_seconds": 0.25, "batch_size": 4},
        "model": {"family": "convtasnet", "preset": "tiny-student"},
        "optim": {"epochs": 4, "checkpoint_every": 3}, "eval": {"metrics": ["si_sdr"], "workers": 1}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("corpus") / "embedded"
    return str(build_embedded(root, n_train=24, n_valid=2, n_test=2, workers=1, verbose=False))


def _config(tmp_path: Path, corpus: str) -> Path:
    return load(BASE, {"data.root": corpus}).dump(tmp_path / "config.yaml")


def _train(config: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), str(config), str(run_dir), *extra], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_epoch_batches_are_a_function_of_seed_and_epoch_sharded_over_ranks_and_resumable():
    full = list(EpochBatches(10, 4, seed=0, epoch=0))
    assert len(full) == 2 and all(len(b) == 4 for b in full)              # the incomplete batch is dropped
    assert len(set(sum(full, []))) == 8 and set(sum(full, [])) <= set(range(10))
    assert full == list(EpochBatches(10, 4, seed=0, epoch=0))
    assert full != list(EpochBatches(10, 4, seed=0, epoch=1)) != list(EpochBatches(10, 4, seed=1, epoch=0))
    ranks = [list(EpochBatches(10, 4, seed=0, epoch=0, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == full                       # rank slices make the global batch
    assert list(EpochBatches(10, 4, seed=0, epoch=0, start=1)) == full[1:]


def test_progress_bars_are_off_in_ci_and_follow_selib_progress(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("SELIB_PROGRESS", raising=False)
    assert not progress_enabled()
    monkeypatch.setenv("SELIB_PROGRESS", "1")
    assert progress_enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("SELIB_PROGRESS", "0")
    assert not progress_enabled()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, corpus):
    config = _config(tmp_path, corpus)    # 24 items / batch 4 = 6 batches per epoch, 4 epochs, ckpt every 3
    straight = _train(config, tmp_path / "straight")
    killed_dir = tmp_path / "killed"
    victim = _train(config, killed_dir, "--delay", "0.04")
    last, seen = killed_dir / "last.pt", None
    deadline = time.monotonic() + 120
    while victim.poll() is None and time.monotonic() < deadline:
        if last.is_file():
            seen = _ckpt(last)
            if seen["step"] >= 9 and seen["batch"] == 3:     # mid-epoch, epoch 2 or later
                victim.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    assert victim.wait(timeout=60) == -signal.SIGKILL, victim.stdout.read()
    resumed_from = _ckpt(last)
    assert resumed_from["batch"] == 3 and 0 < resumed_from["step"] < 24
    resume = _train(config, killed_dir)
    out = resume.communicate(timeout=600)[0]     # generous: a loaded 2-core machine takes minutes
    assert resume.returncode == 0, out
    assert f"resumed from {last}: epoch {resumed_from['epoch'] + 1}, batch 3" in out
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    a, b = _ckpt(tmp_path / "straight" / "last.pt"), _ckpt(last)
    assert a["step"] == b["step"] == 24
    assert a["model"].keys() == b["model"].keys()
    diff = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    assert diff <= 1e-7
    assert [h["valid_si_sdr"] for h in a["history"]] == [h["valid_si_sdr"] for h in b["history"]]
    assert a["history"][-1]["valid_si_sdr"] > a["history"][0]["valid_si_sdr"]     # it learns


def test_checkpoints_load_with_weights_only_and_hold_the_contract_keys(tmp_path):
    cfg = load(BASE, {"optim.epochs": 1, "optim.scheduler": "plateau", "optim.max_steps": 4, "optim.amp": "bf16"})
    trainer = Trainer(cfg, tmp_path / "run", datasets=synthetic(24, 0.25))
    assert trainer.amp_dtype is None and not trainer.scaler.is_enabled()    # AMP is for CUDA only
    history = trainer.fit()
    assert len(history) == 1 and history[0]["step"] == 4      # max_steps stops mid-epoch
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "kd", "rng", "epoch", "step", "config"} <= state.keys()
        assert state["step"] == 4 and state["config"] == cfg.to_dict()
    rebuilt = models.build("convtasnet", "tiny-student")
    rebuilt.load_state_dict(state["model"])
    assert all(torch.equal(p, q) for p, q in zip(rebuilt.state_dict().values(),
                                                 trainer.student.state_dict().values()))
    assert load(tmp_path / "run" / "config.yaml") == cfg
    # A second fit() on the finished run resumes and has nothing left to do.
    again = Trainer(cfg, tmp_path / "run", datasets=synthetic(24, 0.25))
    assert again.fit() == history and again.step == 4


@pytest.mark.slow
def test_compiled_training_matches_eager_and_keeps_the_checkpoint_keys(tmp_path):
    """optim.compile (torch.compile through Module.compile): the same steps as eager, up to the
    rounding of fused kernels, and a checkpoint that an uncompiled model loads."""
    cfg = load(BASE, {"optim.epochs": 1, "optim.max_steps": 3, "optim.checkpoint_every": 0})
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(load(cfg, {"optim.compile": compiled}), tmp_path / f"compile-{compiled}",
                          datasets=synthetic(12, 0.25))
        runs[compiled] = (trainer.fit(), torch.load(trainer.run.last, weights_only=True)["model"])
    (eager_history, eager), (compiled_history, compiled) = runs[False], runs[True]
    assert compiled.keys() == eager.keys()                # no "_orig_mod." prefix: plain models load it
    models.build("convtasnet", "tiny-student").load_state_dict(compiled)
    assert compiled_history[0]["train_loss"] == pytest.approx(eager_history[0]["train_loss"], abs=1e-3)
    assert max(float((compiled[k] - eager[k]).abs().max()) for k in eager) < 1e-4


@pytest.mark.parametrize("scheduler, lrs", [
    ("step", [1e-3, 5e-4]),                                  # gamma 0.5 after every epoch
    ("cosine", [5e-4, 0.0]),                                 # lr0 (1 + cos(pi t / 4)) / 2 after t = 2, 4 steps
])
def test_schedulers_follow_their_formulas(tmp_path, scheduler, lrs):
    cfg = load(BASE, {"optim.epochs": 2, "optim.scheduler": scheduler})
    history = Trainer(cfg, tmp_path / "run", datasets=synthetic(8, 0.25)).fit()    # 2 steps per epoch
    assert [h["lr"] for h in history] == pytest.approx(lrs, abs=1e-12)


def test_command_line_reports_config_errors_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {scheduler: cosin}\n")
    assert main(["train", str(bad), "--run-dir", str(tmp_path / "run")]) == 2     # the exit code of selib train
    err = capsys.readouterr().err
    assert err.startswith(f"selib train: error: {bad}: optim.scheduler = 'cosin' is not valid") and "plateau" in err


def test_resuming_with_another_config_is_refused(tmp_path):
    Trainer(load(BASE, {"optim.max_steps": 1}), tmp_path / "run", datasets=synthetic(8, 0.25)).fit()
    with pytest.raises(ValueError, match=r"optim\.lr differ.*new --run-dir"):
        Trainer(load(BASE, {"optim.lr": 0.1}), tmp_path / "run", datasets=synthetic(8, 0.25))


def test_nan_input_stops_training_naming_the_step_and_the_last_checkpoint(tmp_path):
    # 8 items / batch 4 = 2 steps per epoch; from epoch 2 on every noisy item holds a NaN sample.
    sets = synthetic(8, 0.25, nan_epoch=1)
    trainer = Trainer(load(BASE, {"optim.checkpoint_every": 0}), tmp_path / "run", datasets=sets)
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    last = tmp_path / "run" / "last.pt"
    assert "at step 3 (epoch 2, batch 1)" in str(err.value)
    assert f"the last good checkpoint is {last} (step 2)" in str(err.value)
    assert "stopped: the loss is nan at step 3" in (tmp_path / "run" / "train.log").read_text()
    assert torch.isfinite(torch.cat([v.flatten() for v in _ckpt(last)["model"].values()])).all()


def test_huge_learning_rate_stops_training_with_a_clear_error(tmp_path):
    cfg = load(BASE, {"optim.lr": 1e30, "optim.grad_clip": None, "optim.checkpoint_every": 1})
    with pytest.raises(TrainingDiverged, match=r"(loss is nan at step \d+|NaN/Inf after step \d+).*"
                                               r"last good checkpoint is .*last\.pt \(step \d+\)"):
        Trainer(cfg, tmp_path / "run", datasets=synthetic(16, 0.25)).fit()


def test_teacher_stays_frozen_during_distillation(tmp_path):
    teacher = models.build("convtasnet", "tiny-teacher")
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pt")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = load(BASE, {"kd.method": "dfkd", "optim.epochs": 1, "data.batch_size": 2,
                      "teacher": {"family": "convtasnet", "preset": "tiny-teacher",
                                  "checkpoint": str(tmp_path / "teacher.pt")}})
    trainer = Trainer(cfg, tmp_path / "run", datasets=synthetic(6, 0.25))
    student_before = [p.detach().clone() for p in trainer.student.parameters()]
    history = trainer.fit()
    assert trainer.teacher is not None and not trainer.teacher.training
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    assert all(torch.equal(before[k], v.cpu()) for k, v in trainer.teacher.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, trainer.student.parameters()))
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in trainer.teacher.parameters()}
    record = history[-1]
    assert record["train_loss"] == pytest.approx(record["train_se"] + record["train_kd"], rel=1e-6)
    assert sum(record["split_hz_hist"]) > 0 and 0 <= record["split_hz_q50"] <= 8000


def test_run_writes_the_run_folder_and_test_scores_the_best_checkpoint(tmp_path, corpus):
    cfg = load(BASE, {"optim.epochs": 2, "eval.metrics": ["si_sdr", "stoi"], "data.root": corpus,
                      "data.train_limit": 8})
    run_dir = tmp_path / "run"
    result = run(cfg, run_dir)
    for name in ("config.yaml", "train.log", "history.json", "last.pt", "best.pt", "metrics.json",
                 "scores.csv"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(result))
    best = _ckpt(run_dir / "best.pt")
    model = models.build("convtasnet", "tiny-student")
    model.load_state_dict(best["model"])
    model.eval()
    test_set = [get_dataset("embedded", "test", root=corpus)[i] for i in range(2)]
    with torch.no_grad():
        scores = [reference.si_sdr(model(item["noisy"][None])[0].numpy().astype(np.float64),
                          item["clean"].numpy().astype(np.float64)) for item in test_set]
    assert result["summary"]["si_sdr"]["mean"] == pytest.approx(np.mean(scores), abs=1e-3)
    with open(run_dir / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [item["id"] for item in test_set]
    assert result["checkpoint"]["valid_si_sdr"] == max(h["valid_si_sdr"] for h in result["history"])
    assert "epoch 2/2" in (run_dir / "train.log").read_text()
    with open("/proc/self/status") as f:   # the kernel's own record of this process's peak (VmHWM, kB)
        high_water_mib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    assert 0 < result["timing"]["process_peak_rss_mib"] <= high_water_mib

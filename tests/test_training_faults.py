"""Training faults on disk: a truncated or damaged last.pt on resume, untrusted or mismatched teacher
checkpoints, and the one training command line (``selib train`` = ``python -m selib train``)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from selib.checkpoints import CheckpointError
from selib.config import load
from selib.data import load_manifest
from selib.train import Trainer

from bad_input import ENV, REPO, assert_one_line_error, flip_byte, run_selib, write_checkpoint, write_corpus
from runner import synthetic

BASE = {"seed": 0, "data": {"segment_seconds": 0.25, "batch_size": 4},
        "model": {"family": "convtasnet", "preset": "tiny-student"},
        "optim": {"epochs": 1, "max_steps": 2, "checkpoint_every": 0}, "eval": {"metrics": ["si_sdr"], "workers": 1}}


# The module fixtures build real corpora and runs: one worker builds them once (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("training_faults")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run folder with last.pt and best.pt after two steps."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    Trainer(load(BASE), run_dir, datasets=synthetic(8, 0.25)).fit()
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    target.mkdir()
    for name in ("last.pt", "best.pt", "config.yaml"):
        (target / name).write_bytes((run_dir / name).read_bytes())
    return target


def test_truncated_last_pt_is_named_with_the_fix(finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as err:
        Trainer(load(BASE), run_dir, datasets=synthetic(8, 0.25))
    assert str(err.value) == (f"{last}: not a selib checkpoint (not a complete torch zip file: truncated, a legacy "
                              f"torch format or another kind of file); delete it to start this run again, or "
                              f"copy {run_dir / 'best.pt'} over it to resume from the best epoch.")


def test_damaged_last_pt_is_refused_then_resuming_from_best_works(finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    flip_byte(run_dir / "last.pt", (run_dir / "last.pt").stat().st_size // 3)
    with pytest.raises(CheckpointError, match="last.pt: (the checkpoint is damaged|not a selib checkpoint)"):
        Trainer(load(BASE), run_dir, datasets=synthetic(8, 0.25))
    (run_dir / "last.pt").write_bytes((run_dir / "best.pt").read_bytes())     # the advised fix
    assert Trainer(load(BASE), run_dir, datasets=synthetic(8, 0.25)).step == 2


def _kd_config(teacher: Path, family: str = "convtasnet", preset: str = "tiny-teacher") -> dict:
    return load({**BASE, "kd": {"method": "logits-mse"},
                 "teacher": {"family": family, "preset": preset, "checkpoint": str(teacher)}})


def test_untrusted_teacher_checkpoint_is_one_line_and_never_runs(tmp_path):
    marker, teacher = tmp_path / "pwned", tmp_path / "teacher.pt"

    class Payload:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    torch.save({"model": Payload()}, teacher)
    with pytest.raises(CheckpointError, match=r"teacher\.pt: not a trusted selib checkpoint.*fix teacher\.checkpoint"):
        Trainer(_kd_config(teacher), tmp_path / "run", datasets=synthetic(8, 0.25))
    assert not marker.exists()


def test_teacher_of_another_family_is_one_line(tmp_path):
    teacher = write_checkpoint(tmp_path / "teacher.pt", "dccrn", "tiny-teacher")
    with pytest.raises(CheckpointError) as err:
        Trainer(_kd_config(teacher), tmp_path / "run", datasets=synthetic(8, 0.25))
    assert str(err.value).startswith(f"{teacher}: holds a dccrn 'tiny-teacher' model, not the convtasnet "
                                     "'tiny-teacher' model asked for")


@pytest.mark.parametrize("workers", [1, 2])   # the test split's scores cross into worker processes with two
def test_selib_train_scores_the_test_split_past_a_damaged_file(tmp_path, workers):
    corpus = write_corpus(tmp_path / "embedded")
    damaged = corpus / load_manifest(corpus)["splits"]["test"][1]["noisy"]
    flip_byte(damaged, 2000)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**BASE, "data": {**BASE["data"], "root": str(corpus), "batch_size": 1},
                                      "model": {"family": "dccrn", "preset": "tiny-student"}}))
    out = run_selib("train", config, "--run-dir", tmp_path / "run", "--set", f"eval.workers={workers}")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())["summary"]["si_sdr"]
    assert summary["statuses"] == {"ok": 2, "unreadable": 1} and summary["n_total"] == 3
    with open(tmp_path / "run" / "scores.csv") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    assert rows["test_0001"]["si_sdr_status"] == "unreadable"
    assert str(damaged) in rows["test_0001"]["si_sdr_reason"]


def test_selib_train_and_python_m_selib_train_behave_identically(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("optim: {lr: .inf}\n")
    script = Path(sys.executable).with_name("selib")      # the installed console script
    outs = [subprocess.run([script, "train", config, "--run-dir", tmp_path / "run"], capture_output=True,
                           text=True, cwd=REPO, env=ENV, timeout=300),
            run_selib("train", config, "--run-dir", tmp_path / "run")]
    for out in outs:
        assert_one_line_error(out, str(config), "optim.lr = inf is not valid; must be a finite number")
    assert outs[0].stderr == outs[1].stderr and outs[0].stdout == outs[1].stdout
    assert not (tmp_path / "run").exists()

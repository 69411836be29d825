"""The ``selib`` command line, run as a real subprocess (``python -m selib``)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from selib import config, data, train

COMMANDS = ["data", "train", "eval", "enhance", "export", "run", "report", "profile", "quickstart",
            "teachers"]
REPO = Path(__file__).resolve().parents[1]


def selib(*args, cwd=REPO):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "selib", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_help_lists_every_command():
    out = selib("--help")
    assert out.returncode == 0, out.stderr
    for command in COMMANDS:
        assert command in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    out = selib(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: selib {command}")


def test_the_command_line_imports_torch_only_for_the_commands_that_need_it():
    # `selib quickstart --jobs 2` runs torch in its workers only; a parent holding torch too would add
    # ~0.5 GB to the quick start's memory. --jobs 0 is refused before any work starts.
    probe = ("import sys; from selib.cli import main; code = main(['quickstart', '--jobs', '0']); "
             "print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert "--jobs 0: must be at least 1." in out.stderr


def test_bad_config_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {family: dccrn, preset: huge}\n")
    out = selib("train", bad)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "huge" in out.stderr and "tiny-student" in out.stderr  # names the value and the choices


# The module fixtures build real corpora and runs: one worker builds them once (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("cli")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real best.pt from one training step of the smoke teacher on a tiny embedded corpus."""
    root = tmp_path_factory.mktemp("cli")
    corpus = data.build_embedded(root / "embedded", n_train=2, n_valid=1, n_test=1, workers=1)
    run_dir = root / "run"
    cfg = config.load(REPO / "configs/smoke/dccrn-tiny-teacher.yaml",
                      {"data.root": str(corpus), "optim.max_steps": 1})
    train.Trainer(cfg, run_dir).fit()
    return run_dir / "best.pt"


def test_enhance_mixes_down_and_resamples(tmp_path, checkpoint):
    seconds, rate = 0.75, 44100
    t = np.arange(int(seconds * rate)) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.1 * np.random.default_rng(0).standard_normal(t.size)], 1)
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, stereo, rate)
    out = selib("enhance", "--checkpoint", checkpoint, src, dst, "--mix-down")
    assert out.returncode == 0, out.stderr
    info = sf.info(str(dst))
    assert info.samplerate == 16000 and info.channels == 1
    assert info.frames == round(seconds * 16000)


def test_enhance_stream_writes_the_offline_result(tmp_path, checkpoint):
    src = tmp_path / "in.wav"
    sf.write(src, 0.1 * np.random.default_rng(1).standard_normal(12_345), 16000)
    outputs = {}
    for mode in ("offline", "stream"):
        dst = tmp_path / f"{mode}.wav"
        out = selib("enhance", "--checkpoint", checkpoint, src, dst, *(["--stream"] if mode == "stream" else []))
        assert out.returncode == 0, out.stderr
        outputs[mode] = sf.read(dst, dtype="int16")[0]
    assert outputs["stream"].shape == (12_345,)
    assert np.abs(outputs["stream"].astype(int) - outputs["offline"]).max() <= 1  # one PCM step


def test_train_dry_run_projects_and_writes_nothing(tmp_path, checkpoint):
    corpus = checkpoint.parents[1] / "embedded"
    run_dir = tmp_path / "run"
    out = selib("train", REPO / "configs/smoke/dccrn-tiny-teacher.yaml", "--dry-run", "--run-dir", run_dir,
                "--set", f"data.root={corpus}", "--set", "data.batch_size=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "per training step" in out.stdout and "min per epoch" in out.stdout and "h for the run" in out.stdout
    assert not run_dir.exists() and list(tmp_path.iterdir()) == []  # nothing trained, nothing written


@pytest.mark.slow
def test_export_writes_torch_export_and_onnx_files(tmp_path, checkpoint):
    out = selib("export", checkpoint, "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "student.pt2").is_file() and (tmp_path / "student.onnx").is_file()
    diffs = [float(word) for line in out.stdout.splitlines() if line.startswith("max |")
             for word in line.replace(",", " ").split() if word[0].isdigit() and "e" in word]
    assert len(diffs) == 4 and max(diffs) < 1e-4  # two formats x two lengths


def test_enhance_stereo_without_mix_down_fails_clearly(tmp_path, checkpoint):
    src = tmp_path / "stereo.wav"
    sf.write(src, np.zeros((16000, 2)) + 0.1, 16000)
    out = selib("enhance", "--checkpoint", checkpoint, src, tmp_path / "out.wav")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert str(src) in out.stderr and "--mix-down" in out.stderr
    assert not (tmp_path / "out.wav").exists()


def test_enhance_bad_file_fails_clearly(tmp_path, checkpoint):
    src = tmp_path / "not-audio.wav"
    src.write_text("this is text, not a RIFF header")
    out = selib("enhance", "--checkpoint", checkpoint, src, tmp_path / "out.wav")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert str(src) in out.stderr


def test_eval_scores_a_split(tmp_path, checkpoint):
    out = selib("eval", checkpoint, "--split", "test", "--metrics", "si_sdr", "--workers", "1",
                "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "si_sdr" in out.stdout
    with open(tmp_path / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["si_sdr_status"] == "ok"
    assert f"{float(rows[0]['si_sdr']):.3f}" in out.stdout      # the mean of one utterance is its score


def test_missing_checkpoint_is_a_clean_error(tmp_path):
    out = selib("eval", tmp_path / "nowhere.pt")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "nowhere.pt" in out.stderr

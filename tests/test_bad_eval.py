"""``selib enhance`` and ``selib eval`` (real subprocesses) on bad input: the input as its own output,
a full disk, a model that outputs NaN, unknown metrics, a damaged corpus file; and the chunked
overlap-add behind them (selib.inference), checked against a whole-file pass."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from selib.audio import AudioError
from selib.data import load_manifest
from selib.evaluation import enhance_and_score
from selib.inference import ModelOutputError, enhance

from bad_input import (NOT_FILES, assert_one_line_error, flip_byte, limit_file_size, not_a_file, run_selib,
                       write_checkpoint, write_corpus, write_speech_like)


# The module fixtures build real corpora and runs: one worker builds them once (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("bad_eval")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "embedded")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, corpus):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt",
                            data={"root": str(corpus)}, eval={"metrics": ["si_sdr"], "workers": 1})


def test_enhance_refuses_to_overwrite_its_input(tmp_path, checkpoint):
    noisy = write_speech_like(tmp_path / "in.wav")
    before = noisy.read_bytes()
    out = run_selib("enhance", "--checkpoint", checkpoint, noisy, noisy)
    assert_one_line_error(out, str(noisy), "is the input file itself", "--overwrite")
    assert noisy.read_bytes() == before


def test_enhance_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, checkpoint):
    noisy = write_speech_like(tmp_path / "in.wav", seconds=2.0)          # 64 kB out, limit 20 kB
    target = tmp_path / "out" / "enhanced.wav"
    target.parent.mkdir()
    out = run_selib("enhance", "--checkpoint", checkpoint, noisy, target, preexec_fn=limit_file_size(20_000))
    assert_one_line_error(out, f"{target}: File too large; the file system refused the file's size")
    assert list(target.parent.iterdir()) == []


def test_a_model_that_outputs_nan_is_reported_as_the_model_fault(tmp_path):
    broken = write_checkpoint(tmp_path / "broken.pt", nan=True)
    noisy = write_speech_like(tmp_path / "in.wav")
    out = run_selib("enhance", "--checkpoint", broken, noisy, tmp_path / "out.wav")
    assert_one_line_error(out, f"{broken}: the model output holds", "NaN/Inf", "retrain it or use another "
                          "checkpoint", f"input {noisy}; nothing was written")
    assert not (tmp_path / "out.wav").exists()


def test_enhance_blames_an_absurdly_loud_input_not_the_checkpoint(tmp_path, checkpoint):
    noisy = tmp_path / "loud.wav"
    sf.write(noisy, 1e20 * np.sin(np.arange(16000) / 10), 16000, subtype="FLOAT")   # finite in float32
    out = run_selib("enhance", "--checkpoint", checkpoint, noisy, tmp_path / "out.wav")
    line = assert_one_line_error(out, f"{noisy}: peak level 1e+20 is 400 dB above full scale",
                                 "rescale it to [-1, 1]")
    assert "retrain" not in line and str(checkpoint) not in line and not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("kind", NOT_FILES)
def test_enhance_names_a_folder_fifo_or_device_input_as_such(tmp_path, checkpoint, kind):
    source = not_a_file(tmp_path, kind)          # a FIFO that selib opened would hang the command
    out = run_selib("enhance", "--checkpoint", checkpoint, source, tmp_path / "out.wav")
    assert_one_line_error(out, f"{source}: is {NOT_FILES[kind]}, not a regular file; give the path of an "
                          "audio file")
    assert not (tmp_path / "out.wav").exists()


def test_eval_validates_metrics_before_any_work(tmp_path, checkpoint):
    out = run_selib("eval", checkpoint, "--metrics", "si_sdr", "pesq_wbb", "--out", tmp_path / "eval")
    assert_one_line_error(out, "unknown metrics ['pesq_wbb']", "choose from pesq_wb, pesq_nb")
    assert not (tmp_path / "eval").exists()


# Scores cross into worker processes with more than one worker, so every bad-input evaluation runs with both.
WORKERS = [1, 2]


@pytest.mark.parametrize("workers", WORKERS)
def test_eval_scores_the_rest_past_a_damaged_file(tmp_path, corpus, checkpoint, workers):
    damaged = shutil.copytree(corpus, tmp_path / "embedded")
    item = load_manifest(damaged)["splits"]["test"][1]
    flip_byte(damaged / item["noisy"], 2000)
    out = run_selib("eval", checkpoint, "--root", damaged, "--metrics", "si_sdr", "--workers", workers,
                    "--out", tmp_path / "eval")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "1 utterance(s) not scored (first: test_0001)" in out.stderr and "si_sdr" in out.stdout
    with open(tmp_path / "eval" / "scores.csv") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    assert [rows[k]["si_sdr_status"] for k in ("test_0000", "test_0001", "test_0002")] == ["ok", "unreadable", "ok"]
    assert "SHA-256 differs from the corpus manifest" in rows["test_0001"]["si_sdr_reason"]
    assert str(damaged / item["noisy"]) in rows["test_0001"]["si_sdr_reason"]
    # selib data verify finds the same file, and only it.
    verify = run_selib("data", "verify", "--root", damaged)
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    assert verify.stdout.splitlines()[0] == f"{damaged / item['noisy']}: SHA-256 differs from the manifest (the file changed)"
    assert f"{damaged}: 14 of 15 files match the manifest; rebuild the corpus" in verify.stdout


@pytest.mark.parametrize("workers", WORKERS)
def test_eval_of_a_nan_checkpoint_reports_every_utterance_and_writes_its_files(tmp_path, corpus, workers):
    broken = write_checkpoint(tmp_path / "broken.pt", nan=True, data={"root": str(corpus)},
                              eval={"metrics": ["si_sdr"]})
    out = run_selib("eval", broken, "--workers", workers, "--out", tmp_path / "eval")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "3 utterance(s) not scored (first: test_0000); their reasons are in scores.csv" in out.stderr
    with open(tmp_path / "eval" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["si_sdr_status"] for row in rows] == ["nonfinite_output"] * 3
    assert all("NaN/Inf" in row["si_sdr_reason"] and "retrain it" in row["si_sdr_reason"] for row in rows)
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())["summary"]["si_sdr"]
    assert summary["n_ok"] == 0 and summary["statuses"] == {"nonfinite_output": 3}


class _Dilated(nn.Module):
    """A non-causal convolutional model whose output depends on input within ±292 samples."""

    sample_rate = 16000

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(*[nn.Conv1d(1 if d == 1 else 4, 4, 9, dilation=d, padding=4 * d)
                                      for d in (1, 8, 64)], nn.Conv1d(4, 1, 1))

    def forward(self, x):
        return torch.tanh(self.layers(x[:, None]))[:, 0]


def test_chunked_overlap_add_equals_one_whole_file_pass():
    model = _Dilated().eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(16000 * 5 + 777) * 0.1).float()
    with torch.no_grad():
        whole = model(x[None])[0]
    chunked = enhance(model, x, chunk_seconds=1.0, overlap_seconds=0.5)   # 11 chunks, 2048 samples context
    assert chunked.shape == x.shape
    assert (chunked - whole).abs().max() < 1e-4
    hard_cuts = enhance(model, x, chunk_seconds=1.0, overlap_seconds=0.0)  # no context: edges differ
    assert (hard_cuts - whole).abs().max() > 1e-3


class _OneBadFile(torch.utils.data.Dataset):
    """Three utterances; the second cannot be read, the third makes the model below output NaN."""

    def __len__(self):
        return 3

    def item_id(self, i):
        return f"u{i}"

    def __getitem__(self, i):
        if i == 1:
            raise AudioError("/data/u1.wav: cannot be read as audio (damaged); rebuild the corpus")
        t = torch.arange(8000) / 16000
        clean = 0.3 * torch.sin(2 * torch.pi * 200 * t)
        return {"id": f"u{i}", "noisy": clean * (10.0 if i == 2 else 1.0) + 0.01, "clean": clean}


class _NanAboveOne(nn.Module):
    sample_rate = 16000

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.where(x.abs().amax() > 1, torch.full_like(x, float("nan")), self.gain * x)


@pytest.mark.parametrize("workers", WORKERS)
def test_enhance_and_score_gives_each_failure_a_status_and_scores_the_rest(workers):
    result, timing = enhance_and_score(_NanAboveOne(), _OneBadFile(), ["si_sdr"], workers=workers)
    rows = {row["id"]: row for row in result.rows}
    assert [rows[u]["si_sdr_status"] for u in ("u0", "u1", "u2")] == ["ok", "unreadable", "nonfinite_output"]
    assert rows["u1"]["si_sdr_reason"] == "/data/u1.wav: cannot be read as audio (damaged); rebuild the corpus"
    assert "NaN/Inf" in rows["u2"]["si_sdr_reason"]
    assert result.summary["si_sdr"]["n_ok"] == 1 and result.summary["si_sdr"]["n_total"] == 3
    assert timing["audio_seconds"] == pytest.approx(0.5)
    with pytest.raises(ModelOutputError):
        enhance(_NanAboveOne(), torch.full((100,), 2.0))

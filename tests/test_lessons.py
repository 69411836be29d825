"""The lesson helpers (selib.course.lessons): set-up, the course teacher or its stand-in, and the scratch/KD pair,
with real small training runs on a tiny embedded corpus."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from selib import data, models, train
from selib.course import lessons
from selib.config import load
import reference  # tests/helpers: independent numpy references

REPO = Path(__file__).resolve().parents[1]
# Every run of this module: a few steps on half-second segments, scored with SI-SDR only.
SMALL = {"data.train_limit": 4, "data.valid_limit": 1, "data.test_limit": 2, "data.batch_size": 2,
         "data.segment_seconds": 0.5, "optim.epochs": 1, "eval.metrics": ["si_sdr"]}
pytestmark = pytest.mark.xdist_group("lessons")


@pytest.fixture(scope="module")
def budget(tmp_path_factory):
    """The overrides that shrink the lesson budgets onto a tiny corpus of this module's own."""
    corpus = data.build_embedded(tmp_path_factory.mktemp("corpus") / "embedded", seed=0,
                                 n_train=4, n_valid=1, n_test=2, workers=1)
    return {**SMALL, "data.root": str(corpus)}


@pytest.fixture(scope="module")
def stand_in(budget, tmp_path_factory):
    """course_teacher() without a shipped teacher: it trains the stand-in into runs_dir."""
    root = tmp_path_factory.mktemp("stand-in")
    cwd, printed = os.getcwd(), io.StringIO()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(printed):
            model, checkpoint = lessons.course_teacher("dpdcrn", teachers_dir=root / "teachers",
                                                       runs_dir=root / "runs", overrides=budget)
    finally:
        os.chdir(cwd)
    return model, checkpoint, root, printed.getvalue()


def test_setup_moves_to_the_repository_root(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.delenv("SELIB_PROGRESS", raising=False)
    threads = torch.get_num_threads()
    try:
        assert lessons.setup(threads=1) == tmp_path.resolve()
        assert Path.cwd() == tmp_path.resolve() and torch.get_num_threads() == 1
        assert os.environ["SELIB_PROGRESS"] == "0"
    finally:
        torch.set_num_threads(threads)


def test_setup_outside_a_repository_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no pyproject.toml"):
        lessons.setup()


def test_missing_teacher_trains_a_stand_in_and_says_so(stand_in):
    model, checkpoint, root, printed = stand_in
    assert printed.startswith(f"NOTE: {root / 'teachers' / 'dpdcrn-tiny-teacher.pt'} is missing")
    assert "(a stand-in for the course teacher)" in printed
    assert checkpoint == root / "runs" / "dpdcrn-teacher" / "best.pt" and checkpoint.is_file()
    assert (model.family, model.preset) == ("dpdcrn", "tiny-teacher")
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_shipped_teacher_is_loaded_as_it_is(stand_in, tmp_path, monkeypatch, capsys):
    trained = stand_in[1]
    shipped = tmp_path / "teachers" / "dpdcrn-tiny-teacher.pt"
    shipped.parent.mkdir()
    shutil.copy(trained, shipped)
    monkeypatch.chdir(REPO)
    model, checkpoint = lessons.course_teacher("dpdcrn", teachers_dir=tmp_path / "teachers",
                                               runs_dir=tmp_path / "runs")
    out = capsys.readouterr().out
    assert checkpoint == shipped and "(the course teacher)" in out and "NOTE" not in out
    assert not (tmp_path / "runs").exists()                       # nothing was trained
    reference = models.build("dpdcrn", "tiny-teacher").eval()     # the weights, loaded independently
    reference.load_state_dict(torch.load(shipped, map_location="cpu", weights_only=True)["model"])
    noisy = torch.randn(1, 8000) * 0.05
    with torch.no_grad():
        assert torch.equal(model(noisy), reference(noisy))


def test_a_family_without_teacher_or_budget_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(FileNotFoundError, match="make teachers"):
        lessons.course_teacher("convtasnet", teachers_dir=tmp_path)


def test_kd_student_needs_a_teacher(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match="needs teacher_checkpoint"):
        lessons.student_config("dpdcrn", "dfkd")


def test_scratch_and_kd_students_share_the_budget(stand_in, budget, tmp_path, monkeypatch):
    teacher_checkpoint = stand_in[1]
    monkeypatch.chdir(REPO)
    runs = tmp_path / "runs"
    results = lessons.train_scratch_and_kd("dpdcrn", "logits-sisnr", teacher_checkpoint, weight=0.5,
                                           overrides=budget, runs_dir=runs)
    scratch, kd = results["scratch"], results["kd"]
    assert scratch["config"]["kd"]["method"] == "none" and scratch["config"]["teacher"] is None
    assert {k: kd["config"]["kd"][k] for k in ("method", "weight", "options")} == \
        {"method": "logits-sisnr", "weight": 0.5, "options": {}}
    assert kd["config"]["teacher"]["checkpoint"] == str(teacher_checkpoint)
    assert scratch["config"]["data"] == kd["config"]["data"] and scratch["config"]["optim"] == kd["config"]["optim"]
    assert scratch["checkpoint"]["step"] == kd["checkpoint"]["step"] == 2
    assert "train_kd" in kd["history"][-1] and "train_kd" not in scratch["history"][-1]

    # The scratch student is exactly the Trainer's run of the lesson budget, trained independently.
    reference = train.Trainer(load(REPO / "configs/lessons/dpdcrn-student.yaml",
                                   {**budget, "name": "lesson-dpdcrn-scratch"}), tmp_path / "reference")
    reference.fit()
    mine = torch.load(runs / "dpdcrn-scratch" / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(mine[k], v) for k, v in reference.student.state_dict().items())

    # A second call reads the finished runs back: nothing is trained or tested again.
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/*") if p.suffix in (".pt", ".json", ".csv")}
    again = lessons.train_scratch_and_kd("dpdcrn", "logits-sisnr", teacher_checkpoint, weight=0.5,
                                         overrides=budget, runs_dir=runs)
    assert again == results
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_test_summary_scores_the_noisy_input_and_a_model(budget, stand_in, capsys):
    config = load(REPO / "configs/lessons/dpdcrn-student.yaml", budget)
    items = list(data.get_dataset("embedded", "test", root=budget["data.root"], limit=2))
    noisy = lessons.test_summary(None, config)
    expected = np.mean([reference.si_sdr(it["noisy"].double().numpy(), it["clean"].double().numpy()) for it in items])
    assert noisy["si_sdr"]["n_total"] == 2 and noisy["si_sdr"]["mean"] == pytest.approx(expected, abs=1e-3)
    teacher = stand_in[0]
    with torch.no_grad():
        outputs = [teacher(it["noisy"][None])[0].double().numpy() for it in items]
    expected = np.mean([reference.si_sdr(out, it["clean"].double().numpy()) for out, it in zip(outputs, items)])
    scored = lessons.test_summary(teacher, config)
    assert scored["si_sdr"]["mean"] == pytest.approx(expected, abs=1e-3)
    lessons.print_summaries({"noisy input": noisy, "teacher": scored})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["test", "(2", "utt.)", "si_sdr"]
    assert lines[2].split() == ["teacher", f"{scored['si_sdr']['mean']:.3f}"]


def test_listen_plays_and_returns_each_models_output_on_one_utterance(budget, stand_in, monkeypatch):
    import matplotlib
    from IPython.display import HTML

    matplotlib.use("Agg")
    config = load(REPO / "configs/lessons/dpdcrn-student.yaml", budget)
    teacher, checkpoint = stand_in[0], stand_in[1]
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)     # what a notebook would render
    waves = lessons.listen({"teacher": teacher, "from checkpoint": checkpoint}, config, index=1)
    item = data.get_dataset("embedded", "test", root=budget["data.root"], limit=2)[1]
    with torch.no_grad():
        expected = teacher(item["noisy"][None])[0].numpy()
    assert list(waves) == ["noisy", "teacher", "from checkpoint", "clean"]
    assert np.array_equal(waves["noisy"], item["noisy"].numpy()) and np.array_equal(waves["clean"], item["clean"].numpy())
    assert np.allclose(waves["teacher"], expected, atol=1e-6) and np.allclose(waves["from checkpoint"], expected, atol=1e-6)
    html = shown[0].data if isinstance(shown[0], HTML) else str(shown[0])
    assert html.count("<audio") == 4 and item["id"] in html
    snr = reference.si_sdr(expected.astype(np.float64), item["clean"].double().numpy())
    assert f"SI-SDR {snr:.1f} dB" in html


def test_audio_row_plays_every_clip_at_one_gain_in_a_wrapping_grid():
    import base64
    import io
    import re

    import soundfile as sf

    quiet, loud = 0.05 * np.sin(np.arange(1600) / 5.0), 0.4 * np.sin(np.arange(1600) / 7.0)
    html = lessons.audio_row({"quiet <student>": quiet, "loud": loud}, 16000, notes={"loud": "SI-SDR 3.0 dB"})
    # One gain for the row: the loudest clip peaks at PEAK and the quiet one keeps its level relative to it.
    assert lessons.common_gain({"a": quiet, "b": loud}) == pytest.approx(lessons.PEAK / np.abs(loud).max())
    played = [sf.read(io.BytesIO(base64.b64decode(b64)))[0] for b64 in re.findall(r"base64,([A-Za-z0-9+/=]+)", html)]
    assert len(played) == 2
    assert np.abs(played[1]).max() == pytest.approx(lessons.PEAK, abs=1e-4)
    assert np.abs(played[0]).max() / np.abs(played[1]).max() == pytest.approx(np.abs(quiet).max() / np.abs(loud).max(), rel=1e-3)
    # Laid out to fit a narrow column: a wrapping grid of cards, players as wide as their card, labels escaped.
    assert "<table" not in html and "display:grid" in html and "auto-fill" in html
    assert html.count("<audio style='width:100%") == 2 and "quiet &lt;student&gt;" in html and "SI-SDR 3.0 dB" in html
    assert lessons.common_gain({"silence": np.zeros(10)}) == 1.0


def test_quickstart_report_missing_or_foreign(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"report.json: the quick start's results are missing; run `make quickstart`"):
        lessons.quickstart_report(tmp_path / "report.json")
    (tmp_path / "report.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(ValueError, match="no paired, bootstrap"):
        lessons.quickstart_report(tmp_path / "report.json")
    report = {"runs": [], "paired": [], "notes": [], "failed": [], "bootstrap": {"n_boot": 10}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert lessons.quickstart_report(tmp_path / "report.json") == report


def test_kd_training_draws_the_parts_and_both_validation_curves():
    import matplotlib

    matplotlib.use("Agg")
    from selib import plots

    scratch = [{"epoch": 1, "step": 10, "train_loss": -1.0, "valid_si_sdr": 3.0},
               {"epoch": 2, "step": 20, "train_loss": -2.0, "valid_si_sdr": 4.0}]
    kd = [{"epoch": e, "step": 10 * e, "train_loss": -e, "train_se": -e - 1.0, "train_kd": 0.5, "train_alpha_enc": 0.3,
           "split_hz_q50": 62.5, "valid_si_sdr": 2.5 + e} for e in (1, 2)]
    parts, valid = plots.kd_training(scratch, kd, label="dfkd")
    assert [line.get_label() for line in parts.get_lines()] == ["train_loss", "train_se", "train_kd"]
    curves = {line.get_label(): line.get_xydata().tolist() for line in valid.get_lines()}
    assert curves == {"scratch": [[10, 3.0], [20, 4.0]], "dfkd": [[10, 3.5], [20, 4.5]]}

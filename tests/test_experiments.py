"""Papermill runs and reports: real notebook executions in subprocesses, read back from the run folders."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml

from selib import checkpoints, data, models, plots, runner
from selib.course import quickstart
from selib.report import report, run_roles

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "configs/smoke/dccrn-tiny-teacher.yaml"
STUDENT = REPO / "configs/smoke/dccrn-tiny-dfkd.yaml"
SMALL = dict(n_train=8, n_valid=2, n_test=2, workers=1)
# One module-scoped set of runs: keep these tests on one xdist worker (make test uses --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("experiments")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The student first (its teacher does not exist yet, so it fails), then the teacher, two seeds."""
    root = tmp_path_factory.mktemp("exp")
    corpus = data.build_embedded(root / "embedded", seed=0, **SMALL)
    runs_root = root / "runs"
    results = runner.run_configs([STUDENT, TEACHER], runs_root, seeds=(0, 1),
                                      overrides={"data.root": str(corpus)})
    return runs_root, results


def test_complete_run_folder(runs):
    runs_root, results = runs
    status = {Path(r["run_dir"]).name: r["status"] for r in results}
    assert status == {"smoke-dccrn-tiny-dfkd-s0": "failed", "smoke-dccrn-tiny-dfkd-s1": "failed",
                      "smoke-dccrn-tiny-teacher-s0": "done", "smoke-dccrn-tiny-teacher-s1": "done"}
    run = runs_root / "smoke-dccrn-tiny-teacher-s1"
    nb = nbformat.read(str(run / "train.ipynb"), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "seed = 1" in injected[0].source
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2                                    # curves and spectrograms
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["name"] == "smoke-dccrn-tiny-teacher" and config["seed"] == 1
    assert config["data"]["root"] == str(runs_root.parent / "embedded")
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, map_location="cpu", weights_only=True)
        assert state["config"]["seed"] == 1
        model = models.build("dccrn", "tiny-teacher")
        model.load_state_dict(state["model"])
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == SMALL["n_test"]
    assert metrics["summary"]["si_sdr"]["mean"] == pytest.approx(np.mean([float(r["si_sdr"]) for r in rows]))
    assert "test: si_sdr" in (run / "train.log").read_text()
    assert "Executing notebook" in (run / "papermill.log").read_text()


def test_failure_is_reported_with_its_log(runs):
    runs_root, _ = runs
    run = runs_root / "smoke-dccrn-tiny-dfkd-s1"
    failed = (run / "FAILED").read_text()
    missing = runs_root / "smoke-dccrn-tiny-teacher-s1" / "best.pt"
    assert failed.startswith("reason: FileNotFoundError: teacher checkpoint")
    assert str(missing) in failed                    # mapped from runs/... onto runs_root
    log = Path(failed.split("log: ")[1].splitlines()[0])
    assert log == run / "papermill.log" and str(missing) in log.read_text()
    assert (run / "train.ipynb").is_file() and not (run / "metrics.json").exists()


def test_finished_runs_are_skipped_and_failed_ones_retried(runs):
    runs_root, _ = runs
    corpus = runs_root.parent / "embedded"
    before = (runs_root / "smoke-dccrn-tiny-teacher-s0" / "metrics.json").stat().st_mtime_ns
    again = runner.run_configs([TEACHER, STUDENT], runs_root, seeds=(0,),
                                    overrides={"data.root": str(corpus), "optim.max_steps": 1})
    assert [r["status"] for r in again] == ["skipped", "done"]   # the teacher now exists
    assert (runs_root / "smoke-dccrn-tiny-teacher-s0" / "metrics.json").stat().st_mtime_ns == before
    assert not (runs_root / "smoke-dccrn-tiny-dfkd-s0" / "FAILED").exists()


def test_report_from_run_folders(runs, tmp_path):
    runs_root, _ = runs
    table = report(runs_root, tmp_path)
    teacher = next(r for r in table if r["name"] == "smoke-dccrn-tiny-teacher")
    assert teacher["seeds"] == 2 and teacher["kd"] == "none" and teacher["role"] == "teacher"
    assert teacher["params"] == sum(p.numel() for p in models.build("dccrn", "tiny-teacher").parameters())
    for metric in ("si_sdr", "stoi"):
        values = [json.loads((runs_root / f"smoke-dccrn-tiny-teacher-s{s}" / "metrics.json").read_text())
                  ["summary"][metric]["mean"] for s in (0, 1)]
        assert teacher[f"{metric}_mean"] == pytest.approx(np.mean(values))
        assert teacher[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
    markdown = (tmp_path / "report.md").read_text()
    mean, std = teacher["si_sdr_mean"], teacher["si_sdr_std"]
    assert f"{mean:.3f} ± {std:.3f}" in markdown
    failed = markdown.split("## Failed or unfinished runs")[1]
    assert "smoke-dccrn-tiny-dfkd-s1" in failed and "teacher checkpoint" in failed
    with open(tmp_path / "report.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["smoke-dccrn-tiny-teacher"]["si_sdr_mean"]) == pytest.approx(mean)
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_in_process_runs_leave_the_files_papermill_runs_leave(runs):
    """One executor, two ways to run: the same run files on success, and on failure a FAILED whose
    reason names the missing teacher and whose log holds the traceback."""
    runs_root, _ = runs
    other = runs_root.parent / "in-process"
    overrides = {"data.root": str(runs_root.parent / "embedded")}
    results = [runner.run_one(config, 1, other, overrides, via="process") for config in (STUDENT, TEACHER)]
    assert [r["status"] for r in results] == ["failed", "done"]
    papermill_only = {"params.yaml", "train.ipynb", "papermill.log"}
    for name in ("smoke-dccrn-tiny-teacher-s1", "smoke-dccrn-tiny-dfkd-s1"):
        by_papermill = {p.name for p in (runs_root / name).iterdir()} - papermill_only
        in_process = {p.name for p in (other / name).iterdir()} - {"error.log"}
        assert in_process == by_papermill, name
    failed = (other / "smoke-dccrn-tiny-dfkd-s1" / "FAILED").read_text()
    assert failed.startswith("reason: FileNotFoundError: teacher checkpoint")
    assert "Traceback" in Path(failed.split("log: ")[1].splitlines()[0]).read_text()
    again = runner.run_one(TEACHER, 1, other, overrides, via="process")
    assert again["status"] == "skipped"


def test_roles_are_inferred_from_teacher_pointers_without_role_keys(tmp_path):
    """A teacher without ``role:`` is recognised because a KD run points into its folder; a run
    nobody points at stays a scratch student, whatever the order of the folders."""
    from selib.config import load

    teacher_dir, scratch_dir, kd_dir = (tmp_path / n for n in ("big-s0", "small-s0", "small-kd-s0"))
    teacher = load(TEACHER, {"name": "big", "role": None})
    scratch = load(TEACHER, {"name": "small", "role": None, "model.preset": "tiny-student"})
    kd = load(STUDENT, {"name": "small-kd", "teacher.checkpoint": str(teacher_dir / "best.pt")})
    roles = run_roles({kd_dir: kd, scratch_dir: scratch, teacher_dir: teacher})
    assert roles == {teacher_dir: "teacher", scratch_dir: "scratch", kd_dir: "kd"}
    assert run_roles({teacher_dir: teacher, scratch_dir: scratch})[teacher_dir] == "scratch"


def test_plots_draw_on_given_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wav = torch.sin(2 * torch.pi * 500 * torch.arange(8192) / 16000)
    fig, axes = plt.subplots(1, 4)
    ax = plots.spectrogram(wav, ax=axes[0])
    image = ax.images[0].get_array()
    assert image.shape == (257, 8192 // 128 + 1)
    assert np.unravel_index(np.argmax(image), image.shape)[0] == 16          # 500 Hz / 31.25 Hz
    line = plots.split_overlay(wav, torch.full((65,), 16), ax=axes[1]).lines[0]
    assert np.allclose(line.get_ydata(), 0.5)                                # bin 16 = 0.5 kHz
    with pytest.raises(ValueError, match="64 split bins for a waveform of 65"):
        plots.split_overlay(wav, torch.zeros(64), ax=axes[1])
    heat = plots.calibration_heatmap(torch.tensor([[0.2, 0.8], [0.5, 0.5]]), ax=axes[2])
    assert [t.get_text() for t in heat.texts] == ["0.20", "0.80", "0.50", "0.50"]
    curves = plots.training_curves([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}], ax=axes[3])
    assert list(curves.lines[0].get_ydata()) == [2.0, 1.0]
    plt.close(fig)


def test_quickstart_scores_the_shipped_teacher_and_pairs_each_kd_student_with_its_scratch_seed(tmp_path):
    from selib.course import teachers

    corpus = data.build_embedded(tmp_path / "embedded", n_train=4, n_valid=2, n_test=3, workers=1, verbose=False)
    small = {"device": "cpu", "data": {"root": str(corpus), "segment_seconds": 0.5, "batch_size": 2,
                                       "valid_limit": 2, "test_limit": 3},
             "optim": {"epochs": 1, "max_steps": 2, "checkpoint_every": 0},
             "eval": {"metrics": ["si_sdr"], "workers": 1}}
    teacher_config = tmp_path / "tiny-teacher.yaml"
    teacher_config.write_text(yaml.safe_dump({**small, "name": "tiny-teacher", "role": "teacher",
                                              "model": {"family": "dccrn", "preset": "tiny-teacher"}}))
    shipped = tmp_path / "teachers"
    teachers.ship(teacher_config, shipped, tmp_path / "teacher-runs")
    course = tmp_path / "course"
    course.mkdir()
    student = {**small, "model": {"family": "dccrn", "preset": "tiny-student"}}
    (course / "scratch.yaml").write_text(yaml.safe_dump({**student, "name": "scratch"}))
    (course / "logits.yaml").write_text(yaml.safe_dump({
        **student, "name": "logits", "kd": {"method": "logits-sisnr"},
        "teacher": {"family": "dccrn", "preset": "tiny-teacher", "cache": True,
                    "checkpoint": str(shipped / "tiny-teacher.pt")}}))
    runs_root, results = tmp_path / "runs", tmp_path / "results"
    quickstart.quickstart(runs_root, seeds=(0, 1), data_root=corpus, configs_dir=course, results=results, jobs=2)

    # The shipped teacher is scored, not trained again; every student trained for both seeds.
    assert (runs_root / "tiny-teacher-s0" / "metrics.json").is_file()
    assert not (runs_root / "tiny-teacher-s0" / "last.pt").exists()
    assert sorted(p.name for p in results.glob("report*")) == sorted(p.name for p in runs_root.glob("report*"))
    # the first seed's students are shipped as model-only checkpoints that rebuild the trained weights
    assert sorted(p.name for p in (results / "models").iterdir()) == ["logits-s0.pt", "scratch-s0.pt"]
    shipped_model, shipped_config = checkpoints.load_model(results / "models" / "logits-s0.pt")
    trained = torch.load(runs_root / "logits-s0" / "best.pt", weights_only=True)
    assert set(torch.load(results / "models" / "logits-s0.pt", weights_only=True)) == {"model", "config", "step"}
    assert shipped_config["kd"]["method"] == "logits-sisnr"
    assert all(torch.equal(shipped_model.state_dict()[k], v) for k, v in trained["model"].items())
    written = json.loads((results / "report.json").read_text())
    rows = [r for r in written["paired"] if r["metric"] == "si_sdr" and r["snr_db"] == "all"]
    assert len(rows) == 1 and rows[0]["teacher"] == "tiny-teacher" and rows[0]["n_seeds"] == 2

    def scores(run):
        with open(runs_root / run / "scores.csv", newline="") as handle:
            return {r["id"]: float(r["si_sdr"]) for r in csv.DictReader(handle)}

    diffs = [k - s for seed in (0, 1) for k, s in zip(scores(f"logits-s{seed}").values(),
                                                     scores(f"scratch-s{seed}").values())]
    assert rows[0]["diff_mean"] == pytest.approx(np.mean(diffs), abs=1e-9)
    assert rows[0]["diff_low"] <= rows[0]["diff_mean"] <= rows[0]["diff_high"]


def test_quickstart_plan_keeps_the_costliest_runs_and_the_runs_sharing_a_teacher_cache_apart():
    course = sorted(quickstart.COURSE_CONFIGS.glob("*.yaml"))
    students, checkpoints = quickstart._plan((course, (0, 1, 2), {}))
    order = [(cfg["name"], cfg["seed"]) for cfg in students]
    assert sorted(order) == sorted((path.stem, seed) for path in course for seed in (0, 1, 2))
    i2s = [i for i, (name, _) in enumerate(order) if name == "dpdcrn-tiny-i2s"]
    assert len(i2s) == 3 and min(b - a for a, b in zip(i2s, i2s[1:])) == len(course)

    def cache(cfg):
        teacher = cfg["teacher"]
        return (teacher["checkpoint"], cfg["seed"]) if teacher and teacher["cache"] else None

    assert all(cache(a) is None or cache(a) != cache(b) for a, b in zip(students, students[1:]))
    assert [c.name for c in checkpoints] == ["dccrn-tiny-teacher.pt", "dpdcrn-tiny-teacher.pt"]

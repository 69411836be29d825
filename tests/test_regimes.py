"""Regime grids (selib/course/regimes.py, regimes_summary.py): expansion, a killed grid that resumes (a real
``selib regimes`` process on the smoke grid), steps-to-quality and the aggregation's intervals."""
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

from selib.cli import main
from selib.course.regimes import expand, load_grid
from selib.course.regimes_summary import cell_summary, quality_steps, steps_to_quality
from selib.stats import paired_bootstrap

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "regimes" / "smoke.yaml"
SMOKE_SET = {"data.train_limit": 4, "data.batch_size": 2, "data.valid_limit": 2, "data.test_limit": 3,
             "data.segment_seconds": 0.25, "eval.metrics": ["si_sdr"], "eval.workers": 1}


def test_smoke_grid_expands_to_its_runs(tmp_path):
    plan = expand(load_grid(SMOKE), tmp_path, {"data.root": "/corpus"})
    students = [f"dccrn_budget-{c}_{m}-s{s}" for s in (0, 1) for c in ("s2", "s4") for m in ("scratch", "logits")]
    assert sorted(plan.runs) == sorted(students + ["dccrn_budget-s2_logits-teacher-s0"])
    teacher = {"family": "dccrn", "preset": "tiny-teacher", "checkpoint": "teachers/dccrn-tiny-teacher.pt", "cache": True}
    run = plan.runs["dccrn_budget-s4_logits-s1"]
    assert run.kind == "kd" and run.folder == str(tmp_path / "dccrn_budget-s4_logits-s1")
    assert run.overrides == {**SMOKE_SET, "teacher": teacher, "optim.max_steps": 4, "kd.method": "logits-sisnr",
                             "kd.weight": 1.0, "data.root": "/corpus",
                             "teacher.cache_dir": str(tmp_path / ".teacher-cache"),
                             "name": "dccrn_budget-s4_logits", "seed": 1}
    assert plan.runs["dccrn_budget-s2_scratch-s0"].overrides == {
        **SMOKE_SET, "optim.max_steps": 2, "data.root": "/corpus", "name": "dccrn_budget-s2_scratch", "seed": 0}
    judge = plan.runs["dccrn_budget-s2_logits-teacher-s0"]     # one teacher scoring: both cells test alike
    assert (judge.kind, judge.checkpoint) == ("teacher-test", "teachers/dccrn-tiny-teacher.pt")
    assert judge.overrides["model"] == {"family": "dccrn", "preset": "tiny-teacher", "overrides": {}}
    assert len(plan.pairs) == 4 and {p["teacher"] for p in plan.pairs} == {"dccrn_budget-s2_logits-teacher-s0"}
    assert plan.pairs[-1] == {"family": "dccrn", "axis": "budget", "cell": "s4", "method": "logits", "seed": 1,
                              "kd": "dccrn_budget-s4_logits-s1", "scratch": "dccrn_budget-s4_scratch-s1",
                              "teacher": "dccrn_budget-s2_logits-teacher-s0"}


GRID = """
name: g
seeds: [3]
families:
  dccrn:
    base: configs/course/dccrn-tiny-scratch.yaml
    teacher: {family: dccrn, preset: tiny-teacher, checkpoint: teachers/dccrn-tiny-teacher.pt}
    methods: {dfkd: {kd.weight: 1.5}}
teachers:
  dccrn-early: {base: configs/teachers/dccrn-tiny-teacher.yaml, set: {optim.max_steps: 30}}
methods:
  dfkd: {kd.method: dfkd, kd.weight: 1.0}
axes:
  quality:
    cells:
      converged: {}
      early: {kd_only: {teacher.checkpoint: "{teachers}/{family}-early-s0/best.pt"}}
  adapt:
    cells:
      room: {test: {name: embedded-room, root: R}, kd_only: {data.transfer: {name: embedded-room, split: train}}}
      narrow: {dccrn: {model.overrides: {rnn_units: 16}}, optim.max_steps: 7}
"""


def test_cells_apply_kd_only_family_test_and_teacher_overrides(tmp_path):
    (tmp_path / "g.yaml").write_text(GRID)
    plan = expand(load_grid(tmp_path / "g.yaml"), tmp_path / "runs")
    early = plan.runs["dccrn-early-s0"]
    assert (early.kind, early.folder) == ("teacher", str(tmp_path / "runs/teachers/dccrn-early-s0"))
    assert early.overrides == {"optim.max_steps": 30, "name": "dccrn-early", "seed": 0}
    kd = plan.runs["dccrn_quality-early_dfkd-s3"].overrides
    assert kd["teacher.checkpoint"] == str(tmp_path / "runs/teachers/dccrn-early-s0/best.pt") and kd["kd.weight"] == 1.5
    # the scratch students of both quality cells are one run; the converged KD run and its teacher too
    assert "dccrn_quality-early_scratch-s3" not in plan.runs
    pairs = {(p["axis"], p["cell"]): p for p in plan.pairs}
    assert pairs["quality", "early"]["scratch"] == pairs["quality", "converged"]["scratch"] == \
        "dccrn_quality-converged_scratch-s3" != pairs["adapt", "room"]["scratch"]
    assert plan.runs[pairs["quality", "early"]["teacher"]].checkpoint.endswith("dccrn-early-s0/best.pt")
    room = plan.runs["dccrn_adapt-room_dfkd-s3"]
    assert room.test == {"name": "embedded-room", "root": "R"} and room.overrides["data.transfer"]["name"] == "embedded-room"
    assert plan.runs["dccrn_adapt-room_scratch-s3"].test == room.test and "data.transfer" not in \
        plan.runs["dccrn_adapt-room_scratch-s3"].overrides
    assert plan.runs[pairs["adapt", "room"]["teacher"]].test == room.test
    narrow = plan.runs["dccrn_adapt-narrow_scratch-s3"].overrides
    assert narrow["model.overrides"] == {"rnn_units": 16} and narrow["optim.max_steps"] == 7


@pytest.mark.parametrize("text, named", [
    ("seeds: [a]", "seeds"),
    ("axes: {a: {cells: {x: {}}}}\nfamilies: {f: {base: configs/nope.yaml, teacher: {}}}", "'configs/nope.yaml'"),
    (GRID.replace("methods: {dfkd: {kd.weight: 1.5}}", "methods: {dfkx: {}}"), "['dfkx'] not defined"),
    (GRID.replace("converged: {}", "con_verged: {}"), "'con_verged'"),
    (GRID.replace("optim.max_steps: 7", "optim.max_stepz: 7"), "axes.adapt.cells.narrow (dccrn)"),
])
def test_bad_grid_is_one_line_naming_file_and_value(tmp_path, capsys, text, named):
    grid = tmp_path / "bad.yaml"
    grid.write_text(text)
    assert main(["regimes", str(grid), "--summary-only", "--runs-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(grid) in err and named in err


def test_steps_to_quality_is_the_first_validation_at_the_target():
    history = [{"step": 10, "valid_si_sdr": 1.0}, {"step": 20, "valid_si_sdr": None},
               {"step": 30, "valid_si_sdr": 2.5}, {"step": 40, "valid_si_sdr": 2.4}]
    assert steps_to_quality(history, 2.0) == 30 and steps_to_quality(history, 2.5) == 30
    assert steps_to_quality(history, 1.0) == 10 and steps_to_quality(history, 2.6) is None
    scratch = [{"step": 10, "valid_si_sdr": 1.0}, {"step": 20, "valid_si_sdr": 2.0}, {"step": 40, "valid_si_sdr": 1.5}]
    fast = [{"step": 10, "valid_si_sdr": 2.1}, {"step": 40, "valid_si_sdr": 3.0}]
    result = quality_steps([(fast, scratch), (history, scratch)])
    assert [s["kd_steps"] for s in result["per_seed"]] == [10, 30] and result["reached"] == 2
    assert result["ratio"]["mean"] == pytest.approx((10 / 20 + 30 / 20) / 2)
    assert result["ratio"]["low"] == pytest.approx(0.5) and result["ratio"]["high"] == pytest.approx(1.5)
    never = quality_steps([(fast, scratch), ([{"step": 40, "valid_si_sdr": 1.9}], scratch)])
    assert never["reached"] == 1 and never["ratio"] is None and never["per_seed"][1]["kd_steps"] is None


def _fake_run(folder: Path, scores: dict[str, float], history: list[dict]) -> str:
    folder.mkdir(parents=True)
    with open(folder / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "si_sdr", "si_sdr_status", "si_sdr_reason"])
        writer.writerows([u, v, "ok", ""] for u, v in scores.items())
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "metrics.json").write_text("{}")
    return folder.name


def test_cell_intervals_are_paired_bootstrap_of_the_score_differences(tmp_path):
    rng = np.random.default_rng(7)
    ids = [f"u{i}" for i in range(6)]
    teacher, scratch = rng.normal(9, 1, 6), rng.normal(5, 2, (3, 6))
    kd = scratch + 0.5 * (teacher - scratch)          # halfway to the teacher on every utterance
    diff, gap = kd - scratch, teacher - scratch
    folders = {"t": tmp_path / "t"}
    _fake_run(folders["t"], dict(zip(ids, teacher)), [])
    pairs = []
    for s in range(3):
        curve = [{"step": 5, "valid_si_sdr": 1.0 + s}, {"step": 10, "valid_si_sdr": 2.0 + s}]
        folders[f"k{s}"], folders[f"s{s}"] = tmp_path / f"k{s}", tmp_path / f"s{s}"
        _fake_run(folders[f"k{s}"], dict(zip(ids, kd[s])), [{**h, "valid_si_sdr": h["valid_si_sdr"] + 0.25 * s}
                                                            for h in curve])
        _fake_run(folders[f"s{s}"], dict(zip(ids, scratch[s])), curve)
        pairs.append({"seed": s, "kd": f"k{s}", "scratch": f"s{s}", "teacher": "t"})
    result = cell_summary(pairs, folders)
    si = result["metrics"]["si_sdr"]
    expected = paired_bootstrap(diff)
    assert si["diff"]["mean"] == pytest.approx(diff.mean(), abs=1e-12)
    assert si["diff"]["low"] == pytest.approx(expected["low"], abs=1e-12)
    assert si["diff"]["high"] == pytest.approx(expected["high"], abs=1e-12)
    assert si["gap"]["mean"] == pytest.approx(gap.mean(), abs=1e-12)
    assert si["gap_closed"]["mean"] == pytest.approx(0.5) and si["gap_closed"]["low"] == pytest.approx(0.5)
    assert si["gap_closed"]["high"] == pytest.approx(0.5)
    assert [r["step"] for r in result["curve"]] == [5, 10]
    assert result["curve"][0]["mean"] == pytest.approx(0.25) and result["curve"][1]["low"] == pytest.approx(0.0)
    assert result["curve"][1]["high"] == pytest.approx(0.5)


def _done(runs: Path) -> dict[Path, float]:
    """Every file of every finished run folder and its modification time."""
    return {f: f.stat().st_mtime_ns for d in runs.iterdir() if (d / "metrics.json").is_file() for f in d.iterdir()}


def _gone(group: int, seconds: float = 60) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_killed_grid_resumes_without_redoing_finished_runs(tmp_path):
    from selib import data

    corpus = data.build_embedded(tmp_path / "embedded", n_train=4, n_valid=2, n_test=3, workers=1, verbose=False)
    runs, results = tmp_path / "runs", tmp_path / "results"
    cmd = [sys.executable, "-m", "selib", "regimes", str(SMOKE), "--runs-root", str(runs), "--results",
           str(results), "--set", f"data.root={corpus}", "--jobs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("[1/9] done"):
            break
    else:
        pytest.fail(f"the grid ended before its first run finished (exit {proc.wait()})")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone(proc.pid), "workers outlived the killed grid"
    finished = _done(runs)
    assert 0 < len({f.parent for f in finished}) < 9
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {f: f.stat().st_mtime_ns for f in finished} == finished
    assert again.stdout.count(" skipped ") == len({f.parent for f in finished})
    assert len({f.parent for f in _done(runs)}) == 9
    summary = json.loads((results / "summary.json").read_text())
    assert summary["grid"]["sha256"] == load_grid(SMOKE)["sha256"]
    assert all(r["status"] == "done" for r in summary["runs"].values())
    assert [len(c["seeds"]) for c in summary["cells"]] == [2, 2]
    assert sorted(p.name for p in (results / "runs" / "dccrn_budget-s4_logits-s1").iterdir()) == \
        ["config.yaml", "history.json", "metrics.json", "scores.csv"]
    assert (results / "map.png").stat().st_size > 0 and (results / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("grid", sorted((REPO / "configs" / "regimes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_grid_expands_into_valid_configs(grid, tmp_path):
    plan = expand(load_grid(grid), tmp_path)      # expansion loads (validates) every run's config
    kinds = {run.kind for run in plan.runs.values()}
    assert {"scratch", "kd"} <= kinds and plan.pairs
    assert all(p["kd"] in plan.runs and p["scratch"] in plan.runs for p in plan.pairs)

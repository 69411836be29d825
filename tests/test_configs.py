"""Every shipped config loads and validates; the course and paper sets are complete and consistent;
every paper config trains one real step at its paper model size (on a tiny embedded corpus; a DNS config
through its VoiceBank twin when the two train alike)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from selib import config, data, models, train

REPO = Path(__file__).resolve().parents[1]
# configs/regimes/ holds grid files, not run configs (tests/test_regimes.py expands them)
CONFIGS = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name != "regimes")
PAPER = sorted((REPO / "configs/paper").glob("*.yaml"))
COURSE = sorted((REPO / "configs/course").glob("*.yaml"))
TEACHERS = sorted((REPO / "configs/teachers").glob("*.yaml"))


def test_configs_exist():
    assert {p.parent.name for p in CONFIGS} == {"smoke", "course", "paper", "teachers", "lessons", "scaling"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_loads_and_names_its_run(path):
    cfg = config.load(path)
    prefix = {"smoke": "smoke-", "lessons": "lesson-"}.get(path.parent.name, "")
    assert cfg.name == prefix + path.stem
    if cfg.teacher is not None:
        checkpoint = Path(cfg.teacher.checkpoint)
        if path.parent.name == "course":
            # Course students distil from a shipped teacher, teachers/<name>.pt of configs/teachers/<name>.yaml.
            assert checkpoint.parent == Path("teachers") and checkpoint.suffix == ".pt"
            teacher_name, teacher_folder = checkpoint.stem, path.parents[1] / "teachers"
        else:
            # The teacher checkpoint is the best.pt of a teacher config of the same folder and model.
            assert checkpoint.name == "best.pt" and checkpoint.parent.name.endswith(f"-s{cfg.seed}")
            teacher_name, teacher_folder = checkpoint.parent.name[: -len(f"-s{cfg.seed}")], path.parent
        teacher = config.load(teacher_folder / f"{teacher_name.removeprefix('smoke-')}.yaml")
        assert teacher.name == teacher_name and teacher.teacher is None
        assert (teacher.model.family, teacher.model.preset) == (cfg.teacher.family, cfg.teacher.preset)


def _kinds(paths):
    return {p.stem for p in paths}


def test_course_set_is_complete():
    expected = {f"dccrn-tiny-{k}" for k in ("scratch", "logits", "dfkd")}
    expected |= {f"dpdcrn-tiny-{k}" for k in ("scratch", "logits", "dfkd", "i2s")}
    assert _kinds(COURSE) == expected
    assert _kinds(TEACHERS) == {"dccrn-tiny-teacher", "dpdcrn-tiny-teacher"}
    for path in COURSE + TEACHERS:
        cfg = config.load(path)
        assert cfg.data.name == "embedded"
        assert cfg.model.preset == ("tiny-teacher" if path.stem.endswith("teacher") else "tiny-student")
        assert cfg.kd.method.startswith("logits-") == path.stem.endswith("logits")
        assert (cfg.role == "teacher") == path.stem.endswith("teacher")


def test_paper_set_is_complete():
    expected = set()
    for ds in ("vb", "dns"):
        for family in ("dccrn", "convtasnet", "dptnet", "dpdcrn"):
            expected |= {f"{ds}-{family}-{k}" for k in ("teacher", "scratch", "logits", "dfkd")}
        expected.add(f"{ds}-dpdcrn-i2s")
    assert _kinds(PAPER) == expected
    for path in PAPER:
        cfg = config.load(path)
        assert cfg.data.name == {"vb": "voicebank", "dns": "dns2020"}[path.stem.split("-")[0]]
        assert cfg.model.preset == ("paper-teacher" if path.stem.endswith("teacher") else "paper-student")


def _one_step(path: Path, corpus: Path, runs: Path) -> dict:
    """One optimiser step of a paper config at its paper model size, on 0.5-s segments; the teacher
    checkpoint of a KD config is the best.pt of its teacher's one-step run."""
    cfg = config.load(path)
    overrides = {"device": "cpu", "data.name": "embedded", "data.root": str(corpus),
                 "data.segment_seconds": 0.5, "data.batch_size": 2 if cfg.kd.method == "i2s-tfckd" else 1,
                 "data.num_workers": 0, "data.train_limit": 2, "data.valid_limit": 1, "data.test_limit": 1,
                 "optim.epochs": 1, "optim.max_steps": 1, "eval.metrics": ["si_sdr"], "eval.workers": 1}
    if cfg.teacher is not None:
        overrides["teacher.checkpoint"] = str(runs / Path(cfg.teacher.checkpoint).parent.name / "best.pt")
    return train.run(path, runs / f"{cfg.name}-s0", overrides=overrides)


def _settings(path: Path) -> dict:
    """What a paper config trains with apart from its dataset and the names of its runs, which the
    one-step test replaces anyway (it trains every config on the embedded corpus)."""
    settings = config.load(path).to_dict()
    settings.pop("name")
    settings["data"].pop("name")
    settings["data"].pop("root")
    if settings["teacher"] is not None:
        settings["teacher"].pop("checkpoint")
    return settings


def _one_step_runs(paths: list[Path]) -> list[Path]:
    """The paper configs a one-step run must train, teachers first: every VoiceBank config, and a DNS
    config only where it differs from its VoiceBank twin (with the teacher it distils from)."""
    voicebank = [p for p in paths if p.stem.startswith("vb-")]
    own = {p for p in paths if p.stem.startswith("dns-") and _settings(p) != _settings(p.with_name("vb" + p.name[3:]))}
    own |= {p.with_name(Path(config.load(p).teacher.checkpoint).parent.name.removesuffix("-s0") + ".yaml")
            for p in list(own) if config.load(p).teacher is not None}
    return sorted(voicebank + sorted(own), key=lambda p: not p.stem.endswith("teacher"))


def test_a_dns_config_that_trains_differently_from_its_voicebank_twin_gets_its_own_run(tmp_path):
    for path in PAPER:
        (tmp_path / path.name).write_text(path.read_text())
    assert not [p for p in _one_step_runs(sorted(tmp_path.glob("*.yaml"))) if p.stem.startswith("dns-")]
    changed = tmp_path / "dns-dccrn-logits.yaml"
    raw = yaml.safe_load(changed.read_text())
    raw["optim"]["lr"] *= 2
    changed.write_text(yaml.safe_dump(raw))
    runs = [p.stem for p in _one_step_runs(sorted(tmp_path.glob("*.yaml")))]
    assert [r for r in runs if r.startswith("dns-")] == ["dns-dccrn-teacher", "dns-dccrn-logits"]
    assert len(runs) == len([p for p in PAPER if p.stem.startswith("vb-")]) + 2


@pytest.mark.slow
@pytest.mark.xdist_group("paper-configs")
def test_paper_configs_train_one_step(tmp_path):
    """Teachers first, then the students they feed. Each run trains the real paper-size model."""
    corpus = data.build_embedded(tmp_path / "embedded", n_train=2, n_valid=1, n_test=1,
                                 min_seconds=0.5, max_seconds=1.0, workers=1)
    for path in _one_step_runs(PAPER):
        result = _one_step(path, corpus, tmp_path / "runs")
        cfg = config.load(path)
        assert result["checkpoint"]["step"] == 1
        assert math.isfinite(result["summary"]["si_sdr"]["mean"])
        state = torch.load(tmp_path / "runs" / f"{cfg.name}-s0" / "best.pt", map_location="cpu",
                           weights_only=True)
        models.build(cfg.model.family, cfg.model.preset).load_state_dict(state["model"])  # paper size
        history = json.loads((tmp_path / "runs" / f"{cfg.name}-s0" / "history.json").read_text())
        assert math.isfinite(history[-1]["train_loss"])

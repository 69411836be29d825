"""The config schema: defaults, overrides, error messages, ``{seed}`` substitution, dump/load round trip."""
from __future__ import annotations

import copy

import pytest
import yaml

from selib import evaluation, kd, losses, models
from selib.config import DEFAULTS, Config, ConfigError, load
from selib.runs import RunDir

TEACHER = {"family": "convtasnet", "preset": "tiny-teacher", "checkpoint": "runs/ctn-teacher-s{seed}/best.pt"}


def _write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_fill_every_key_and_name_the_run():
    cfg = load({})
    expected = copy.deepcopy(DEFAULTS)
    expected["name"] = "dccrn-tiny-student-none"
    assert cfg.to_dict() == expected
    assert cfg.optim.lr == 1e-3 and cfg.data.batch_size == 8 and cfg.teacher is None
    assert RunDir.of(cfg, "runs").path.as_posix() == "runs/dccrn-tiny-student-none-s0"


def test_yaml_file_and_dotted_overrides(tmp_path):
    path = _write(tmp_path, {"name": "x", "model": {"family": "convtasnet", "preset": "tiny-student"},
                             "optim": {"epochs": 3}})
    cfg = load(path, {"optim.epochs": 1, "data.batch_size": 2, "model.overrides.X": 2})
    assert (cfg.optim.epochs, cfg.data.batch_size, cfg.model.overrides) == (1, 2, {"X": 2})
    assert cfg.optim.lr == DEFAULTS["optim"]["lr"]                      # untouched keys keep defaults
    cli = load(path, ["optim.lr=1e-4", "optim.max_steps=null", "eval.metrics=[si_sdr, stoi]"])
    assert (cli.optim.lr, cli.optim.max_steps, cli.eval.metrics) == (1e-4, None, ["si_sdr", "stoi"])


@pytest.mark.parametrize("data, overrides, key, valid", [
    ({"optimm": {}}, None, "'optimm'", "data, device, eval, kd, loss, model, name, optim, role, seed, teacher"),
    ({"optim": {"schedulr": "cosine"}}, None, "'optim.schedulr'", "amp, checkpoint_every, compile, epochs"),
    ({}, {"data.batchsize": 4}, "'data.batchsize'", "batch_size, name, num_workers"),
    ({"kd": {"method": "dfkd"}, "teacher": {**TEACHER, "path": "x"}}, None, "'teacher.path'",
     "checkpoint, family, overrides, preset"),
])
def test_unknown_keys_name_the_file_the_key_and_the_valid_keys(tmp_path, data, overrides, key, valid):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load(path, overrides)
    message = str(err.value)
    assert message.startswith(path) and f"unknown key {key}" in message and valid in message


@pytest.mark.parametrize("key, value, listed", [
    ("optim.scheduler", "cosin", "none, cosine, step, plateau"),
    ("optim.name", "sgd", "adam, adamw"),
    ("optim.amp", "fp8", "auto, off, bf16, fp16"),
    ("data.name", "timit", "embedded, embedded-room, voicebank, dns2020"),
    ("model.family", "unet", ", ".join(sorted(models.FAMILIES))),
    ("model.preset", "huge", ", ".join(sorted(models.presets("dccrn")))),
    ("kd.method", "attention", ", ".join(kd.METHODS)),
    ("loss.se", "l1", ", ".join(losses.LOSSES)),
    ("eval.metrics", ["pesq"], ", ".join(evaluation.METRICS)),
    ("optim.lr", -1.0, "must be a number > 0"),
    ("optim.epochs", True, "must be an integer >= 1"),
    ("data.batch_size", 0, "must be an integer >= 1"),
    ("data.segment_seconds", 0, "must be a number > 0"),
    ("optim.grad_clip", "big", "must be a number > 0 or null"),
    ("optim.weight_decay", -0.01, "must be a number >= 0"),
])
def test_bad_values_name_the_file_key_value_and_valid_choices(tmp_path, key, value, listed):
    section, leaf = key.split(".")
    path = _write(tmp_path, {section: {leaf: value}})
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(path) and f"{key} = {value!r} is not valid" in message and listed in message


def test_teacher_checkpoint_seed_substitution_and_kd_teacher_consistency():
    data = {"seed": 3, "model": {"family": "convtasnet", "preset": "tiny-student"}, "kd": {"method": "dfkd"},
            "teacher": TEACHER}
    assert load(data).teacher.checkpoint == "runs/ctn-teacher-s3/best.pt"
    assert load(data, {"seed": 5}).teacher.checkpoint == "runs/ctn-teacher-s5/best.pt"
    assert load(data).teacher.overrides == {}
    with pytest.raises(ConfigError, match="kd.method = 'dfkd' needs a teacher"):
        load(data, ["teacher=null"])
    with pytest.raises(ConfigError, match="teacher is set but kd.method is 'none'"):
        load(data, {"kd.method": "none"})
    with pytest.raises(ConfigError, match=r"teacher.preset = 'paper' is not valid; choose one of: paper-"):
        load(data, {"teacher.preset": "paper"})


def test_dump_and_load_round_trip(tmp_path):
    cfg = load({"seed": 1, "model": {"family": "convtasnet", "preset": "tiny-student", "overrides": {"X": 2}},
                "kd": {"method": "logits-spec", "options": {"n_fft": 256}}, "teacher": TEACHER})
    path = cfg.dump(tmp_path / "out" / "config.yaml")
    again = load(path)
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert type(again.to_dict()["model"]) is dict and isinstance(again.model, Config)
    assert yaml.safe_load(path.read_text())["teacher"]["checkpoint"] == "runs/ctn-teacher-s1/best.pt"


def test_file_and_override_syntax_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: no such config file"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load(bad)
    with pytest.raises(ConfigError, match="optim = 3 must be a mapping"):
        load({"optim": 3})
    with pytest.raises(ConfigError, match="'optim.epochs' is not of the form key=value"):
        load({}, ["optim.epochs"])
    with pytest.raises(AttributeError, match="config has no key 'lr'"):
        load({}).lr

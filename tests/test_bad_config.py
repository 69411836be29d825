"""Bad configs on disk: non-finite numbers, files that are not UTF-8, ``--set`` values that are not
YAML, unknown or wrong-typed model options. Each is a ConfigError naming the file, the key, the value
and the valid choices; through the command line it is one line on stderr and exit status 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from selib.config import ConfigError, load, parse_overrides

from bad_input import assert_one_line_error, run_selib


def _config(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("key,text", [("optim.lr", ".inf"), ("optim.lr", "nan"), ("kd.weight", "-.inf"),
                                      ("data.segment_seconds", ".nan"), ("optim.grad_clip", ".inf"),
                                      ("optim.epochs", ".inf"), ("optim.gamma", "NaN")])
def test_non_finite_numbers_are_rejected_naming_the_key(tmp_path, key, text):
    section, leaf = key.split(".")
    path = _config(tmp_path, f"{section}: {{{leaf}: {text}}}\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key} = ") and "is not valid" in message and "finite number" in message


@pytest.mark.parametrize("section", ["model.overrides", "kd.options"])
def test_non_finite_numbers_in_free_form_sections_are_rejected(tmp_path, section):
    outer, inner = section.split(".")
    leaf = {"model.overrides": "rnn_units", "kd.options": "temperature"}[section]
    path = _config(tmp_path, f"{outer}: {{{inner}: {{{leaf}: .inf}}}}\n")
    with pytest.raises(ConfigError, match=rf"{section}\.{leaf} = inf is not valid; must be a finite number"):
        load(path)


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: d\xe9bruitage\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value) == f"{path}: not UTF-8 text (byte 7 is 0xe9); save the config as UTF-8."


def test_an_override_that_is_not_yaml_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"override 'name=\[unclosed': the value is not valid YAML .*quote"):
        parse_overrides(["name=[unclosed"])


@pytest.mark.parametrize("overrides,message", [
    ({"rnn_unit": 16}, "unknown key 'model.overrides.rnn_unit' for a dccrn model; valid keys: complex_lstm, "
                       "hop_length, kernel_num, kernel_size, masking_mode, n_fft, rnn_layers, rnn_units, win_length"),
    ({"rnn_units": "big"}, "model.overrides.rnn_units = 'big' is not valid; must be an integer"),
    ({"rnn_units": 1.5}, "model.overrides.rnn_units = 1.5 is not valid; must be an integer"),
    ({"complex_lstm": "yes"}, "model.overrides.complex_lstm = 'yes' is not valid; must be true or false"),
    ({"kernel_num": 8}, "model.overrides.kernel_num = 8 is not valid; must be a list like [16, 32"),
    ({"kernel_num": [8, "x"]}, "must be a list of int like [16, 32"),
])
def test_model_overrides_are_checked_against_the_model(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load({"model": {"family": "dccrn", "preset": "tiny-student", "overrides": overrides}})
    assert load({"model": {"family": "dccrn", "overrides": {"rnn_units": 16, "kernel_num": [4, 8]}}})


def test_teacher_overrides_are_checked_too():
    teacher = {"family": "convtasnet", "preset": "tiny-teacher", "checkpoint": "t.pt", "overrides": {"HH": 3}}
    with pytest.raises(ConfigError, match="unknown key 'teacher.overrides.HH' for a convtasnet model"):
        load({"kd": {"method": "logits-mse"}, "teacher": teacher})


def test_command_line_set_with_bad_yaml_is_one_line(tmp_path):
    path = _config(tmp_path, "optim: {epochs: 1}\n")
    out = run_selib("train", path, "--set", "optim.lr=[1e-3", "--run-dir", tmp_path / "run")
    assert_one_line_error(out, "override 'optim.lr=[1e-3': the value is not valid YAML")
    assert not (tmp_path / "run").exists()

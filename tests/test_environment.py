"""The conda/Binder environments pin what pyproject.toml pins; Binder's scripts and the Makefile
targets the README promises are there."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
YMLS = ["environment.yml", "binder/environment.yml"]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", requirement.lower())


def _pins(requirements: list[str]) -> dict[str, str]:
    """``{normalised name: version without +local}`` of every ``name==version`` line."""
    pins = {}
    for req in requirements:
        if req.startswith("-"):
            continue
        name, sep, version = req.partition("==")
        assert sep, f"{req!r} is not pinned with =="
        pins[_name(name.strip())] = version.strip().split("+")[0]
    return pins


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return _pins(project["dependencies"] + project["optional-dependencies"]["dev"])


def _yml(path: str) -> tuple[dict, list[str]]:
    env = yaml.safe_load((ROOT / path).read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, f"{path}: expected one pip: section"
    return env, pip[0]


@pytest.mark.parametrize("path", YMLS)
def test_yml_pins_match_pyproject(path):
    expected = _pyproject_pins()
    assert {"torch", "torchaudio", "pesq", "pytest"} <= set(expected)
    env, pip = _yml(path)
    assert env["name"] == "selib" and env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert {"python=3.11", "pip", "c-compiler"} <= set(conda)
    assert _pins([r for r in pip if r != "-e ."]) == expected


def test_local_env_installs_selib_and_binder_uses_cpu_torch():
    _, local = _yml("environment.yml")
    assert "-e ." in local
    assert not any("+cpu" in r or "index-url" in r for r in local)  # PyPI's CUDA wheels
    _, binder = _yml("binder/environment.yml")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in binder
    assert {"torch==2.11.0+cpu", "torchaudio==2.11.0+cpu"} <= set(binder)


def _commands(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_binder_post_build():
    path = ROOT / "binder" / "postBuild"
    commands = _commands(path)
    assert commands[0].startswith("set -e")
    assert "pip install --no-deps -e ." in commands
    assert commands[-1] == "python -m selib data build"
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_binder_start_caps_threads_and_execs():
    path = ROOT / "binder" / "start"
    assert _commands(path)[-1] == 'exec "$@"'
    assert os.access(path, os.X_OK)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([str(path), "env"], env=env, capture_output=True, text=True, check=True)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert f"{var}=2" in out.stdout.splitlines()


def test_makefile_targets():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", makefile, flags=re.M))
    phony = set(re.search(r"^\.PHONY:(.*)$", makefile, flags=re.M).group(1).split())
    wanted = {"setup", "quickstart", "test", "lab", "notebooks", "bench"}
    assert wanted <= targets
    assert wanted <= phony

"""Shipped teachers match their records: SHA-256 of the checkpoint and validation SI-SDR recomputed here
(numpy reference) on the recorded validation split; `selib teachers` writes pairs that pass that check."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from selib import models
from selib.course import teachers
from selib.data import build_embedded, get_dataset
import reference  # tests/helpers: independent numpy references

REPO = Path(__file__).resolve().parents[1]
TOLERANCE_DB = 1e-3


def check_teachers(folder: Path) -> list[str]:
    """Assert every ``<name>.pt`` has a ``<name>.json`` and the other way round, each checkpoint's
    SHA-256 is recorded, and its validation SI-SDR is the recorded one; returns the names checked."""
    records = {p.stem for p in folder.glob("*.json")}
    checkpoints = {p.stem for p in folder.glob("*.pt")}
    assert records == checkpoints, (f"{folder}: records without a checkpoint {sorted(records - checkpoints)}, "
                                    f"checkpoints without a record {sorted(checkpoints - records)}")
    for name in sorted(records):
        record = json.loads((folder / f"{name}.json").read_text())
        checkpoint = folder / record["checkpoint"]
        assert checkpoint.name == f"{name}.pt"
        assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == record["sha256"], \
            f"{checkpoint}: SHA-256 differs from {name}.json; run `make teachers` again"
        cfg = record["config"]
        model = models.build(cfg["model"]["family"], cfg["model"]["preset"], **cfg["model"]["overrides"])
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
        model.eval()
        data = cfg["data"]
        root = Path(data["root"] or Path("data") / data["name"])
        valid = get_dataset(data["name"], "valid", root=root if root.is_absolute() else REPO / root,
                            limit=data["valid_limit"])
        # The embedded corpus is byte-identical on one CPU family, not across them (data/README.md,
        # "Determinism"): another build is fine if the score still holds, and the message says which it is.
        same_files = record["valid"]["files_sha256"] in (None, teachers.validation_files_sha256(valid))
        with torch.no_grad():
            scores = [reference.si_sdr(model(item["noisy"][None])[0].double().numpy(), item["clean"].double().numpy())
                      for item in (valid[i] for i in range(len(valid)))]
        assert len(scores) == record["valid"]["n_utterances"]
        assert abs(np.mean(scores) - record["valid"]["si_sdr"]) <= TOLERANCE_DB, \
            (f"{name}: validation SI-SDR {np.mean(scores):.4f} dB, recorded {record['valid']['si_sdr']:.4f} dB"
             + ("" if same_files else "; these validation files are not the ones it was measured on: rebuild the "
                                      "corpus (`selib data build`) or retrain it (`make teachers`)"))
    return sorted(records)


def test_shipped_teachers_match_their_records():
    folder = REPO / "teachers"
    if not any(folder.glob("*.pt")) and not any(folder.glob("*.json")):
        pytest.skip("no teacher is shipped in teachers/")
    assert check_teachers(folder)


def test_selib_teachers_writes_a_checkpoint_and_a_record_that_check(tmp_path):
    corpus = build_embedded(tmp_path / "embedded", n_train=4, n_valid=2, n_test=1, workers=1, verbose=False)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny-teacher", "device": "cpu", "model": {"family": "dccrn", "preset": "tiny-teacher"},
        "data": {"root": str(corpus), "segment_seconds": 0.5, "batch_size": 2},
        "optim": {"epochs": 1, "max_steps": 2, "checkpoint_every": 0},
        "eval": {"metrics": ["si_sdr"], "workers": 1}}))
    out = tmp_path / "teachers"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELIB_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-m", "selib", "teachers", str(configs / "tiny.yaml"), "--out", str(out),
                           "--runs-root", str(tmp_path / "runs")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "valid SI-SDR" in done.stdout and (tmp_path / "runs" / "tiny-teacher-s0" / "best.pt").is_file()
    assert check_teachers(out) == ["tiny-teacher"]
    record = json.loads((out / "tiny-teacher.json").read_text())
    assert record["command"].startswith("selib teachers") and record["config"]["name"] == "tiny-teacher"
    # The shipped file is what a student config's teacher.checkpoint loads.
    state = torch.load(out / "tiny-teacher.pt", weights_only=True)
    assert set(state) == {"model", "config", "epoch", "step", "best", "history"}

    wrong = {**record, "valid": {**record["valid"], "si_sdr": record["valid"]["si_sdr"] + 0.01}}
    (out / "tiny-teacher.json").write_text(json.dumps(wrong))
    with pytest.raises(AssertionError, match="validation SI-SDR"):
        check_teachers(out)
    other_build = {**record, "valid": {**record["valid"], "files_sha256": "0" * 64}}
    (out / "tiny-teacher.json").write_text(json.dumps(other_build))
    assert check_teachers(out) == ["tiny-teacher"]          # other validation files, the same score
    other_build["valid"]["si_sdr"] += 0.01
    (out / "tiny-teacher.json").write_text(json.dumps(other_build))
    with pytest.raises(AssertionError, match="not the ones it was measured on"):
        check_teachers(out)
    (out / "tiny-teacher.json").write_text(json.dumps(record))
    tampered = out / "tiny-teacher.pt"
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    with pytest.raises(AssertionError, match="SHA-256 differs"):
        check_teachers(out)
    tampered.unlink()
    with pytest.raises(AssertionError, match="records without a checkpoint"):
        check_teachers(out)

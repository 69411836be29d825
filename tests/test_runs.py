"""The run folder: its name, its status and its failure record, on real files."""
from __future__ import annotations

import json
from pathlib import Path

from selib.config import load
from selib.runs import RunDir, run_name

REPO = Path(__file__).resolve().parents[1]


def test_run_folder_is_named_after_config_and_seed(tmp_path):
    cfg = load(REPO / "configs/smoke/dccrn-tiny-teacher.yaml", {"seed": 3})
    assert RunDir.of(cfg, tmp_path).path == tmp_path / "smoke-dccrn-tiny-teacher-s3"
    assert RunDir.of(cfg, tmp_path).name == run_name(cfg.name, cfg.seed)     # the one naming rule


def test_status_follows_the_files_and_a_retry_clears_the_failure(tmp_path):
    run = RunDir(tmp_path / "x-s0")
    assert not run.is_run() and run.status == "unfinished"
    assert run.failure() == "unfinished (no metrics.json)"
    run.start()
    run.fail("ValueError: bad", run.error_log, notebook=run.notebook)
    assert run.status == "failed" and run.failure() == "ValueError: bad"
    lines = (tmp_path / "x-s0" / "FAILED").read_text().splitlines()
    assert lines == ["reason: ValueError: bad", f"log: {run.error_log}", f"notebook: {run.notebook}"]
    run.start()
    assert run.status == "unfinished"
    (tmp_path / "x-s0" / "metrics.json").write_text(json.dumps({"summary": {}}))
    assert run.status == "done" and run.read_metrics() == {"summary": {}}
    load(REPO / "configs/smoke/dccrn-tiny-teacher.yaml").dump(tmp_path / "x-s0" / "config.yaml")
    assert run.is_run() and run.read_config().name == "smoke-dccrn-tiny-teacher"

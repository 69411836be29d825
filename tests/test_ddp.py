"""The Trainer under ``torchrun`` with 2 CPU processes (gloo): identical ranks, same result as one process.

Conv-TasNet tiny-student uses gLN (no BatchNorm), so the 2-rank run and the single-process run with the
same global batch compute the same averaged gradient up to float32 summation order (relative gradient
difference ~6e-8). Adam amplifies that noise in weights whose gradient is near zero, so the comparison
is made after 4 steps: the weights agree within ``rtol=1e-5, atol=1e-6`` elementwise and 1e-6 in
relative norm (measured: max |diff| 4e-7, relative norm 3e-8). After 8 steps max |diff| grows to ~2e-4.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selib.config import load
from selib.data import build_embedded

HELPER = Path(__file__).parent / "helpers" / "runner.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SELIB_PROGRESS": "0"}
CONFIG = {"seed": 0, "data": {"segment_seconds": 0.25, "batch_size": 4},
          "model": {"family": "convtasnet", "preset": "tiny-student"},
          "optim": {"epochs": 2, "checkpoint_every": 3}, "eval": {"metrics": ["si_sdr"], "workers": 1}}


@pytest.mark.slow
def test_two_process_torchrun_matches_single_process(tmp_path):
    corpus = build_embedded(tmp_path / "embedded", n_train=8, n_valid=2, n_test=2, workers=1, verbose=False)
    config = load(CONFIG, {"data.root": str(corpus)}).dump(tmp_path / "config.yaml")
    # 8 items / global batch 4 = 2 steps per epoch, 4 steps; the checkpoint at step 3 is mid-epoch.
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                            "2", str(HELPER), str(config), str(tmp_path / "ddp"), "--dump-params"],
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = subprocess.run([sys.executable, "-m", "selib", "train", str(config), "--run-dir",
                             str(tmp_path / "single")], env=ENV, capture_output=True, text=True, timeout=300)
    out = ddp.communicate(timeout=300)[0]
    assert ddp.returncode == 0, out
    assert single.returncode == 0, single.stdout + single.stderr

    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"params_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    one_state = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    one = one_state["model"]
    for key in one:
        torch.testing.assert_close(rank0[key], one[key], rtol=1e-5, atol=1e-6)
    flat_ddp, flat_one = (torch.cat([p[k].flatten() for k in one]) for p in (rank0, one))
    assert (flat_ddp - flat_one).norm() <= 1e-6 * flat_one.norm()

    last = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and len(last["rng"]) == 2 and last["step"] == one_state["step"] == 4
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert log.count("epoch 2/2") == 1 and "2 process(es)" in log     # rank 0 alone writes
    for a, b in zip(last["history"], one_state["history"], strict=True):
        assert a["valid_si_sdr"] == pytest.approx(b["valid_si_sdr"], abs=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    # The single run went through `python -m selib train` end to end, test split included.
    metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert metrics["summary"]["si_sdr"]["n_ok"] == 2 and metrics["config"] == load(config).to_dict()

"""The teacher-output cache: exact outputs, sharing across batches, runs and processes, invalidation when
the teacher changes, and a KD run with the cache ending bit-identical to one without it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selib import kd, models
from selib.config import load
from selib.train import Trainer

from runner import synthetic

BATCH, LENGTH = 4, 4000


def _teacher(family: str, path: Path, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    teacher = models.build(family, "tiny-teacher").eval().requires_grad_(False)
    torch.save({"model": teacher.state_dict()}, path)
    return teacher


@pytest.mark.parametrize("family", ["dccrn", "dpdcrn"])
def test_cache_serves_the_teachers_exact_outputs_for_the_same_batch(tmp_path, family):
    teacher = _teacher(family, tmp_path / "teacher.pt")
    noisy = 0.1 * torch.randn(2 * BATCH, LENGTH, generator=torch.Generator().manual_seed(1))
    first, second, mixed = noisy[:BATCH], noisy[BATCH:], noisy[[5, 0, 6, 2]]
    cache = kd.TeacherCache(tmp_path / "teacher.pt", tmp_path / "cache", torch.device("cpu"))
    with torch.no_grad():
        expected = {name: teacher(batch) for name, batch in (("first", first), ("second", second),
                                                              ("mixed", mixed))}
        assert torch.equal(cache(teacher, first), expected["first"])
        assert torch.equal(cache(teacher, second), expected["second"])
        assert (cache.hits, cache.misses) == (0, 2)
        again = kd.TeacherCache(tmp_path / "teacher.pt", tmp_path / "cache", torch.device("cpu"))
        assert torch.equal(again(teacher, second), expected["second"])
        assert torch.equal(again(teacher, first), expected["first"])
        assert (again.hits, again.misses) == (2, 0)                  # served from disk
        # Stored items in another batch are another entry: the teacher runs on that batch.
        assert torch.equal(again(teacher, mixed), expected["mixed"]) and again.misses == 1
        assert torch.equal(again(teacher, first[:2]), teacher(first[:2])) and again.misses == 2
    assert cache.folder.parent.name == kd.cache.file_sha256(tmp_path / "teacher.pt")
    assert len(list(cache.folder.glob("*/*.npy"))) == 4


def test_cache_persists_across_processes_and_is_invalidated_when_the_teacher_changes(tmp_path):
    checkpoint, root = tmp_path / "teacher.pt", tmp_path / "cache"
    first = _teacher("dccrn", checkpoint, seed=0)
    noisy = 0.1 * torch.randn(BATCH, LENGTH, generator=torch.Generator().manual_seed(2))
    torch.save(noisy, tmp_path / "noisy.pt")
    with torch.no_grad():
        old = kd.TeacherCache(checkpoint, root, torch.device("cpu"))
        old(first, noisy)
    # Another process reads the entries the first one wrote.
    script = ("import sys, torch; from selib import kd, models\n"
              "teacher = models.build('dccrn', 'tiny-teacher').eval()\n"
              "teacher.load_state_dict(torch.load(sys.argv[1], weights_only=True)['model'])\n"
              "cache = kd.TeacherCache(sys.argv[1], sys.argv[2], torch.device('cpu'))\n"
              "out = cache(teacher, torch.load(sys.argv[3], weights_only=True))\n"
              "torch.save(out, sys.argv[4]); print(cache.hits, cache.misses)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(checkpoint), str(root), str(tmp_path / "noisy.pt"),
                           str(tmp_path / "out.pt")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0"]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), first(noisy))
    # Other weights at the same path: a new folder, the old entries deleted, the new teacher's outputs.
    second = _teacher("dccrn", checkpoint, seed=1)
    with torch.no_grad():
        new = kd.TeacherCache(checkpoint, root, torch.device("cpu"))
        out = new(second, noisy)
        assert new.misses == 1 and new.hits == 0
        assert torch.equal(out, second(noisy)) and not torch.equal(out, first(noisy))
    assert new.folder != old.folder and not old.folder.exists() and new.folder.is_dir()


BASE = {"seed": 0, "data": {"segment_seconds": 0.25, "batch_size": 2},
        "model": {"family": "dccrn", "preset": "tiny-student"},
        "optim": {"epochs": 2, "checkpoint_every": 0}, "eval": {"metrics": ["si_sdr"], "workers": 1}}


def _fit(tmp_path: Path, name: str, method: str, cache: bool, runs: str = "runs") -> Trainer:
    cfg = load(BASE, {"kd.method": method, "kd.weight": 0.5,
                      "teacher": {"family": "dccrn", "preset": "tiny-teacher", "cache": cache,
                                  "checkpoint": str(tmp_path / "teacher.pt")}})
    trainer = Trainer(cfg, tmp_path / runs / name, datasets=synthetic(6, 0.25))
    trainer.fit()
    return trainer


def test_kd_run_with_the_cache_ends_with_the_same_weights_as_without(tmp_path):
    _teacher("dccrn", tmp_path / "teacher.pt")
    plain = _fit(tmp_path, "plain", "dfkd", cache=False)
    cold = _fit(tmp_path, "cold", "dfkd", cache=True)
    warm = _fit(tmp_path, "warm", "dfkd", cache=True)
    batches = 2 * 3                                                 # 2 epochs of 3 batches
    assert plain.teacher_cache is None and (cold.teacher_cache.misses, cold.teacher_cache.hits) == (batches, 0)
    assert (warm.teacher_cache.hits, warm.teacher_cache.misses) == (batches, 0)
    assert warm.teacher_cache.folder.parents[1] == tmp_path / "runs" / ".teacher-cache"
    for other in (cold, warm):
        state = other.student.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in plain.student.state_dict().items())
        assert [h["train_loss"] for h in other.history] == [h["train_loss"] for h in plain.history]
    # Another method on the same batches reuses the same entries.
    logits = _fit(tmp_path, "logits", "logits-sisnr", cache=True)
    assert (logits.teacher_cache.hits, logits.teacher_cache.misses) == (batches, 0)

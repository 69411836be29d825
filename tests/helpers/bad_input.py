"""Shared by the bad-input tests: the ``selib`` command as a real subprocess, the check that a failure
is one clear line, and small real checkpoints and audio files written to disk."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from selib import config, models
from selib.checkpoints import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SELIB_PROGRESS": "0",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_selib(*args, cwd=REPO, module: str = "selib", preexec_fn=None) -> subprocess.CompletedProcess:
    """``python -m selib ARGS`` (or another ``module``) in a fresh process."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=300, preexec_fn=preexec_fn)


def assert_one_line_error(out: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """The command failed with ``code``, printed exactly one line on stderr, no traceback, and that
    line holds every needle (the file or key it names and the fix it gives)."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_checkpoint(path: Path, family: str = "dccrn", preset: str = "tiny-student", nan: bool = False,
                     **config_sections) -> Path:
    """A selib checkpoint of a freshly initialised model (``nan``: every weight NaN) and its config."""
    torch.manual_seed(0)
    model = models.build(family, preset)
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    cfg = config.load({"model": {"family": family, "preset": preset}, **config_sections})
    return save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1, "step": 1,
                            "best": 0.0, "history": []}, path)


def write_speech_like(path: Path, seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> Path:
    """A harmonic tone with a slow envelope in light noise (16-bit PCM)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wav = sum(0.3 / k * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 6)) * (0.6 + 0.4 * np.sin(3 * t))
    sf.write(path, 0.5 * wav + 0.01 * rng.standard_normal(t.size), rate, subtype="PCM_16")
    return path


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    """Invert the bits of one byte of ``path`` in place (those set in ``mask``: all by default)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


NOT_FILES = {"folder": "a folder", "fifo": "a FIFO (named pipe)", "device": "a character device"}


def not_a_file(tmp_path: Path, kind: str) -> Path:
    """A path that exists but is no regular file: a folder, a FIFO made here, or ``/dev/null``."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe")
    return {"folder": tmp_path, "fifo": tmp_path / "pipe", "device": Path(os.devnull)}[kind]


@contextmanager
def file_size_limit(max_bytes: int):
    """Within the block, the kernel refuses to grow any file of this process beyond ``max_bytes``
    (EFBIG, the error a full disk gives as ENOSPC); SIGXFSZ is ignored so the write fails instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def limit_file_size(max_bytes: int):
    """A ``preexec_fn`` giving a subprocess the limit of :func:`file_size_limit`."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def write_corpus(root: Path, n_test: int = 3, seconds: float = 1.0) -> Path:
    """A small corpus in the embedded layout (``<split>/{noisy,clean,noise}/<id>.wav`` and a
    ``manifest.json`` with each file's SHA-256), without the TTS build: one item in train and valid."""
    import hashlib
    import json

    rng = np.random.default_rng(1)
    splits = {}
    for split, n in (("train", 1), ("valid", 1), ("test", n_test)):
        items = []
        for i in range(n):
            item_id = f"{split}_{i:04d}"
            t = np.arange(int(seconds * 16000)) / 16000
            clean = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) * (0.6 + 0.4 * np.sin(3 * t))
            noise = 0.05 * rng.standard_normal(t.size)
            item = {"id": item_id, "sha256": {}}
            for key, wav in (("noisy", clean + noise), ("clean", clean), ("noise", noise)):
                item[key] = f"{split}/{key}/{item_id}.wav"
                path = root / item[key]
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, wav, 16000, subtype="PCM_16")
                item["sha256"][key] = hashlib.sha256(path.read_bytes()).hexdigest()
            items.append(item)
        splits[split] = items
    (root / "manifest.json").write_text(json.dumps({"format": 1, "sample_rate": 16000, "splits": splits}))
    return root

"""Teacher-output cache for output-level KD (logit baselines, DFKD): lesson ``07_logit_kd``, docs/kd.md.

A frozen teacher gives the same output for the same input, and the training batches are a pure
function of ``(seed, epoch, index)`` (:class:`selib.train.EpochBatches` and the datasets' crops), so
every method and KD weight trained with the same seed sees the same batches and can share one teacher
forward per batch. The cache stores one entry per batch on disk:

    <root>/<teacher checkpoint SHA-256>/<device>-<dtype>-torch<version>/<ab>/<digest>.npy

``digest`` is the SHA-256 of the batch's input samples and shape. That is what the teacher output is a
function of: it changes with the item ids and their order, the crop offsets and lengths and the segment
length, and also when a corpus is rebuilt with other audio under the same ids (which a key built from
ids and offsets alone would miss). A checkpoint with other bytes gets another folder, and the folder of
the weights a checkpoint path held before is deleted, so a changed teacher is never served from old
entries. The device, the dtype and the torch version name a sub-folder, since kernels differ between them.

Exactness: an entry holds the bits of the teacher output (float32, or the autocast dtype) computed on
the very batch the student sees, so a run with the cache ends with bit-identical weights to one
without. Entries are whole batches, not items, because an item computed inside another batch is not
always bit-identical (the tiny DPDCRN teacher differs in about 0.1 % of the samples by one float32 ulp
on 0.25-s crops) and because sharing items across seeds would gain nothing: the crops are drawn per
seed and the course trains one teacher per seed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Bits are stored through an integer view of the same width: numpy has no bfloat16.
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}
SOURCE_FILE = "teacher.json"


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_digest(noisy: torch.Tensor) -> str:
    """SHA-256 of a batch's input samples, dtype and shape: the key of its entry."""
    array = np.ascontiguousarray(noisy.detach().cpu().numpy())
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


class TeacherCache:
    """``cache(teacher, noisy [B, L]) -> teacher(noisy)``, served from disk when the batch is stored.

    ``checkpoint`` is the teacher's checkpoint file (its SHA-256 names the folder), ``root`` the cache
    folder shared by runs. Call it where the teacher would run (under the same autocast, ``dtype``
    being its dtype). ``hits`` and ``misses`` count batches.
    """

    def __init__(self, checkpoint: str | Path, root: str | Path, device: torch.device,
                 dtype: torch.dtype | None = None):
        checkpoint = Path(checkpoint)
        self.sha256 = file_sha256(checkpoint)
        self.root = Path(root)
        dtype_name = str(dtype or torch.float32).removeprefix("torch.")
        kernels = f"{torch.device(device).type}-{dtype_name}-torch{torch.__version__}"
        self.folder = self.root / self.sha256 / kernels
        self.folder.mkdir(parents=True, exist_ok=True)
        self._record_source(checkpoint.resolve())
        self.hits = self.misses = 0

    def _record_source(self, checkpoint: Path) -> None:
        """Write which checkpoint this folder serves; delete folders of older weights at that path."""
        for record in self.root.glob(f"*/{SOURCE_FILE}"):
            if record.parent.name == self.sha256:
                continue
            try:
                source = json.loads(record.read_text()).get("checkpoint")
            except (OSError, ValueError):
                continue
            if source == str(checkpoint):
                shutil.rmtree(record.parent, ignore_errors=True)
        _write_atomic(self.root / self.sha256 / SOURCE_FILE,
                      lambda path: path.write_text(json.dumps({"checkpoint": str(checkpoint),
                                                               "sha256": self.sha256}, indent=1)))

    @torch.no_grad()
    def __call__(self, teacher: nn.Module, noisy: torch.Tensor) -> torch.Tensor:
        digest = input_digest(noisy)
        path = self.folder / digest[:2] / f"{digest}.npy"
        stored = _stored_dtype(self.folder)
        if stored is not None and path.is_file():
            try:
                bits = np.load(path)
            except (OSError, ValueError):   # a damaged entry is computed again
                bits = None
            if bits is not None:
                self.hits += 1
                return torch.from_numpy(bits).view(stored).to(noisy.device)
        out = teacher(noisy)
        _remember_dtype(self.folder, out.dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        bits = out.detach().cpu().contiguous().view(_INT_VIEW[out.dtype]).numpy()
        _write_atomic(path, lambda tmp: np.save(tmp, bits))
        self.misses += 1
        return out


def _stored_dtype(folder: Path) -> torch.dtype | None:
    marker = folder / "dtype"
    return getattr(torch, marker.read_text().strip()) if marker.is_file() else None


def _remember_dtype(folder: Path, dtype: torch.dtype) -> None:
    if _stored_dtype(folder) != dtype:
        _write_atomic(folder / "dtype", lambda path: path.write_text(str(dtype).removeprefix("torch.")))


def _write_atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``, so concurrent runs never read half a file."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)

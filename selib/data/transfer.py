"""Transfer sets: noisy audio without clean references, on which only the KD term is computed.

A teacher can label audio that nobody labelled: its output is the target for the student's KD term, while
the SE loss sees only the labelled items (``data.train_limit`` of them). ``data.transfer`` names the
audio (docs/datasets.md#transfer-sets; the regimes it opens: docs/kd.md#transfer-sets):

- ``rest``: the training items after the first ``train_limit`` (scarce labels, the same conditions);
- ``{name: DATASET, split: SPLIT}`` (optional ``root``, ``limit``): another dataset's noisy side, e.g. a
  condition the labelled data does not hold (adaptation);
- ``{folder: PATH}``: every ``.wav``/``.flac`` file under a folder (your own recordings).

:class:`WithTransfer` draws one transfer item for every labelled item, as a pure function of
``(seed, epoch, index)``, and hands it over as ``transfer_noisy``: a transfer item never carries a
clean signal, so none can reach a loss. Lesson ``07_logit_kd``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from selib.audio import AudioError, check_waveform, load
from selib.data.datasets import Crops, PairedDataset, get_dataset

AUDIO_SUFFIXES = (".wav", ".flac")


class NoisyOnly(Dataset):
    """The noisy side of a paired dataset, items ``{"id", "noisy"}``; ``skip`` drops its first items
    (those that are labelled)."""

    def __init__(self, paired: PairedDataset, skip: int = 0):
        if len(paired) <= skip:
            raise ValueError(f"a transfer set of the items after the first {skip} needs more than {skip} "
                             f"items; this split has {len(paired)}: lower data.train_limit")
        self.paired, self.skip = paired, int(skip)

    def __len__(self) -> int:
        return len(self.paired) - self.skip

    def set_epoch(self, epoch: int) -> None:
        self.paired.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        item = self.paired[self.skip + index]
        return {"id": item["id"], "noisy": item["noisy"]}


class NoisyFolder(Crops, Dataset):
    """Every ``.wav``/``.flac`` file under ``folder`` (sorted, recursive), cropped like the paired
    datasets; items ``{"id", "noisy"}``, the id being the path relative to ``folder``."""

    def __init__(self, folder: str | Path, segment_seconds: float | None = None, seed: int = 0):
        super().__init__(segment_seconds, seed)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: the data.transfer folder does not exist; give a folder of "
                                    "WAV or FLAC recordings")
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not self.files:
            raise FileNotFoundError(f"{self.folder}: no {' or '.join(AUDIO_SUFFIXES)} files in the data.transfer "
                                    "folder; put the noisy recordings there")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        noisy = load(path).numpy()
        if not np.any(noisy):
            raise AudioError(f"{path}: the recording is silent; remove it from the data.transfer folder")
        start, length = self.crop(len(noisy), self.rng(index))
        noisy = self.cut(noisy, start, length)
        check_waveform(noisy, str(path))
        return {"id": str(path.relative_to(self.folder)),
                "noisy": torch.from_numpy(np.ascontiguousarray(noisy, np.float32))}


class WithTransfer(Dataset):
    """A labelled dataset whose every item also brings a transfer item: ``transfer_id`` and
    ``transfer_noisy``. Which transfer item goes with labelled item ``index`` in an epoch is drawn from
    ``(seed, epoch, index)`` (with replacement), so a resumed run sees the same pairs."""

    def __init__(self, labelled: Dataset, transfer: Dataset, seed: int = 0):
        self.labelled, self.transfer, self.seed, self.epoch = labelled, transfer, int(seed), 0

    def __len__(self) -> int:
        return len(self.labelled)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for part in (self.labelled, self.transfer):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def transfer_index(self, index: int) -> int:
        """The transfer item drawn for labelled item ``index`` in the present epoch."""
        return int(np.random.default_rng([self.seed, self.epoch, index, 1]).integers(len(self.transfer)))

    def __getitem__(self, index: int) -> dict:
        item = dict(self.labelled[index])
        other = self.transfer[self.transfer_index(index)]
        item["transfer_id"], item["transfer_noisy"] = other["id"], other["noisy"]
        return item


def transfer_set(spec: str | Mapping[str, Any], data: Mapping[str, Any], seed: int) -> Dataset:
    """The transfer set that ``data.transfer`` (``spec``) names, cropped like the config's training
    items (``data`` is the config's data section)."""
    crop = {"segment_seconds": data["segment_seconds"], "seed": seed}
    if spec == "rest":
        if data["train_limit"] is None:
            raise ValueError("data.transfer: rest means the training items after data.train_limit; set "
                             "data.train_limit to the number of labelled items")
        paired = get_dataset(data["name"], "train", root=data["root"], **crop)
        return NoisyOnly(paired, skip=data["train_limit"])
    if "folder" in spec:
        return NoisyFolder(spec["folder"], **crop)
    return NoisyOnly(get_dataset(spec["name"], spec.get("split", "train"), root=spec.get("root"),
                                 limit=spec.get("limit"), **crop))

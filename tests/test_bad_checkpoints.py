"""Bad checkpoints on disk: malicious pickles, legacy files, random bytes, flipped bytes, truncation and
checkpoints of another model. Each is refused by selib.checkpoints with one line naming the file and
what to do, never with torch's advice to load it with weights_only=False."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

from selib import models
from selib.checkpoints import CheckpointError, load_checkpoint, load_model, save_checkpoint

from bad_input import (NOT_FILES, assert_one_line_error, file_size_limit, flip_byte, not_a_file, run_selib,
                       write_checkpoint, write_speech_like)


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def good(tmp_path):
    return write_checkpoint(tmp_path / "good.pt")


def _data_offset(path: Path) -> int:
    """Where the bytes of the first tensor's storage start inside the zip."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
    return info.header_offset + 30 + name_len + extra_len + 16


def test_a_malicious_pickle_never_runs_and_gets_one_line(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "config": {}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a trusted selib checkpoint") and "\n" not in message
    assert "weights_only=False" not in message and "best.pt or last.pt" in message
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["legacy", "random", "truncated", "empty"])
def test_files_that_are_not_complete_torch_zips_are_refused(tmp_path, good, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "legacy":
        torch.save(torch.load(good, weights_only=True), path, _use_new_zipfile_serialization=False)
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a selib checkpoint .*truncated, a legacy torch format"):
        load_model(path)


def test_a_flipped_byte_is_detected_by_the_zip_crc(tmp_path, good):
    """torch.load itself reads the flipped tensor without complaint; the CRC check does not."""
    flip_byte(good, _data_offset(good))
    assert "model" in torch.load(good, weights_only=True)       # what happened before this check
    with pytest.raises(CheckpointError, match=r"is damaged \(.*/data/\d+ fails its CRC check"):
        load_model(good)


# One bit of the zip64 end records torch.save writes (offsets from the zip64 end-of-central-directory
# signature): each is damage, which torch's zip reader or Python's zipfile rejects; none is distrust.
END_RECORD_BITS = {"zip64 record size": (4, 0x04), "this disk's number": (16, 0x01),
                   "total entries": (32, 0x01), "disk of the zip64 record": (60, 0x01)}


@pytest.mark.parametrize("field", END_RECORD_BITS)
def test_a_flipped_bit_in_the_end_records_is_damage_not_distrust(tmp_path, good, field):
    offset, mask = END_RECORD_BITS[field]
    flip_byte(good, good.read_bytes().rfind(b"PK\x06\x06") + offset, mask)
    with pytest.raises(CheckpointError) as err:
        load_model(good)
    message = str(err.value)
    assert message.startswith(f"{good}: the checkpoint is damaged (") and "\n" not in message
    assert "use an intact copy" in message and "trusted" not in message and "malicious" not in message


def test_enhance_names_a_damaged_zip_structure_as_damage(tmp_path, good):
    flip_byte(good, good.read_bytes().rfind(b"PK\x06\x06") + 16, 0x01)
    with pytest.raises(RuntimeError, match="multidisk"):
        torch.load(good, weights_only=True)                       # torch's own verdict: a damaged archive
    noisy = write_speech_like(tmp_path / "in.wav")
    out = run_selib("enhance", "--checkpoint", good, noisy, tmp_path / "out.wav")
    assert_one_line_error(out, f"{good}: the checkpoint is damaged", "zip reader rejects its structure",
                          "unsupported multidisk archive", "use an intact copy")
    assert "trusted" not in out.stderr and not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("kind", NOT_FILES)
def test_a_folder_fifo_or_device_is_named_as_such_not_missing(tmp_path, kind):
    path = not_a_file(tmp_path, kind)
    out = run_selib("eval", path, "--out", tmp_path / "eval")     # a FIFO opened would hang the command
    line = assert_one_line_error(out, f"{path}: is {NOT_FILES[kind]}, not a regular file; pass the best.pt")
    assert "no such" not in line and not (tmp_path / "eval").exists()


def test_a_checkpoint_of_another_model_gets_one_line(tmp_path, good):
    with pytest.raises(CheckpointError) as err:
        load_model(good, family="dpdcrn", preset="tiny-student")
    assert str(err.value) == (f"{good}: holds a dccrn 'tiny-student' model, not the dpdcrn 'tiny-student' "
                              "model asked for; point to the checkpoint of that model, or fix "
                              "family/preset/overrides to match the checkpoint's config.")
    # Weights of another family under a config that claims DCCRN: a summary, not a state-dict dump.
    state = torch.load(good, weights_only=True)
    state["model"] = models.build("convtasnet", "tiny-student").state_dict()
    save_checkpoint(state, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"weights do not fit a dccrn 'tiny-student' model \(\d+ missing "
                                              r"\(first: .*\); \d+ unexpected") as err:
        load_model(tmp_path / "mixed.pt")
    assert "\n" not in str(err.value)


def test_save_is_atomic_and_a_full_disk_leaves_nothing(tmp_path, good):
    state = torch.load(good, weights_only=True)
    with file_size_limit(50_000):
        with pytest.raises(OSError):
            save_checkpoint(state, tmp_path / "new.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pt"]
    model, config = load_model(save_checkpoint(state, tmp_path / "new.pt"))
    assert config["model"]["family"] == "dccrn" and not model.training


def test_enhance_checks_the_checkpoint_before_the_audio(tmp_path, good):
    """A damaged checkpoint and a damaged input: the checkpoint is named, nothing is written."""
    flip_byte(good, _data_offset(good))
    noisy = tmp_path / "in.wav"
    noisy.write_text("not audio either")
    out = run_selib("enhance", "--checkpoint", good, noisy, tmp_path / "out.wav")
    assert_one_line_error(out, str(good), "fails its CRC check", "use an intact copy")
    assert not (tmp_path / "out.wav").exists()

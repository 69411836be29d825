"""Bad audio on disk: odd sample rates, truncated and odd-bit-depth WAVs, unwritable outputs, damaged
corpus files and constant references; each gets its documented outcome (docs/guarantees.md)."""
from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from selib.audio import AudioError, check_output_path, load, resample, save
from selib.data.datasets import FilePairs
from selib.evaluation import evaluate

from bad_input import file_size_limit, flip_byte


def _wav_bytes(rate: int = 16000, bits: int = 16, fmt: int = 1, data: bytes = b"\0\1" * 1600,
               declared: int | None = None) -> bytes:
    """A RIFF/WAVE file written field by field, so that its header can say what we want."""
    align = max(1, -(-bits // 8))
    chunk = struct.pack("<HHIIHH", fmt, 1, rate, rate * align, align, bits)
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(chunk)) + chunk + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("rate", [3, 1000, 1_000_000])
def test_implausible_sample_rate_is_refused_naming_the_file(tmp_path, rate):
    path = tmp_path / f"rate{rate}.wav"
    path.write_bytes(_wav_bytes(rate=rate))
    with pytest.raises(AudioError, match=rf"sample rate {rate} Hz is outside the 4000-384000 Hz") as err:
        load(path)
    assert str(path) in str(err.value) and "re-export" in str(err.value)


def test_coprime_rate_resamples_in_bounded_memory_to_the_right_pitch(tmp_path):
    """44101 Hz and 16 kHz are coprime: torchaudio's kernel would hold 16000 x 44101 taps (2.8 GB).
    The polyphase path keeps a 440 Hz tone at 440 Hz (checked against the analytic tone at 16 kHz)."""
    rate, seconds = 44101, 0.5
    t = np.arange(int(rate * seconds)) / rate
    path = tmp_path / "odd.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440 * t), rate, subtype="FLOAT")
    wav = load(path).numpy()
    assert len(wav) == round(len(t) * 16000 / rate)
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(wav)) / 16000)
    assert np.abs(wav[800:-800] - expected[800:-800]).max() < 2e-3


def test_resampling_paths_agree_where_both_apply():
    """torchaudio (small reduced ratios) and the polyphase path give the same band-limited signal."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(8000) * 0.1).float()
    lowpass = resample(resample(x, 16000, 8000), 8000, 16000)      # a band-limited test signal
    direct = resample(lowpass, 16000, 22050).numpy()
    from scipy.signal import resample_poly
    reference = resample_poly(lowpass.double().numpy(), 441, 320)
    assert np.abs(direct - reference)[200:-200].max() < 5e-3


def test_truncated_wav_is_reported_not_read_short(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(full, np.full(16000, 0.1), 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[:20000])
    with pytest.raises(AudioError, match=r"truncated: the header promises 32000 bytes.*holds 19956") as err:
        load(cut)
    assert str(cut) in str(err.value) and "re-download" in str(err.value)


def test_streamed_wav_with_unknown_length_still_loads(tmp_path):
    """Writers that stream (pipes) put 0xFFFFFFFF as the data size: not a truncation."""
    path = tmp_path / "streamed.wav"
    path.write_bytes(_wav_bytes(declared=0xFFFFFFFF))
    assert len(load(path)) == 1600


def test_an_absurdly_loud_file_is_refused_naming_its_level(tmp_path):
    """Float files may peak a little above full scale; 60 dB above it is damage or a wrong scale."""
    tone = np.sin(np.arange(16000) / 10)
    for peak, db in ((1e20, 400), (32767.0, 90)):      # 90 dB: 16-bit sample values stored as float
        path = tmp_path / f"peak{peak:g}.wav"
        sf.write(path, peak * tone, 16000, subtype="FLOAT")
        with pytest.raises(AudioError) as err:
            load(path)
        assert str(err.value).startswith(f"{path}: peak level {peak:.3g} is {db} dB above full scale")
        assert "rescale it to [-1, 1]" in str(err.value)
    sf.write(tmp_path / "hot.wav", 2.0 * tone, 16000, subtype="FLOAT")
    assert load(tmp_path / "hot.wav").abs().max() == pytest.approx(2.0, rel=1e-4)


@pytest.mark.parametrize("bits,fmt", [(12, 1), (20, 1), (7, 1)])
def test_nonstandard_bit_depth_is_refused(tmp_path, bits, fmt):
    path = tmp_path / f"bits{bits}.wav"
    path.write_bytes(_wav_bytes(bits=bits, fmt=fmt, data=b"\0\1\2" * 1600))
    with pytest.raises(AudioError, match=rf"{bits}-bit .* not a bit depth selib reads") as err:
        load(path)
    assert str(path) in str(err.value) and "16-bit PCM" in str(err.value)


@pytest.mark.parametrize("case", ["extension", "folder", "under_a_file", "input_itself"])
def test_bad_output_paths_are_refused_before_writing(tmp_path, case):
    source = tmp_path / "in.wav"
    sf.write(source, np.full(1600, 0.1), 16000)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    target = {"extension": tmp_path / "out.mp4", "folder": tmp_path / "adir",
              "under_a_file": tmp_path / "afile" / "out.wav", "input_itself": source}[case]
    fix = {"extension": "name the output", "folder": "give a file name", "under_a_file": "is a file, not a folder",
           "input_itself": "--overwrite"}[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(AudioError, match=fix):
        check_output_path(target, source=source)
    with pytest.raises(AudioError, match=fix):
        save(target, torch.zeros(160)) if case != "input_itself" else check_output_path(target, source)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert check_output_path(source, source=source, overwrite=True) == source


def test_a_full_disk_leaves_neither_the_output_nor_a_temporary_file(tmp_path):
    """The kernel refuses writes past RLIMIT_FSIZE (EFBIG), as it refuses them on a full disk."""
    target = tmp_path / "out.wav"
    with file_size_limit(10_000):
        with pytest.raises(OSError) as err:
            save(target, torch.full((16000,), 0.1))
    assert err.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def _pairs(tmp_path, n=3):
    pairs, sums = [], {}
    for i in range(n):
        paths = []
        for kind in ("noisy", "clean"):
            path = tmp_path / f"{kind}{i}.wav"
            sf.write(path, 0.1 * np.sin(np.arange(4000) * (i + 1) / 10), 16000, subtype="PCM_16")
            sums[path] = hashlib.sha256(path.read_bytes()).hexdigest()
            paths.append(path)
        pairs.append((f"utt{i}", *paths))
    return pairs, sums


def test_a_changed_corpus_file_fails_only_its_own_item(tmp_path):
    pairs, sums = _pairs(tmp_path)
    flip_byte(pairs[1][1], 3000)
    dataset = FilePairs(pairs, checksums=sums)
    assert dataset[0]["id"] == "utt0" and dataset[2]["id"] == "utt2"
    with pytest.raises(AudioError, match="SHA-256 differs from the corpus manifest") as err:
        dataset[1]
    assert str(pairs[1][1]) in str(err.value) and "selib data verify" in str(err.value)
    assert dataset.item_id(1) == "utt1"


def test_an_unreadable_corpus_file_fails_only_its_own_item(tmp_path):
    pairs, _ = _pairs(tmp_path)
    pairs[2][2].write_bytes(b"RIFF not really")
    dataset = FilePairs(pairs)
    assert len(dataset[1]["clean"]) == 4000
    with pytest.raises(AudioError, match="cannot be read as audio"):
        dataset[2]


@pytest.mark.parametrize("workers", [1, 2])   # statuses cross into worker processes with two
def test_constant_reference_is_a_silent_reference(workers):
    est = np.random.default_rng(0).standard_normal(16000) * 0.1
    result = evaluate([("dc", est, np.full(16000, 0.3)), ("zero", est, np.zeros(16000))],
                      metrics=("si_sdr", "stoi"), workers=workers)
    assert {row[f"{m}_status"] for row in result.rows for m in ("si_sdr", "stoi")} == {"silent_reference"}
    assert "constant" in result.rows[0]["si_sdr_reason"]

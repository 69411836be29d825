"""Paired noisy/clean datasets: the embedded corpus, VoiceBank+DEMAND and DNS Challenge 2020.

``get_dataset(name, split)`` returns a ``torch.utils.data.Dataset`` whose items are
``{"id": str, "noisy": Tensor[T], "clean": Tensor[T]}`` at 16 kHz. With ``segment_seconds`` every item
is a crop of that length (zero-padded when the utterance is shorter) whose offset is a pure function of
``(seed, epoch, index)``; ``set_epoch`` moves to the crops of another epoch, so a resumed run sees
exactly the crops it would have seen. Lessons ``00_data_and_listening`` and
``06_training_teacher_student``.
"""
from __future__ import annotations

import hashlib
import io
import re
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from selib.audio import AudioError, check_waveform, load, save
from selib.constants import DATASETS, SAMPLE_RATE, SPLITS
from selib.data.embedded import EMBEDDED, build_embedded, load_manifest
from selib.data.mixing import LEVEL_RANGE, fit_length, snr_mix

VB_VALID_SPEAKERS = ("p226", "p287")
VB_FOLDERS = {"train": ("noisy_trainset_28spk_wav", "clean_trainset_28spk_wav"),
              "test": ("noisy_testset_wav", "clean_testset_wav")}
DNS_TEST_SETS = ("no_reverb", "with_reverb")
DNS_VALID_EVERY = 100  # every 100th clean and noise file (sorted) is held out for validation


class DatasetMissing(FileNotFoundError):
    """A dataset is not on disk (or incomplete); the message shows the expected layout and the fix."""


class Crops:
    """Epochs and crops: each item's random generator, and so its crop, is a pure function of
    ``(seed, epoch, index)`` (the paired datasets here and the transfer sets of ``selib.data.transfer``)."""

    def __init__(self, segment_seconds: float | None = None, seed: int = 0):
        if segment_seconds is not None and not segment_seconds > 0:
            raise ValueError(f"segment_seconds must be positive or None, got {segment_seconds}")
        self.segment = None if segment_seconds is None else round(segment_seconds * SAMPLE_RATE)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the crops (and on-the-fly mixtures) of ``epoch``."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of one item: a pure function of ``(seed, epoch, index)``."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def crop(self, n: int, rng: np.random.Generator) -> tuple[int, int]:
        """``(offset, length)`` of this item's segment in a signal of ``n`` samples (all without one)."""
        if self.segment is None:
            return 0, n
        return int(rng.integers(0, max(0, n - self.segment) + 1)), self.segment

    def cut(self, x: np.ndarray, start: int, length: int) -> np.ndarray:
        """``x[start:start + length]``, zero-padded at the end to ``length`` samples."""
        return np.pad(x[start:start + length], (0, max(0, start + length - len(x))))


class PairedDataset(Crops, Dataset, ABC):
    """Base class: cropping, padding and epochs. Subclasses implement ``__len__`` and
    ``pair(index, rng) -> (id, noisy, clean)`` with 1-D float32 numpy arrays at 16 kHz."""

    @abstractmethod
    def __len__(self) -> int: ...

    def item_id(self, index: int) -> str:
        """A name for item ``index`` that needs no audio (for reporting an item that cannot be read)."""
        return f"item {index}"

    @abstractmethod
    def pair(self, index: int, rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]: ...

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        rng = self.rng(index)
        item_id, noisy, clean = self.pair(index, rng)
        if len(noisy) != len(clean):
            raise AudioError(f"{item_id}: noisy has {len(noisy)} samples but clean has {len(clean)}; "
                             "the pair must be time-aligned")
        start, length = self.crop(len(clean), rng)
        noisy, clean = (self.cut(x, start, length) for x in (noisy, clean))
        check_waveform(noisy, f"{item_id} (noisy)")    # data enters here: the models do not check
        check_waveform(clean, f"{item_id} (clean)")
        return {"id": item_id, "noisy": torch.from_numpy(np.ascontiguousarray(noisy, np.float32)),
                "clean": torch.from_numpy(np.ascontiguousarray(clean, np.float32))}


class FilePairs(PairedDataset):
    """Noisy/clean pairs from files: ``pairs`` is a list of ``(id, noisy_path, clean_path)``, read when
    an item is asked for (so every training process stays small; the OS caches the files).
    ``checksums`` maps paths to their SHA-256 (the embedded manifest's), checked as they are read.
    A file that cannot be read (or fails its checksum) raises when its item is asked for, not before,
    so one damaged file does not hide the others."""

    def __init__(self, pairs: list[tuple[str, Path, Path]], segment_seconds=None, seed=0,
                 checksums: dict[Path, str] | None = None):
        super().__init__(segment_seconds, seed)
        self.pairs, self.checksums = pairs, checksums or {}

    def __len__(self) -> int:
        return len(self.pairs)

    def item_id(self, index: int) -> str:
        return self.pairs[index][0]

    def pair(self, index, rng):
        item_id, noisy, clean = self.pairs[index]
        if noisy in self.checksums and clean in self.checksums:    # the embedded corpus: 16-bit, checked
            return item_id, *(_read_int16(p, self.checksums[p]).astype(np.float32) / 32768.0 for p in (noisy, clean))
        for path in (noisy, clean):
            if path in self.checksums:
                _read_int16(path, self.checksums[path])
        return item_id, load(noisy).numpy(), load(clean).numpy()


def _read_int16(path: Path, sha256: str | None = None) -> np.ndarray:
    """A 16 kHz mono 16-bit PCM file as int16 samples, its bytes checked against ``sha256`` if given."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise AudioError(f"{path}: cannot be read ({err.strerror}); rebuild the corpus") from None
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise AudioError(f"{path}: its SHA-256 differs from the corpus manifest (the file changed on disk); "
                         "run selib data verify, then rebuild the corpus (delete its manifest.json)")
    try:
        info = sf.info(io.BytesIO(raw))
        if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.subtype != "PCM_16":
            raise AudioError(f"{path}: expected 16 kHz mono 16-bit PCM, got {info.samplerate} Hz, "
                             f"{info.channels} channel(s), {info.subtype}; rebuild the corpus")
        return sf.read(io.BytesIO(raw), dtype="int16")[0]
    except sf.LibsndfileError as err:
        raise AudioError(f"{path}: cannot be read as audio ({err}); rebuild the corpus") from None


class DNSMixtures(PairedDataset):
    """DNS-2020 training mixtures made on the fly with the DNS rules (``selib.data.mixing``): a crop of
    clean file ``index``, a random noise file cut or looped to the same length, an integer SNR drawn
    uniformly from ``[snr_range[0], snr_range[1])`` and an integer level in [-35, -15) dBFS, all drawn
    from the item's ``(seed, epoch, index)`` generator."""

    def __init__(self, clean: list[Path], noise: list[Path], segment_seconds=None, seed=0,
                 snr_range=(0, 40)):
        super().__init__(segment_seconds, seed)
        self.clean, self.noise, self.snr_range = clean, noise, tuple(int(s) for s in snr_range)
        if not self.snr_range[0] < self.snr_range[1]:
            raise ValueError(f"snr_range must be (low, high) with low < high, got {snr_range}")

    def __len__(self) -> int:
        return len(self.clean)

    def pair(self, index, rng):
        path = self.clean[index]
        start, length = self.crop(sf.info(str(path)).frames, rng)
        clean = _read_frames(path, start, length)
        noise_path = self.noise[int(rng.integers(len(self.noise)))]
        noise_frames = sf.info(str(noise_path)).frames
        if noise_frames >= len(clean):
            offset = int(rng.integers(0, noise_frames - len(clean) + 1))
            noise = _read_frames(noise_path, offset, len(clean))
        else:
            noise = fit_length(load(noise_path).numpy(), len(clean), rng)
        snr = int(rng.integers(*self.snr_range))
        level = int(rng.integers(int(LEVEL_RANGE[0]), int(LEVEL_RANGE[1])))
        try:
            noisy, clean, _, _ = snr_mix(clean, noise, snr, level)
        except ValueError as err:
            raise AudioError(f"{path} (or noise {noise_path}) is silent in the chosen crop: {err}") from err
        return f"{path.stem}_{noise_path.stem}_snr{snr}_tl{level}", noisy, clean


def _read_frames(path: Path, start: int, length: int) -> np.ndarray:
    """``length`` samples of a 16 kHz file from ``start`` (fewer if the file ends), read without loading
    the rest; other rates go through :func:`selib.audio.load`."""
    info = sf.info(str(path))
    if info.samplerate == SAMPLE_RATE and info.channels == 1:
        data = sf.read(str(path), start=start, frames=length, dtype="float32")[0]
    else:
        data = load(path).numpy()[start:start + length]
    if len(data) == 0:
        raise AudioError(f"{path}: no audio at samples {start}..{start + length}; the file is empty")
    return data


def get_dataset(name: str, split: str, root: str | Path | None = None,
                segment_seconds: float | None = None, seed: int = 0, limit: int | None = None,
                **options) -> PairedDataset:
    """The ``split`` of dataset ``name`` (``embedded | embedded-room | voicebank | dns2020``) as a ``Dataset``.

    ``root`` defaults to ``data/<name>`` (VoiceBank test: ``data/voicebank-test`` when only the test
    set was downloaded there); ``limit`` keeps the first items. Options: ``test_set``
    (dns2020: ``no_reverb`` or ``with_reverb``), ``snr_range`` (dns2020 training mixtures, default
    (0, 40)). The embedded corpus is built on first use (seconds). Lesson ``00_data_and_listening``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    allowed = {"voicebank": set(), "dns2020": {"test_set", "snr_range"}}.get(name, set())
    if set(options) - allowed:
        raise TypeError(f"get_dataset({name!r}) got unknown options {sorted(set(options) - allowed)}; "
                        f"valid options: {sorted(allowed) or 'none'}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of items or None, got {limit}")
    if root is None:
        root = Path("data") / name
        test_only = Path("data/voicebank-test")  # where `selib data download voicebank-test` puts it
        if name == "voicebank" and split == "test" and not (root / VB_FOLDERS["test"][0]).is_dir() \
                and (test_only / VB_FOLDERS["test"][0]).is_dir():
            root = test_only
    root = Path(root)
    crop = {"segment_seconds": segment_seconds, "seed": seed}
    if name in EMBEDDED:
        return _embedded(root, split, limit, crop, EMBEDDED[name])
    if name == "voicebank":
        return FilePairs(_voicebank_pairs(root, split, limit), **crop)
    return _dns(root, split, limit, crop, **options)


def _embedded(root: Path, split: str, limit, crop, build: dict) -> FilePairs:
    if not (root / "manifest.json").is_file():
        build_embedded(root, **build)
    items = load_manifest(root)["splits"][split][:limit]
    pairs = [(it["id"], root / it["noisy"], root / it["clean"]) for it in items]
    missing = [str(p) for pair in pairs for p in pair[1:] if not p.is_file()]
    if missing:
        raise DatasetMissing(f"{root}: {len(missing)} files of the manifest are missing (first: {missing[0]}); "
                             f"delete {root / 'manifest.json'} and call selib.data.build_embedded({str(root)!r})")
    checksums = {root / it[key]: it["sha256"][key] for it in items for key in ("noisy", "clean")
                 if key in it.get("sha256", {})}
    return FilePairs(pairs, checksums=checksums, **crop)   # read per item: each training process stays small


_VB_LAYOUT = """\
Expected layout (the official DataShare zips, unzipped as they are):
  {root}/clean_trainset_28spk_wav/p226_001.wav ...   (11572 files, 48 kHz)
  {root}/noisy_trainset_28spk_wav/p226_001.wav ...   (same names)
  {root}/clean_testset_wav/p232_001.wav ...          (824 files)
  {root}/noisy_testset_wav/p232_001.wav ...          (same names)
Get it with `selib data download voicebank` (test set only: `selib data download voicebank-test`,
found in data/voicebank-test by default), or by hand from https://datashare.ed.ac.uk/handle/10283/2791
(DOI 10.7488/ds/2117); see data/README.md. Files resampled to 16 kHz are cached in {root}/16k/."""


def _voicebank_pairs(root: Path, split: str, limit) -> list[tuple[str, Path, Path]]:
    """VoiceBank+DEMAND pairs (identical names in the noisy and clean folders), resampled to 16 kHz
    into ``root/16k/<folder>/`` on first use. Valid = training speakers p226 and p287."""
    noisy_dir, clean_dir = (root / f for f in VB_FOLDERS["test" if split == "test" else "train"])
    for folder in (noisy_dir, clean_dir):
        if not folder.is_dir() or not any(folder.glob("*.wav")):
            raise DatasetMissing(f"VoiceBank+DEMAND {split} split not found: {folder} is missing or has no "
                                 f"WAV files.\n" + _VB_LAYOUT.format(root=root))
    names = sorted(p.name for p in noisy_dir.glob("*.wav"))
    unmatched = sorted(set(names) ^ {p.name for p in clean_dir.glob("*.wav")})
    if unmatched:
        raise DatasetMissing(f"{root}: {len(unmatched)} files have no partner in {noisy_dir.name}/ and "
                             f"{clean_dir.name}/ (first: {unmatched[0]}); the download is incomplete, "
                             f"re-extract the archives.\n" + _VB_LAYOUT.format(root=root))
    if split != "test":
        valid = tuple(s + "_" for s in VB_VALID_SPEAKERS)
        names = [n for n in names if n.startswith(valid) == (split == "valid")]
        if not names:
            raise DatasetMissing(f"{noisy_dir}: no files of the {split} speakers "
                                 f"({'' if split == 'valid' else 'all but '}{', '.join(VB_VALID_SPEAKERS)})")
    return [(Path(n).stem, _vb_16k(root, noisy_dir / n), _vb_16k(root, clean_dir / n)) for n in names[:limit]]


def _vb_16k(root: Path, path: Path) -> Path:
    """The 16 kHz version of ``path`` (cached under ``root/16k/``; 16 kHz originals are used as they are)."""
    cached = root / "16k" / path.parent.name / path.name
    if cached.is_file():
        return cached
    if sf.info(str(path)).samplerate == SAMPLE_RATE:
        return path
    tmp = cached.with_suffix(".part.wav")
    save(tmp, load(path))
    return tmp.replace(cached)


_DNS_LAYOUT = """\
Expected layout (the interspeech2020/master branch of microsoft/DNS-Challenge, LFS files pulled):
  {root}/datasets/test_set/synthetic/no_reverb/clean/clean_fileid_0.wav ...
  {root}/datasets/test_set/synthetic/no_reverb/noisy/clnsp<K>_<noise>_snr<S>_tl<L>_fileid_0.wav ...
  {root}/datasets/test_set/synthetic/with_reverb/{{clean,noisy}}/ ...   (same naming)
  {root}/datasets/clean/*.wav and {root}/datasets/noise/*.wav           (training; 65 + 21 GB)
(`{root}` may also be the `datasets` folder itself.) Run `selib data download dns2020` for the git-lfs
recipe, or see data/README.md. A clone without `git lfs pull` holds only pointer files."""


def _dns(root: Path, split: str, limit, crop, test_set: str = "no_reverb", snr_range=(0, 40)):
    base = root / "datasets" if (root / "datasets").is_dir() else root
    if split == "test":
        if test_set not in DNS_TEST_SETS:
            raise ValueError(f"unknown DNS test_set {test_set!r}; choose one of {DNS_TEST_SETS}")
        folder = base / "test_set" / "synthetic" / test_set
        noisy = {_fileid(p): p for p in _wavs(folder / "noisy", root)}
        clean = {_fileid(p): p for p in _wavs(folder / "clean", root)}
        if noisy.keys() != clean.keys():
            odd = sorted(noisy.keys() ^ clean.keys())
            raise DatasetMissing(f"{folder}: fileids {odd[:5]} have no partner in noisy/ and clean/; "
                                 f"the LFS pull is incomplete.\n" + _DNS_LAYOUT.format(root=root))
        ids = sorted(noisy)[:limit]
        return FilePairs([(f"fileid_{i}", noisy[i], clean[i]) for i in ids], **crop)
    valid = split == "valid"
    clean = [p for k, p in enumerate(_wavs(base / "clean", root)) if (k % DNS_VALID_EVERY == 0) == valid]
    noise = [p for k, p in enumerate(_wavs(base / "noise", root)) if (k % DNS_VALID_EVERY == 0) == valid]
    if not clean or not noise:
        raise DatasetMissing(f"{base}: too few clean or noise files for a {split} split "
                             f"(every {DNS_VALID_EVERY}th file is held out for validation).\n"
                             + _DNS_LAYOUT.format(root=root))
    return DNSMixtures(clean[:limit], noise, snr_range=snr_range, **crop)


def _wavs(folder: Path, root: Path) -> list[Path]:
    files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
    if not files:
        raise DatasetMissing(f"DNS Challenge 2020 not found: {folder} is missing or has no WAV files.\n"
                             + _DNS_LAYOUT.format(root=root))
    pointer = files[0].read_bytes()[:40]
    if pointer.startswith(b"version https://git-lfs"):
        raise DatasetMissing(f"{files[0]} is a Git LFS pointer, not audio: run `git lfs pull` in the "
                             f"clone.\n" + _DNS_LAYOUT.format(root=root))
    return files


def _fileid(path: Path) -> int:
    match = re.search(r"fileid_(\d+)\.wav$", path.name)
    if not match:
        raise DatasetMissing(f"{path}: DNS file names end in fileid_<N>.wav; this one does not. "
                             "Keep the official names.")
    return int(match.group(1))

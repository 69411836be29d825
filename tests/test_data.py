"""Tests of selib.data: the embedded corpus (TTS, noise, mixing, manifest) and the dataset loaders.

Every corpus here is really built (eSpeak NG worker processes, WAV files on disk), only small.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from selib.data import DatasetMissing, build_embedded, get_dataset, load_manifest
from selib.data.mixing import TEST_SNRS, TRAIN_SNRS, snr_mix
from selib.data.noise import NOISE_TYPES, make_noise
from selib.data.tts import TEST_VOICES, TRAIN_VOICES, VALID_VOICES, TTSError, synthesize

SIZES = {"n_train": 14, "n_valid": 7, "n_test": 10}


def _read(path):
    data, rate = sf.read(str(path), dtype="float64")
    assert rate == 16000
    return data


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("embedded")
    a = build_embedded(base / "a", seed=0, workers=1, **SIZES)
    b = build_embedded(base / "b", seed=0, workers=2, **SIZES)
    c = build_embedded(base / "c", seed=1, **SIZES)
    return a, b, c


def test_same_seed_gives_byte_identical_corpus_and_other_seed_differs(corpora):
    a, b, c = corpora
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert len(files_a) == 3 * sum(SIZES.values()) + 1
    assert files_a == files_b
    assert files_a[Path("manifest.json")] != files_c[Path("manifest.json")]
    assert files_a[Path("train/noisy/train_0000.wav")] != files_c[Path("train/noisy/train_0000.wav")]


def test_rebuild_with_same_parameters_reuses_the_corpus(corpora):
    a = corpora[0]
    before = {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    assert build_embedded(a, seed=0, verbose=False, **SIZES) == a
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()} == before


def test_manifest_checksums_match_files(corpora):
    root = corpora[0]
    manifest = json.loads((root / "manifest.json").read_text())
    assert {k: len(v) for k, v in manifest["splits"].items()} == {
        "train": SIZES["n_train"], "valid": SIZES["n_valid"], "test": SIZES["n_test"]}
    for items in manifest["splits"].values():
        for item in items:
            for key in ("noisy", "clean", "noise"):
                digest = hashlib.sha256((root / item[key]).read_bytes()).hexdigest()
                assert digest == item["sha256"][key], item[key]


def test_mixtures_have_the_manifest_snr_and_level_and_never_clip(corpora):
    root = corpora[0]
    lsb = 1 / 32768
    for items in load_manifest(root)["splits"].values():
        for item in items:
            noisy, clean, noise = (_read(root / item[k]) for k in ("noisy", "clean", "noise"))
            assert len(noisy) == len(clean) == len(noise) == item["samples"]
            assert 2.0 <= item["seconds"] <= 4.0
            measured = 10 * np.log10(np.sum(clean ** 2) / np.sum((noisy - clean) ** 2))
            assert abs(measured - item["snr_db"]) < 0.05, item["id"]
            assert np.max(np.abs(noisy - clean - noise)) <= 2 * lsb
            level = 20 * np.log10(np.sqrt(np.mean(noisy ** 2)))
            assert abs(level - item["level_db"]) < 0.02
            if not item["peak_scaled"]:
                assert abs(level - item["target_level_db"]) < 0.02
                assert -35 <= item["target_level_db"] <= -15
            assert max(np.abs(x).max() for x in (noisy, clean, noise)) <= 0.99 + lsb


def test_splits_use_disjoint_voices_and_sentences_and_every_noise_type(corpora):
    splits = load_manifest(corpora[0])["splits"]
    voices = {s: {it["voice"] for it in items} for s, items in splits.items()}
    assert voices["train"] <= set(TRAIN_VOICES) and voices["test"] <= set(TEST_VOICES)
    assert voices["valid"] <= set(VALID_VOICES)
    variants = [{v.split("+")[1] for v in vs} for vs in (TRAIN_VOICES, VALID_VOICES, TEST_VOICES)]
    assert not (variants[0] & variants[1] or variants[0] & variants[2] or variants[1] & variants[2])
    assert len(set(TRAIN_VOICES) | set(VALID_VOICES) | set(TEST_VOICES)) >= 8
    texts = {s: {it["text"] for it in items} for s, items in splits.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["valid"]
    for items in splits.values():
        assert {it["noise_type"] for it in items} == set(NOISE_TYPES)
    assert {it["snr_db"] for it in splits["test"]} == set(TEST_SNRS) == {-5, 0, 5, 10, 15}
    assert {it["snr_db"] for it in splits["train"]} <= set(TRAIN_SNRS)


def test_crops_are_a_function_of_seed_epoch_and_index(corpora):
    root = corpora[0]
    whole = get_dataset("embedded", "train", root=root)
    manifest = load_manifest(root)["splits"]["train"]
    assert [len(whole[i]["clean"]) for i in range(len(whole))] == [it["samples"] for it in manifest]
    ds = get_dataset("embedded", "train", root=root, segment_seconds=1.0, seed=3)
    again = get_dataset("embedded", "train", root=root, segment_seconds=1.0, seed=3)
    epoch0 = [ds[i] for i in range(len(ds))]
    for i, item in enumerate(epoch0):
        assert item["noisy"].shape == item["clean"].shape == (16000,)
        assert item["noisy"].dtype == torch.float32 and item["id"] == f"train_{i:04d}"
        assert torch.equal(item["noisy"], again[i]["noisy"])
        # the crop is one contiguous slice, at the same offset in noisy and clean
        full = whole[i]["clean"]
        candidates = torch.nonzero(full[:len(full) - 16000 + 1] == item["clean"][0]).flatten().tolist()
        offsets = [o for o in candidates if torch.equal(full[o:o + 16000], item["clean"])]
        assert len(offsets) >= 1
        assert torch.equal(whole[i]["noisy"][offsets[0]:offsets[0] + 16000], item["noisy"])
    ds.set_epoch(1)
    changed = [not torch.equal(ds[i]["clean"], epoch0[i]["clean"]) for i in range(len(ds))]
    assert sum(changed) >= len(ds) - 1
    ds.set_epoch(0)
    assert all(torch.equal(ds[i]["clean"], epoch0[i]["clean"]) for i in range(len(ds)))
    other_seed = get_dataset("embedded", "train", root=root, segment_seconds=1.0, seed=4)
    assert any(not torch.equal(other_seed[i]["clean"], epoch0[i]["clean"]) for i in range(len(ds)))
    long = get_dataset("embedded", "test", root=root, segment_seconds=5.0, limit=2)
    assert len(long) == 2
    item = long[0]
    n = load_manifest(root)["splits"]["test"][0]["samples"]
    assert item["clean"].shape == (80000,) and torch.all(item["clean"][n:] == 0)


def test_snr_mix_follows_the_dns_rules_and_scales_down_instead_of_clipping():
    rng = np.random.default_rng(0)
    clean, noise = rng.standard_normal(16000), rng.standard_normal(16000) * 3
    noisy, c, n, info = snr_mix(clean, noise, 5.0, -30.0)
    assert np.allclose(noisy, c + n)
    assert abs(10 * np.log10(np.sum(c ** 2) / np.sum(n ** 2)) - 5.0) < 1e-9
    assert abs(20 * np.log10(np.sqrt(np.mean(noisy ** 2))) + 30.0) < 1e-9
    assert np.allclose(c / clean, c[0] / clean[0])  # clean is only scaled
    spiky = clean.copy()
    spiky[100] = 400.0  # crest factor so high that -15 dBFS would exceed full scale
    noisy, c, n, info = snr_mix(spiky, noise, 0.0, -15.0)
    assert info["peak_scaled"] and max(np.abs(noisy).max(), np.abs(c).max()) <= 0.99 + 1e-12
    assert abs(10 * np.log10(np.sum(c ** 2) / np.sum(n ** 2))) < 1e-9
    with pytest.raises(ValueError, match="same length"):
        snr_mix(clean, noise[:10], 0.0, -25.0)


def _slope(x):
    f, p = scipy.signal.welch(x, fs=16000, nperseg=4096)
    band = (f > 50) & (f < 4000)
    return np.polyfit(np.log10(f[band]), np.log10(p[band]), 1)[0]


def test_noise_generators_are_deterministic_and_have_their_spectra():
    spectrum = np.linspace(2.0, 0.1, 257)
    pool = [np.sin(np.arange(8000 + 500 * k) * 0.05 * (k + 1)) for k in range(8)]
    for kind in NOISE_TYPES:
        x, params = make_noise(kind, np.random.default_rng(7), 32000, spectrum=spectrum, pool=pool)
        y, params_y = make_noise(kind, np.random.default_rng(7), 32000, spectrum=spectrum, pool=pool)
        z, _ = make_noise(kind, np.random.default_rng(8), 32000, spectrum=spectrum, pool=pool)
        assert x.shape == (32000,) and np.all(np.isfinite(x)) and np.std(x) > 0
        assert np.array_equal(x, y) and params == params_y and not np.array_equal(x, z)
    pink, _ = make_noise("pink", np.random.default_rng(1), 160000)
    brown, _ = make_noise("brown", np.random.default_rng(1), 160000)
    assert abs(_slope(pink) + 1) < 0.15 and abs(_slope(brown) + 2) < 0.2
    hum, params = make_noise("hum", np.random.default_rng(2), 32000)
    f, p = scipy.signal.welch(hum, fs=16000, nperseg=16000)
    assert f[np.argmax(p)] == params["mains_hz"]
    with pytest.raises(ValueError, match="unknown noise type"):
        make_noise("rain", np.random.default_rng(0), 100)


def test_tts_speaks_at_16khz_and_rejects_unknown_voices():
    a = synthesize("Knowledge distillation makes small models better.", voice="en-us+m3", rate=175)
    b = synthesize("Knowledge distillation makes small models better.", voice="en-us+m3", rate=175)
    fast = synthesize("Knowledge distillation makes small models better.", voice="en-us+m3", rate=300)
    assert a.dtype == np.float32 and 1.5 < len(a) / 16000 < 5.0
    assert np.array_equal(a, b) and len(fast) < 0.8 * len(a)
    assert 0.01 < np.sqrt(np.mean(a ** 2)) and np.abs(a).max() < 1.5
    with pytest.raises(TTSError, match="no-such-voice"):
        synthesize("Hello.", voice="no-such-voice")


def _write(path, x, rate):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, rate, subtype="PCM_16")


def _tone(freq, seconds, rate, amp=0.3):
    return amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def test_voicebank_loader_pairs_resamples_to_16k_and_caches(tmp_path):
    root = tmp_path / "voicebank"
    names = {"train": ["p226_001", "p230_001", "p230_002", "p287_004"], "test": ["p232_001", "p257_003"]}
    freq = {}
    for split, (noisy_dir, clean_dir) in {"train": ("noisy_trainset_28spk_wav", "clean_trainset_28spk_wav"),
                                          "test": ("noisy_testset_wav", "clean_testset_wav")}.items():
        for k, name in enumerate(names[split]):
            freq[name] = 200.0 + 100 * k + (50 if split == "test" else 0)
            _write(root / clean_dir / f"{name}.wav", _tone(freq[name], 0.5, 48000), 48000)
            _write(root / noisy_dir / f"{name}.wav", _tone(freq[name], 0.5, 48000, amp=0.5), 48000)
    splits = {s: get_dataset("voicebank", s, root=root) for s in ("train", "valid", "test")}
    assert [it["id"] for it in splits["train"]] == ["p230_001", "p230_002"]
    assert [it["id"] for it in splits["valid"]] == ["p226_001", "p287_004"]
    assert [it["id"] for it in splits["test"]] == ["p232_001", "p257_003"]
    for ds in splits.values():
        for item in ds:
            reference = _tone(freq[item["id"]], 0.5, 16000)
            assert item["clean"].shape == item["noisy"].shape == (8000,)
            inner = slice(200, -200)  # away from the edges, resampling a sine is exact to 16 bits
            assert np.max(np.abs(item["clean"].numpy()[inner] - reference[inner])) < 2e-3
            assert np.max(np.abs(item["noisy"].numpy()[inner] - reference[inner] * 5 / 3)) < 2e-3
    cached = root / "16k" / "noisy_testset_wav" / "p257_003.wav"
    assert sf.info(str(cached)).samplerate == 16000
    assert len(list((root / "16k").rglob("*.wav"))) == 12
    assert len(get_dataset("voicebank", "train", root=root, limit=1, segment_seconds=0.25)) == 1
    (root / "noisy_testset_wav" / "p257_003.wav").unlink()
    with pytest.raises(DatasetMissing, match="p257_003.wav"):
        get_dataset("voicebank", "test", root=root)


def test_missing_datasets_explain_layout_and_download(tmp_path):
    with pytest.raises(DatasetMissing) as err:
        get_dataset("voicebank", "test", root=tmp_path / "nothing")
    assert "clean_testset_wav" in str(err.value) and "selib data download voicebank" in str(err.value)
    with pytest.raises(DatasetMissing) as err:
        get_dataset("dns2020", "test", root=tmp_path / "nothing")
    assert "test_set/synthetic/no_reverb" in str(err.value) and "selib data download dns2020" in str(err.value)
    with pytest.raises(ValueError, match="choose one of"):
        get_dataset("librispeech", "train")
    with pytest.raises(TypeError, match="test_set"):
        get_dataset("voicebank", "test", root=tmp_path, test_set="no_reverb")


def _dns_tree(root):
    rng = np.random.default_rng(0)
    synthetic = root / "datasets" / "test_set" / "synthetic"
    for sub, ids in (("no_reverb", (3, 10, 251)), ("with_reverb", (7,))):
        for k in ids:
            clean = _tone(300 + k, 1.0, 16000)
            _write(synthetic / sub / "clean" / f"clean_fileid_{k}.wav", clean, 16000)
            noisy = clean + 0.0002 * k * rng.standard_normal(len(clean))
            _write(synthetic / sub / "noisy" / f"clnsp{k}_noise{k}_snr5_tl-20_fileid_{k}.wav", noisy, 16000)
    for k in range(3):
        _write(root / "datasets" / "clean" / f"book_{k:05d}_chp_0001_reader_0000{k}_0.wav",
               0.2 * rng.standard_normal(32000) * _tone(2, 2.0, 16000, amp=1.0), 16000)
        _write(root / "datasets" / "noise" / f"noise{k}.wav", 0.1 * rng.standard_normal(8000 * (k + 1)), 16000)


def test_dns_loader_pairs_test_sets_by_fileid_and_mixes_training_on_the_fly(tmp_path):
    root = tmp_path / "dns2020"
    _dns_tree(root)
    test = get_dataset("dns2020", "test", root=root)
    assert [it["id"] for it in test] == ["fileid_3", "fileid_10", "fileid_251"]
    for item, k in zip(test, (3, 10, 251)):
        assert np.max(np.abs(item["clean"].numpy() - _tone(300 + k, 1.0, 16000))) < 1e-4
        residual = (item["noisy"] - item["clean"]).std().item()
        assert abs(residual - 0.0002 * k) < 0.1 * 0.0002 * k
    reverb = get_dataset("dns2020", "test", root=root / "datasets", test_set="with_reverb")
    assert [it["id"] for it in reverb] == ["fileid_7"]

    train = get_dataset("dns2020", "train", root=root, segment_seconds=0.75, seed=5, snr_range=(0, 10))
    valid = get_dataset("dns2020", "valid", root=root, segment_seconds=0.75)
    assert len(train) == 2 and len(valid) == 1  # file 0 of clean/ and of noise/ is held out
    assert "noise0" not in train[0]["id"] and "noise0" in valid[0]["id"]
    first = [train[i] for i in range(2)]
    assert all(torch.equal(train[i]["noisy"], first[i]["noisy"]) for i in range(2))
    for item in first:
        snr = int(item["id"].split("_snr")[1].split("_")[0])
        level = int(item["id"].split("_tl")[1])
        assert 0 <= snr < 10 and -35 <= level < -15
        clean, noisy = item["clean"].double().numpy(), item["noisy"].double().numpy()
        assert clean.shape == (12000,)
        measured = 10 * np.log10(np.sum(clean ** 2) / np.sum((noisy - clean) ** 2))
        assert abs(measured - snr) < 1e-3
        assert abs(20 * np.log10(np.sqrt(np.mean(noisy ** 2))) - level) < 1e-3
    train.set_epoch(1)
    assert any(not torch.equal(train[i]["noisy"], first[i]["noisy"]) for i in range(2))
    train.set_epoch(0)
    assert all(torch.equal(train[i]["noisy"], first[i]["noisy"]) for i in range(2))


def test_dns_lfs_pointer_files_are_reported(tmp_path):
    folder = tmp_path / "datasets" / "test_set" / "synthetic" / "no_reverb"
    for sub, name in (("clean", "clean_fileid_0.wav"), ("noisy", "x_snr0_tl-20_fileid_0.wav")):
        (folder / sub).mkdir(parents=True)
        (folder / sub / name).write_text("version https://git-lfs.github.com/spec/v1\nsize 320044\n")
    with pytest.raises(DatasetMissing, match="git lfs pull"):
        get_dataset("dns2020", "test", root=tmp_path)

"""Tests of the embedded room task: simulated rooms (selib.data.rooms), mixing with a target that is
not the speech heard, and a small room corpus really built (eSpeak NG, pyroomacoustics, WAV files)."""
import numpy as np
import pytest
import soundfile as sf

from selib.data import build_embedded, get_dataset, load_manifest
from selib.data.embedded import ROOM_VARIANTS
from selib.data.mixing import snr_mix
from selib.data.noise import NOISE_TYPES
from selib.data.rooms import EARLY_MS, early_part, reverberate, shoebox_rir
from selib.data.tts import ACCENTS

from bad_input import assert_one_line_error, run_selib  # tests/helpers

SR = 16000


@pytest.fixture(scope="module")
def room_corpus(tmp_path_factory):
    return build_embedded(tmp_path_factory.mktemp("room"), task="room", n_train=8, n_valid=4, n_test=7,
                          workers=2, verbose=False)


def test_shoebox_rirs_are_deterministic_and_their_early_part_ends_50_ms_after_the_direct_path():
    rir, params = shoebox_rir(np.random.default_rng([3, 1]), (0.3, 0.5))
    again, _ = shoebox_rir(np.random.default_rng([3, 1]), (0.3, 0.5))
    other, _ = shoebox_rir(np.random.default_rng([3, 2]), (0.3, 0.5))
    assert np.array_equal(rir, again) and not np.array_equal(rir[:len(other)], other[:len(rir)])
    assert rir.dtype == np.float32 and np.abs(rir).max() == pytest.approx(1.0)
    assert 0.3 <= params["rt60_target_s"] <= 0.5 and 0.5 <= params["distance_m"] <= 3.0
    assert 0.1 < params["rt60_s"] < 1.5   # measured on the response (the image-source model overshoots)
    peak = int(np.argmax(np.abs(rir)))
    end = peak + int(EARLY_MS * SR / 1000)
    early = early_part(rir)
    assert np.array_equal(early[:end - 80], rir[:end - 80])   # untouched before the 5 ms fade
    assert not early[end:].any()
    assert np.all(np.abs(early[end - 80:end]) <= np.abs(rir[end - 80:end]) + 1e-9)


def test_reverberate_matches_direct_convolution():
    rng = np.random.default_rng(0)
    speech = rng.standard_normal(8000)
    rir = np.exp(-np.arange(4000) / 800.0) * rng.standard_normal(4000)
    rir[40] = 3.0                                          # the direct path
    heard, target = reverberate(speech, rir)
    window = np.zeros(4000)
    stop = 40 + 800                                        # 50 ms after the peak at 16 kHz
    window[:stop] = 1.0
    window[stop - 80:stop] = np.linspace(1.0, 0.0, 80)
    np.testing.assert_allclose(heard, np.convolve(speech, rir)[:8000], atol=1e-9)
    np.testing.assert_allclose(target, np.convolve(speech, rir * window)[:8000], atol=1e-9)


def test_snr_mix_with_a_target_keeps_the_snr_of_the_speech_heard():
    rng = np.random.default_rng(1)
    heard, noise = rng.standard_normal(16000), rng.standard_normal(16000)
    target = 0.5 * heard + 0.1 * rng.standard_normal(16000)
    noisy, out, n, info = snr_mix(heard, noise, 3.0, -28.0, target=target)
    speech = noisy - n
    assert 10 * np.log10(np.sum(speech ** 2) / np.sum(n ** 2)) == pytest.approx(3.0, abs=1e-9)
    gain = speech[0] / heard[0]
    np.testing.assert_allclose(speech, gain * heard, rtol=1e-9)
    np.testing.assert_allclose(out, gain * target, rtol=1e-9)   # the target gets the same gains
    with pytest.raises(ValueError, match="same length"):
        snr_mix(heard, noise, 0.0, -25.0, target=target[:100])


def test_room_corpus_has_rooms_second_noises_and_unseen_talkers(room_corpus):
    manifest = load_manifest(room_corpus)
    assert manifest["params"]["task"] == "room"
    assert {s: len(r) for s, r in manifest["rooms"].items()} == {"train": 8, "valid": 4, "test": 7}
    variants = {}
    for split, items in manifest["splits"].items():
        variants[split] = {it["voice"].split("+")[1] for it in items}
        assert variants[split] <= set(ROOM_VARIANTS[split])
        assert {it["voice"].split("+")[0] for it in items} <= set(ACCENTS)
        for item in items:
            assert item["room"] is None or 0 <= item["room"] < len(manifest["rooms"][split])
            assert item["second_noise"] is None or item["second_noise"]["type"] in NOISE_TYPES
    assert not (variants["train"] & variants["test"] or variants["train"] & variants["valid"])
    items = [it for items in manifest["splits"].values() for it in items]
    assert any(it["room"] is None for it in items) and any(it["room"] is not None for it in items)
    assert any(it["second_noise"] for it in items)


def test_room_mixtures_hold_the_manifest_snr_of_the_speech_heard_and_a_drier_target(room_corpus):
    manifest = load_manifest(room_corpus)
    for items in manifest["splits"].values():
        for item in items:
            noisy, clean, noise = (sf.read(str(room_corpus / item[k]), dtype="float64")[0]
                                   for k in ("noisy", "clean", "noise"))
            heard = noisy - noise
            snr = 10 * np.log10(np.sum(heard ** 2) / np.sum(noise ** 2))
            assert snr == pytest.approx(item["snr_db"], abs=0.05), item["id"]
            if item["room"] is None:
                assert np.max(np.abs(heard - clean)) < 3 / 32768      # dry: the target is what is heard
            else:
                # the target is the early part: the reverberant tail is in what is heard only
                assert np.sum((heard - clean) ** 2) > 1e-3 * np.sum(clean ** 2), item["id"]
    train = get_dataset("embedded-room", "train", root=room_corpus, segment_seconds=1.0)
    assert len(train) == 8 and train[0]["noisy"].shape == (SR,)


def test_cli_verifies_a_room_corpus_and_names_what_it_cannot_build(room_corpus, tmp_path):
    out = run_selib("data", "verify", "embedded-room", "--root", room_corpus)
    assert out.returncode == 0, out.stderr
    assert f"{3 * 19} of {3 * 19} files match the manifest" in out.stdout
    listed = run_selib("data", "list", "--root", tmp_path / "none")
    assert "embedded-room: an offline corpus (selib data build embedded-room)" in listed.stdout
    assert_one_line_error(run_selib("data", "build", "voicebank", "--root", tmp_path), "voicebank",
                          "embedded-room")

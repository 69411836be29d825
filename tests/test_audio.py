"""selib.audio: the STFT helper against an independent numpy DFT, and load/save on real files."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from selib.audio import STFT, AudioError, check_waveform, load, resample, save
import reference  # tests/helpers: independent numpy references

# (n_fft, hop, win_length, window): the default, DCCRN's 25 ms / 6.25 ms / 512-bin STFT, and others.
CONFIGS = [(512, 128, None, "hann"), (512, 100, 400, "hann"), (400, 160, None, "hamming"),
           (256, 64, None, "sqrt-hann"), (64, 16, 48, "hamming"), (32, 32, None, "rect")]


def _lengths(n_fft: int, hop: int) -> list[int]:
    rng = np.random.default_rng(n_fft + hop)
    fixed = [1, 2, 3, hop - 1, hop + 1, n_fft - 1, n_fft + 3, 4 * hop + 1, 1001]
    return sorted({n for n in fixed if n > 0} | set(rng.integers(5, 3000, 4).tolist()))


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("n_fft,hop,win,window", CONFIGS)
def test_stft_round_trip_any_length(n_fft, hop, win, window, center):
    stft = STFT(n_fft, hop, win, window, center)
    gen = torch.Generator().manual_seed(n_fft * hop)
    for length in _lengths(n_fft, hop):
        x = torch.randn(2, length, generator=gen)
        spec = stft(x)
        assert spec.shape == (2, n_fft // 2 + 1, stft.frames(length)), length
        assert spec.is_complex()
        y = stft.inverse(spec, length)
        assert y.shape == x.shape
        assert (y - x).abs().max().item() < 1e-5, (length, (y - x).abs().max().item())
        mono = stft(x[0])  # [T] in, [F, frames] out, the same frames as in the batch
        torch.testing.assert_close(mono, spec[0])  # batched FFTs may round differently
        assert stft.inverse(mono, length).shape == (length,)


@pytest.mark.parametrize("n_fft,hop,win", [(512, 128, 256), (100, 25, 60)])
def test_stft_round_trip_short_window_uncentred(n_fft, hop, win):
    stft = STFT(n_fft, hop, win, "hann", center=False)
    for length in (1, 99, 1000):
        x = torch.randn(1, length, generator=torch.Generator().manual_seed(length))
        spec = stft(x)
        assert spec.shape[-1] == stft.frames(length)
        assert (stft.inverse(spec, length) - x).abs().max().item() < 1e-5


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("n_fft,hop,win", [(512, 128, 512), (512, 100, 400), (64, 16, 48)])
def test_stft_equals_numpy_dft_of_windowed_frames(n_fft, hop, win, center):
    x = np.random.default_rng(1).standard_normal(1234)
    stft = STFT(n_fft, hop, win, "hann", center).double()
    ours = stft(torch.from_numpy(x)).numpy()
    expected = reference.stft(x, n_fft, hop, win, center)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-5)  # the window is stored in float32
    assert stft.n_bins == n_fft // 2 + 1
    assert stft.bin_hz(16000) == 16000 / n_fft


def _tone(sr: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(round(seconds * sr))) / sr)


def _peak_hz_and_amplitude(wav: np.ndarray, sr: int = 16000) -> tuple[float, float]:
    """Frequency (zero-padded FFT peak) and amplitude (RMS·√2) of the middle of a pure tone."""
    mid = wav[len(wav) // 4: 3 * len(wav) // 4]
    n = 16 * len(mid)
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(len(mid)), n))
    return np.argmax(spectrum) * sr / n, float(np.sqrt(2 * np.mean(mid ** 2)))


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_load_resamples_a_real_file_to_16k(tmp_path, sr):
    path = tmp_path / f"tone_{sr}.wav"
    sf.write(path, _tone(sr, 0.5), sr, subtype="PCM_16")
    wav = load(path)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert abs(len(wav) - 8000) <= 1
    freq, amp = _peak_hz_and_amplitude(wav.numpy())
    assert abs(freq - 440.0) < 1.0
    assert abs(amp - 0.5) < 0.005


def test_resampling_is_band_limited(tmp_path):
    """A 12 kHz tone cannot exist at 16 kHz: it must be removed, not folded down to 4 kHz."""
    path = tmp_path / "two_tones.wav"
    sf.write(path, _tone(44100, 0.5) + _tone(44100, 0.5, freq=12000.0), 44100, subtype="FLOAT")
    wav = load(path).numpy()
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    hz = np.fft.rfftfreq(len(wav), 1 / 16000)
    near = lambda f: spectrum[np.abs(hz - f) < 20].max()  # noqa: E731
    assert near(4000) < 1e-2 * near(440)  # without the low-pass filter the two would be equal


def test_resample_is_identity_at_the_same_rate():
    x = torch.randn(100)
    assert resample(x, 16000, 16000) is x


def test_integer_pcm_becomes_float32_in_unit_range(tmp_path):
    int16 = np.array([-32768, -16384, 0, 1, 16384, 32767], dtype=np.int16)
    sf.write(tmp_path / "i16.wav", int16, 16000, subtype="PCM_16")
    wav = load(tmp_path / "i16.wav")
    assert wav.dtype == torch.float32
    np.testing.assert_array_equal(wav.numpy(), int16.astype(np.float64) / 32768)
    assert wav.min() >= -1 and wav.max() < 1

    int32 = np.array([-2 ** 31, -2 ** 30, 0, 2 ** 30, 2 ** 31 - 1], dtype=np.int32)
    sf.write(tmp_path / "i32.wav", int32, 16000, subtype="PCM_32")
    wav = load(tmp_path / "i32.wav")
    assert wav.dtype == torch.float32
    # float32 cannot hold (2^31 - 1) / 2^31, so full scale rounds to 1.0: compare within one ulp
    np.testing.assert_allclose(wav.numpy(), int32 / 2 ** 31, rtol=0, atol=np.finfo(np.float32).eps)
    assert wav.min() >= -1 and wav.max() <= 1


def test_stereo_needs_mix_down(tmp_path):
    left, right = _tone(16000, 0.25), _tone(16000, 0.25, freq=1000.0, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"stereo\.wav.*2 channels.*mix_down=True"):
        load(path)
    mixed = load(path, mix_down=True)
    np.testing.assert_allclose(mixed.numpy(), (left + right) / 2, atol=1e-7)


def _write_bad(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        sf.write(path, np.zeros(0), 16000)
    elif kind in ("nan", "inf"):
        data = _tone(16000, 0.1).astype(np.float32)
        data[[10, 500]] = np.nan if kind == "nan" else np.inf
        sf.write(path, data, 16000, subtype="FLOAT")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    return path


@pytest.mark.parametrize("kind,message", [("empty", "empty"), ("nan", "2 samples are NaN or Inf"),
                                          ("inf", "2 samples are NaN or Inf"),
                                          ("garbage", "cannot be read as audio"),
                                          ("missing", "no such file")])
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, kind, message):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(AudioError, match=message) as err:
        load(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_save_round_trip_and_checks(tmp_path):
    wav = torch.from_numpy(_tone(16000, 0.2)).float()
    path = save(tmp_path / "new" / "folder" / "x.wav", wav)
    assert sf.info(str(path)).subtype == "PCM_16" and sf.info(str(path)).samplerate == 16000
    assert (load(path) - wav).abs().max().item() <= 1 / 32768
    with pytest.raises(AudioError, match=r"y\.wav.*mono waveform"):
        save(tmp_path / "y.wav", wav[None].repeat(2, 1))
    with pytest.raises(AudioError, match=r"z\.wav.*NaN"):
        save(tmp_path / "z.wav", torch.tensor([0.0, float("nan")]))
    assert not (tmp_path / "y.wav").exists() and not (tmp_path / "z.wav").exists()
    with pytest.raises(AudioError, match="enhanced: the audio is empty"):
        check_waveform(torch.zeros(0), "enhanced")

"""Audio in and out of selib: loading, saving, resampling and the one STFT helper.

Inside the library audio is mono float32 at 16 kHz (``[T]`` or ``[B, T]``). Everything that is not
(another rate, several channels, integer PCM, NaN/Inf, an empty file) is converted explicitly here or
rejected with an :class:`AudioError` that names the file, the problem and the fix.

Lessons: ``00_data_and_listening`` (load/save/resample) and ``02_stft_and_masks`` (the STFT helper).
"""
from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from selib.constants import SAMPLE_RATE
from selib.files import not_a_file, write_atomically
RATE_RANGE = (4000, 384000)      # sample rates load() accepts, in Hz (telephone band to 384 kHz studio)
MAX_KERNEL = 4_000_000           # torchaudio's resampling kernel holds new x orig (reduced) taps; above
                                 # this (coprime rates such as 44101 -> 16000) a polyphase FIR is used
MAX_PEAK = 1000.0                # +60 dB above full scale: no recording is this loud; a larger peak is
                                 # damage or a wrong scale (a DCCRN outputs NaN for a 1e20 input)
WAV_PCM_BITS, WAV_FLOAT_BITS = (8, 16, 24, 32), (32, 64)
OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


class AudioError(ValueError):
    """A file or waveform selib cannot use; the message names the file, the problem and the fix."""


def check_waveform(wav: torch.Tensor | np.ndarray, name: str = "waveform") -> None:
    """Raise :class:`AudioError` if ``wav`` is empty, holds NaN/Inf samples or peaks above
    :data:`MAX_PEAK` (audio lies within [-1, 1])."""
    wav = torch.as_tensor(wav)
    if wav.numel() == 0 or wav.shape[-1] == 0:
        raise AudioError(f"{name}: the audio is empty (0 samples); use a file with sound in it.")
    if not torch.isfinite(wav).all():
        bad = int((~torch.isfinite(wav)).sum())
        raise AudioError(f"{name}: {bad} samples are NaN or Inf; re-export the file or drop it.")
    peak = float(wav.abs().max())
    if peak > MAX_PEAK:
        raise AudioError(f"{name}: peak level {peak:.3g} is {20 * math.log10(peak):.0f} dB above full scale "
                         f"(audio lies within [-1, 1]; selib refuses peaks above {MAX_PEAK:g}): the file is "
                         "damaged or wrongly scaled; rescale it to [-1, 1] or re-export it.")


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited resampling along the last axis: torchaudio's windowed-sinc filter, or for rates
    whose reduced ratio would make that kernel huge, scipy's polyphase FIR (``resample_poly``)."""
    if orig_rate == new_rate:
        return wav
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    gcd = math.gcd(orig_rate, new_rate)
    if (orig_rate // gcd) * (new_rate // gcd) <= MAX_KERNEL:
        return AF.resample(wav, orig_rate, new_rate)
    from scipy.signal import resample_poly   # memory linear in the rates, not in their product

    out = resample_poly(wav.detach().cpu().double().numpy(), new_rate // gcd, orig_rate // gcd, axis=-1)
    return torch.from_numpy(out).to(wav.dtype)


def load(path: str | Path, sample_rate: int = SAMPLE_RATE, mix_down: bool = False) -> torch.Tensor:
    """Read an audio file as a mono float32 tensor ``[T]`` at ``sample_rate``.

    Integer PCM is scaled to [-1, 1); any other rate in :data:`RATE_RANGE` is resampled. A file with
    several channels is an error unless ``mix_down=True`` (then the channels are averaged). A file
    shorter than its header says (truncated), a WAV bit depth other than 8/16/24/32-bit PCM or
    32/64-bit float, NaN/Inf samples and empty files raise :class:`AudioError`.
    """
    path = Path(path)
    problem = not_a_file(path)
    if problem:
        raise AudioError(f"{path}: {problem}; give the path of an audio file.")
    try:
        info = sf.info(str(path))
        _check_header(path, info)
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: cannot be read as audio ({err}); use a WAV/FLAC/OGG file.") from err
    if data.shape[0] < info.frames:
        raise AudioError(f"{path}: truncated: the header promises {info.frames} frames but only "
                         f"{data.shape[0]} could be read; re-export or re-download the file.")
    if data.shape[1] > 1:
        if not mix_down:
            raise AudioError(
                f"{path}: has {data.shape[1]} channels but selib works on mono; "
                "pass mix_down=True (CLI: --mix-down) to average the channels."
            )
        data = data.mean(axis=1, keepdims=True)
    wav = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    check_waveform(wav, str(path))
    return resample(wav, rate, sample_rate)


def save(path: str | Path, wav: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE,
         subtype: str = "PCM_16") -> Path:
    """Write a mono waveform ``[T]`` (float, nominally in [-1, 1]) to ``path``; folders are created."""
    path = Path(path)
    wav = torch.as_tensor(wav).detach().float().cpu()
    if wav.dim() != 1:
        raise AudioError(f"{path}: save() takes one mono waveform [T], got shape {tuple(wav.shape)}.")
    check_waveform(wav, str(path))
    check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = OUTPUT_FORMATS[path.suffix.lower()]
    encoded = io.BytesIO()   # encoded in memory, so that file-system errors are Python's OSErrors
    sf.write(encoded, wav.numpy(), sample_rate, format=kind,
             subtype=subtype if sf.check_format(kind, subtype) else None)
    return write_atomically(path, encoded.getbuffer())


def check_output_path(path: str | Path, source: str | Path | None = None, overwrite: bool = False) -> Path:
    """Raise :class:`AudioError` unless an audio file can be written at ``path``: a known extension
    (:data:`OUTPUT_FORMATS`), not a folder, no file in the way of its folders, and not the ``source``
    file itself unless ``overwrite``. Checked before any work, so a mistake costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder; give a file name, e.g. {path / 'enhanced.wav'}.")
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise AudioError(f"{path}: unknown audio extension {path.suffix or '(none)'!r}; "
                         f"name the output *{', *'.join(OUTPUT_FORMATS)}.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AudioError(f"{path}: cannot be created because {parent} is a file, not a folder; "
                                 "choose another output path.")
            break
    if source is not None and path.exists() and not overwrite and path.resolve() == Path(source).resolve():
        raise AudioError(f"{path}: is the input file itself; choose another output path, or pass "
                         "--overwrite to replace the input.")
    return path


def _check_header(path: Path, info) -> None:
    """Refuse sample rates outside :data:`RATE_RANGE`, and WAV files whose bit depth is not a standard
    one or whose data chunk is shorter than its header says (libsndfile reads both silently)."""
    if not RATE_RANGE[0] <= info.samplerate <= RATE_RANGE[1]:
        raise AudioError(f"{path}: sample rate {info.samplerate} Hz is outside the {RATE_RANGE[0]}-"
                         f"{RATE_RANGE[1]} Hz selib accepts; the header is damaged, or re-export the "
                         "audio at 16 kHz.")
    if info.format != "WAV":
        return
    header = _wav_header(path)
    if header is None:
        return
    tag, bits, declared, available = header
    allowed = WAV_FLOAT_BITS if tag == 3 else WAV_PCM_BITS
    if tag in (1, 3) and bits not in allowed:
        raise AudioError(f"{path}: {bits}-bit {'float' if tag == 3 else 'PCM'} samples are not a bit depth "
                         f"selib reads reliably ({'/'.join(map(str, allowed))}); re-export the file as "
                         "16-bit PCM WAV.")
    if declared not in (0, 0xFFFFFFFF) and declared > available:   # 0 and 0xFFFFFFFF: length unknown
        raise AudioError(f"{path}: truncated: the header promises {declared} bytes of audio but the file "
                         f"holds {available}; re-export or re-download the file.")


def _wav_header(path: Path) -> tuple[int, int, int, int] | None:
    """``(format tag, bits per sample, data bytes declared, data bytes present)`` of a RIFF/WAVE file
    (WAVE_FORMAT_EXTENSIBLE resolved to its sub-format), or None when it is not a plain RIFF file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"RIFF" or (f.read(4), f.read(4))[1] != b"WAVE":
            return None
        tag = bits = None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"fmt " and length >= 16:
                fmt = f.read(min(length, 40))
                tag, bits = struct.unpack("<H", fmt[:2])[0], struct.unpack("<H", fmt[14:16])[0]
                if tag == 0xFFFE and len(fmt) >= 26:
                    tag = struct.unpack("<H", fmt[24:26])[0]
            elif chunk == b"data":
                return (tag, bits, length, size - offset - 8) if tag is not None else None
            offset += 8 + length + (length & 1)
    return None


_WINDOWS = {
    "hann": lambda n: torch.hann_window(n, periodic=True, dtype=torch.float64),
    "sqrt-hann": lambda n: torch.hann_window(n, periodic=True, dtype=torch.float64).sqrt(),
    "hamming": lambda n: torch.hamming_window(n, periodic=True, dtype=torch.float64),
    "rect": lambda n: torch.ones(n, dtype=torch.float64),
}


class STFT(torch.nn.Module):
    """The STFT/iSTFT pair every model, loss and plot in selib uses (lesson ``02_stft_and_masks``).

    ``forward(x [B, T] or [T]) -> complex [B, n_fft // 2 + 1, frames]`` and
    ``inverse(X, length) -> [B, length]`` are exact inverses for any input length: the signal is
    zero-padded at the end to a whole number of hops, and with ``center=False`` also by
    ``win_length - hop_length`` at both ends (as the DCCRN author code does), so every sample is
    covered by fully overlapping frames. Windows are periodic (``fftbins=True``).
    """

    def __init__(self, n_fft: int = 512, hop_length: int = 128, win_length: int | None = None,
                 window: str = "hann", center: bool = True):
        super().__init__()
        win_length = win_length or n_fft
        if window not in _WINDOWS:
            raise ValueError(f"unknown STFT window {window!r}; choose one of {sorted(_WINDOWS)}")
        if not 0 < hop_length <= win_length <= n_fft:
            raise ValueError(
                f"STFT needs 0 < hop_length <= win_length <= n_fft, got hop_length={hop_length}, "
                f"win_length={win_length}, n_fft={n_fft}"
            )
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.window_name, self.center = window, center
        self.register_buffer("window", _WINDOWS[window](win_length).float(), persistent=False)

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def bin_hz(self, sample_rate: int = SAMPLE_RATE) -> float:
        """Width of one frequency bin in Hz."""
        return sample_rate / self.n_fft

    def pads(self, length: int) -> tuple[int, int]:
        tail = (-length) % self.hop_length
        if self.center:
            return 0, tail
        # torch.stft centres the window in the n_fft frame; pad so that the first and last samples
        # sit where win_length - hop_length samples of fully overlapping frames precede/follow them.
        offset, edge = (self.n_fft - self.win_length) // 2, self.win_length - self.hop_length
        return offset + edge, self.n_fft - self.win_length - offset + edge + tail

    def frames(self, length: int) -> int:
        """Number of frames ``forward`` returns for a signal of ``length`` samples."""
        left, right = self.pads(length)
        padded = length + left + right
        if self.center:
            return 1 + (padded - self.n_fft % 2) // self.hop_length
        return 1 + max(0, padded - self.n_fft) // self.hop_length

    def frame_window(self, dtype: torch.dtype) -> torch.Tensor:
        """The window zero-padded to ``n_fft`` samples, centred in the frame as torch.stft does."""
        offset = (self.n_fft - self.win_length) // 2
        return torch.nn.functional.pad(self.window.to(dtype), (offset, self.n_fft - self.win_length - offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.dim() == 1
        x = x.unsqueeze(0) if squeeze else x
        if x.dim() != 2:
            raise ValueError(f"STFT takes [T] or [B, T] waveforms, got shape {tuple(x.shape)}")
        left, right = self.pads(x.shape[-1])
        if self.center:  # torch.stft's centring: half a frame of zeros at both ends
            left, right = left + self.n_fft // 2, right + self.n_fft // 2
        else:
            # Without centring, frames are n_fft long: make sure at least one fits.
            right += max(0, self.n_fft - (x.shape[-1] + left + right))
        x = torch.nn.functional.pad(x, (left, right))
        # torch.stft's own framing, written out as real tensors so that the complex spectrum is the
        # last step: ONNX export (lesson 11) handles complex tensors only as outputs of an FFT.
        frames = x.unfold(-1, self.n_fft, self.hop_length) * self.frame_window(x.dtype)
        spec = torch.fft.rfft(frames, dim=-1).transpose(1, 2)
        return spec[0] if squeeze else spec

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        squeeze = spec.dim() == 2
        spec = spec.unsqueeze(0) if squeeze else spec
        left, right = self.pads(length)
        padded = length + left + right
        if self.center:  # the frames also cover half a frame before and after the padded signal
            left, padded = left + self.n_fft // 2, padded + 2 * (self.n_fft // 2)
        else:
            padded = max(padded, self.n_fft)
        x = self._overlap_add(spec, padded)[..., left:left + length]
        return x[0] if squeeze else x

    def _overlap_add(self, spec: torch.Tensor, padded: int) -> torch.Tensor:
        """Windowed overlap-add with the squared-window envelope divided out (what torch.istft does,
        which rejects the zero-valued envelope of ``center=False`` padding and cannot be exported to
        ONNX); only padded samples have a zero envelope."""
        window = self.frame_window(spec.real.dtype)
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * window[:, None]
        n_frames = frames.shape[-1]
        fold = dict(output_size=(1, padded), kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        out = torch.nn.functional.fold(frames, **fold).reshape(frames.shape[0], padded)
        envelope = torch.nn.functional.fold((window ** 2)[None, :, None].expand(1, -1, n_frames), **fold)
        envelope = envelope.reshape(padded)
        return out / torch.where(envelope > 1e-11, envelope, torch.ones_like(envelope))

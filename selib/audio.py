"""Audio in and out of selib: loading, saving, resampling and the one STFT helper.

Inside the library audio is mono float32 at 16 kHz (``[T]`` or ``[B, T]``). Everything that is not
(another rate, several channels, integer PCM, NaN/Inf, an empty file) is converted explicitly here or
rejected with an :class:`AudioError` that names the file, the problem and the fix.

Lessons: ``00_data_and_listening`` (load/save/resample) and ``02_stft_and_masks`` (the STFT helper).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A file or waveform selib cannot use; the message names the file, the problem and the fix."""


def check_waveform(wav: torch.Tensor | np.ndarray, name: str = "waveform") -> None:
    """Raise :class:`AudioError` if ``wav`` is empty or holds NaN/Inf samples."""
    wav = torch.as_tensor(wav)
    if wav.numel() == 0 or wav.shape[-1] == 0:
        raise AudioError(f"{name}: the audio is empty (0 samples); use a file with sound in it.")
    if not torch.isfinite(wav).all():
        bad = int((~torch.isfinite(wav)).sum())
        raise AudioError(f"{name}: {bad} samples are NaN or Inf; re-export the file or drop it.")


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited resampling (torchaudio's windowed-sinc polyphase filter) along the last axis."""
    if orig_rate == new_rate:
        return wav
    return AF.resample(wav, int(orig_rate), int(new_rate))


def load(path: str | Path, sample_rate: int = SAMPLE_RATE, mix_down: bool = False) -> torch.Tensor:
    """Read an audio file as a mono float32 tensor ``[T]`` at ``sample_rate``.

    Integer PCM is scaled to [-1, 1); any other rate is resampled. A file with several channels is an
    error unless ``mix_down=True`` (then the channels are averaged).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file; check the path.")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: cannot be read as audio ({err}); use a WAV/FLAC/OGG file.") from err
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
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav.numpy(), sample_rate, subtype=subtype)
    return path


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

    def _pads(self, length: int) -> tuple[int, int]:
        tail = (-length) % self.hop_length
        if self.center:
            return 0, tail
        # torch.stft centres the window in the n_fft frame; pad so that the first and last samples
        # sit where win_length - hop_length samples of fully overlapping frames precede/follow them.
        offset, edge = (self.n_fft - self.win_length) // 2, self.win_length - self.hop_length
        return offset + edge, self.n_fft - self.win_length - offset + edge + tail

    def frames(self, length: int) -> int:
        """Number of frames ``forward`` returns for a signal of ``length`` samples."""
        left, right = self._pads(length)
        padded = length + left + right
        if self.center:
            return 1 + (padded - self.n_fft % 2) // self.hop_length
        return 1 + max(0, padded - self.n_fft) // self.hop_length

    def _frame_window(self, dtype: torch.dtype) -> torch.Tensor:
        """The window zero-padded to ``n_fft`` samples, centred in the frame as torch.stft does."""
        offset = (self.n_fft - self.win_length) // 2
        return torch.nn.functional.pad(self.window.to(dtype), (offset, self.n_fft - self.win_length - offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.dim() == 1
        x = x.unsqueeze(0) if squeeze else x
        if x.dim() != 2:
            raise ValueError(f"STFT takes [T] or [B, T] waveforms, got shape {tuple(x.shape)}")
        left, right = self._pads(x.shape[-1])
        if self.center:  # torch.stft's centring: half a frame of zeros at both ends
            left, right = left + self.n_fft // 2, right + self.n_fft // 2
        else:
            # Without centring, frames are n_fft long: make sure at least one fits.
            right += max(0, self.n_fft - (x.shape[-1] + left + right))
        x = torch.nn.functional.pad(x, (left, right))
        # torch.stft's own framing, written out as real tensors so that the complex spectrum is the
        # last step: ONNX export (lesson 11) handles complex tensors only as outputs of an FFT.
        frames = x.unfold(-1, self.n_fft, self.hop_length) * self._frame_window(x.dtype)
        spec = torch.fft.rfft(frames, dim=-1).transpose(1, 2)
        return spec[0] if squeeze else spec

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        squeeze = spec.dim() == 2
        spec = spec.unsqueeze(0) if squeeze else spec
        left, right = self._pads(length)
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
        window = self._frame_window(spec.real.dtype)
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * window[:, None]
        n_frames = frames.shape[-1]
        fold = dict(output_size=(1, padded), kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        out = torch.nn.functional.fold(frames, **fold).reshape(frames.shape[0], padded)
        envelope = torch.nn.functional.fold((window ** 2)[None, :, None].expand(1, -1, n_frames), **fold)
        envelope = envelope.reshape(padded)
        return out / torch.where(envelope > 1e-11, envelope, torch.ones_like(envelope))

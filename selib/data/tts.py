"""Offline text-to-speech for the embedded corpus: eSpeak NG from the ``espeakng-loader`` wheel.

The C library is driven through ctypes in synchronous mode (``espeak_Initialize`` with
``AUDIO_OUTPUT_SYNCHRONOUS``, a ``espeak_SetSynthCallback`` collecting the samples, ``espeak_Synth``).
Initialisation seeds eSpeak's noise generator (breathy variants) from the clock, so it is re-seeded, and
eSpeak NG keeps internal synthesis state (pitch flutter, filter memories) from one utterance to the next,
so an utterance depends on everything synthesised before it in the same process. To make the corpus
reproducible, every batch of utterances is synthesised in a *fresh* worker process (this file run as a
script) in a fixed order; batches have a fixed size, so the output never depends on how many workers run.

Voices are ``<accent>+<variant>`` (``en-us+f3``); pitch (0-100, eSpeak's scale) and rate (words per
minute) are set per utterance. Output is 22,050 Hz, resampled to 16 kHz. Lesson ``00_data_and_listening``.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ESPEAK_RATE = 22050
# Train, validation and test voices use disjoint variant sets (unseen "speakers" at test time).
TRAIN_VOICES = ("en-us+m1", "en-us+f1", "en+m2", "en+f2", "en-us+m3", "en-gb-x-rp+f3", "en-gb-x-rp+m4",
                "en-us-nyc+steph", "en-us+klatt", "en-gb-scotland+m5", "en-029+linda", "en+klatt2")
VALID_VOICES = ("en-us+m6", "en+f4", "en-gb-x-rp+klatt4")
TEST_VOICES = ("en-us+m7", "en-us+f5", "en-gb-scotland+belinda", "en-029+m8", "en+Andrea",
               "en-us-nyc+klatt3")
VOICES = {"train": TRAIN_VOICES, "valid": VALID_VOICES, "test": TEST_VOICES}
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
BATCH = 96  # utterances per fresh worker process; part of what fixes the output, never change silently

# eSpeak NG C API constants (speak_lib.h).
_SYNCHRONOUS, _DONT_EXIT, _UTF8, _POS_CHARACTER = 2, 0x8000, 1, 1
_RATE, _PITCH = 1, 3


class TTSError(RuntimeError):
    """eSpeak NG could not be loaded or rejected a voice or a text."""


@dataclass(frozen=True)
class Utterance:
    """One sentence to synthesise: eSpeak voice ``accent+variant``, pitch 0-100, rate in words/min."""
    text: str
    voice: str = "en-us"
    pitch: int = 50
    rate: int = 175


def load_sentences() -> list[str]:
    """The sentence list shipped with selib (``selib/data/sentences.txt``, written for selib)."""
    lines = (Path(__file__).with_name("sentences.txt")).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


def synthesize(text: str, voice: str = "en-us", pitch: int = 50, rate: int = 175,
               sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text`` with eSpeak NG; float32 mono at ``sample_rate`` (lesson 00_data_and_listening)."""
    return synthesize_many([Utterance(text, voice, pitch, rate)], sample_rate=sample_rate)[0]


def synthesize_many(utterances: list[Utterance], sample_rate: int = 16000,
                    workers: int | None = None) -> list[np.ndarray]:
    """Synthesise ``utterances`` in fresh worker processes (batches of :data:`BATCH`, ``workers`` at
    a time, default ``min(2, cpu_count)``); float32 mono arrays at ``sample_rate``, same order.
    The result depends only on the list, not on ``workers``."""
    workers = workers or min(2, os.cpu_count() or 1)
    batches = [utterances[i:i + BATCH] for i in range(0, len(utterances), BATCH)]
    out: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="selib-tts-") as tmp:
        for start in range(0, len(batches), workers):
            procs = []
            for k, batch in enumerate(batches[start:start + workers], start):
                job, result = Path(tmp, f"{k}.json"), Path(tmp, f"{k}.npz")
                job.write_text(json.dumps([asdict(u) for u in batch]), encoding="utf-8")
                # -I: isolated mode, so the worker does not put selib/data on sys.path nor import selib.
                cmd = [sys.executable, "-I", str(Path(__file__).resolve()), str(job), str(result)]
                procs.append((subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True), result))
            finished = [(proc.communicate()[1], proc.returncode, result) for proc, result in procs]
            for err, code, result in finished:
                if code != 0:
                    raise TTSError(f"eSpeak NG worker failed (exit {code}): {err.strip()}")
                with np.load(result) as data:
                    out.extend(_resample([data[f"u{i}"] for i in range(len(data.files))], sample_rate))
    return out


def _resample(raw: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
    """int16 utterances at 22,050 Hz -> float32 at ``sample_rate``, resampled as one zero-padded batch."""
    from selib.audio import resample  # here, not at the top: the worker script must not import torch
    import torch

    batch = torch.zeros(len(raw), max(len(x) for x in raw))
    for row, x in zip(batch, raw):
        row[:len(x)] = torch.from_numpy(x.astype(np.float32) / 32768.0)
    wav = resample(batch, ESPEAK_RATE, sample_rate).numpy()
    return [wav[i, :math.ceil(len(x) * sample_rate / ESPEAK_RATE)] for i, x in enumerate(raw)]


class _ESpeak:
    """The eSpeak NG library in synchronous mode; used only inside a worker process."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as err:
            raise TTSError("the espeakng-loader wheel is missing; run `pip install espeakng-loader`"
                           ) from err
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), _DONT_EXIT)
        if rate != ESPEAK_RATE:
            raise TTSError(f"eSpeak NG failed to initialise (returned {rate}); reinstall espeakng-loader")
        lib.espeak_ng_SetRandSeed(1)  # initialisation seeds the breath-noise generator from the clock
        self.lib, self.chunks = lib, []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                         ctypes.c_void_p)
        self.callback = callback_type(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def speak(self, u: Utterance) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(u.voice.encode()) != 0:
            raise TTSError(f"eSpeak NG has no voice {u.voice!r}; use '<accent>+<variant>' such as "
                           f"'en-us+f3' (accents: {', '.join(ACCENTS)})")
        if not (0 <= u.pitch <= 100 and 80 <= u.rate <= 450):
            raise TTSError(f"pitch must be in 0..100 and rate in 80..450 words/min, got {u.pitch}, {u.rate}")
        self.lib.espeak_SetParameter(_RATE, int(u.rate), 0)
        self.lib.espeak_SetParameter(_PITCH, int(u.pitch), 0)
        text = u.text.encode("utf-8")
        self.chunks = []
        if self.lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _UTF8, None, None) != 0:
            raise TTSError(f"eSpeak NG could not synthesise {u.text!r}")
        if not self.chunks:
            raise TTSError(f"eSpeak NG produced no audio for {u.text!r}; give it some words to say")
        return np.concatenate(self.chunks)


def _worker(job: str, out: str) -> None:
    engine = _ESpeak()
    utterances = [Utterance(**u) for u in json.loads(Path(job).read_text(encoding="utf-8"))]
    np.savez(out, **{f"u{i}": engine.speak(u) for i, u in enumerate(utterances)})


if __name__ == "__main__":
    try:
        _worker(sys.argv[1], sys.argv[2])
    except TTSError as err:
        sys.exit(str(err))

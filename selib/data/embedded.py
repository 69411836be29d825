"""The embedded offline corpus: eSpeak NG speech + synthetic noise, mixed with the DNS rules.

``build_embedded`` writes ``<root>/<split>/{noisy,clean,noise}/<id>.wav`` (16 kHz, 16-bit PCM) and
``<root>/manifest.json`` (every file with its SHA-256, duration, SNR, level, voice, text, noise type and
noise parameters, plus the build parameters). The same parameters give byte-identical files and manifest;
a second call with the same parameters and all files present does nothing.

Splits differ in everything a model could memorise: disjoint voice sets (:data:`selib.data.tts.VOICES`),
disjoint sentences (every 10th line of the sentence list is test, the next one valid), and noise drawn
from split-specific seeds, with babble made of that split's voices and speech-shaped noise following that
split's long-term spectrum. Train SNRs are drawn from {-5, 0, 5, 10, 15} dB; valid and test cycle through the
same SNRs so every test condition has the same number of mixtures.

``task="room"`` builds the room task (dataset ``embedded-room``, docs/datasets.md "Room task") with the
same machinery: many more talkers, a simulated room for most mixtures (the target keeps the direct path and
early reflections, :mod:`selib.data.rooms`) and a second noise for half of them (:data:`ROOM`).
Lesson ``00_data_and_listening``.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import soundfile as sf

from selib.audio import check_waveform
from selib.constants import SAMPLE_RATE, SPLITS
from selib.data.mixing import LEVEL_RANGE, TEST_SNRS, TRAIN_SNRS, snr_mix
from selib.data.noise import NOISE_TYPES, ltas, make_noise
from selib.data.rooms import reverberate, shoebox_rir
from selib.data.tts import ACCENTS, VOICES, Utterance, load_sentences, synthesize_many

FORMAT = 1
BABBLE_POOL = 16      # TTS utterances per split that babble noise is built from
MIN_WORDS = 9         # shorter sentences get a second one appended, so utterances last about 2-4 s
_CODE = {"train": 0, "valid": 1, "test": 2}
TASKS = ("dry", "room")
# The room task (dataset ``embedded-room``): many more talkers (any accent with a split's own eSpeak
# variants), wider pitch and rate, a simulated room for most mixtures (rooms.py) and a second noise
# for half of them. Disjoint variants, sentences, rooms and noise seeds per split.
ROOM_VARIANTS = {
    "train": ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt", "klatt2", "steph", "linda", "Alex",
              "Andy", "Annie", "adam", "anika", "aunty", "benjamin", "boris", "caleb", "david", "ed", "edward",
              "gustave", "ian", "iven", "john", "max", "michel", "norbert", "paul", "pedro", "quincy", "rob",
              "robert", "shelby", "travis", "victor", "zac", "Gene", "Hugo", "Jacky", "Lee", "Marco", "Mario",
              "Michael", "Mike", "Reed", "Storm"),
    "valid": ("m6", "f4", "klatt4", "Alicia", "Denis", "grandpa", "steph2", "sandro"),
    "test": ("m7", "m8", "f5", "belinda", "Andrea", "klatt3", "grandma", "iven2", "kaukovalta", "marcelo",
             "miguel", "mike2", "steph3"),
}
# What each embedded dataset name builds (``selib.data.get_dataset``).
EMBEDDED = {"embedded": {"task": "dry"}, "embedded-room": {"task": "room", "n_train": 3000}}
ROOM = {"pitch": [20, 80], "rate": [130, 210], "rt60_range": [0.2, 0.8], "dry_share": 0.2,
        "rooms": {"train": 200, "valid": 24, "test": 40},   # per split, at most one per mixture
        "second_noise_share": 0.5, "second_noise_db": [-10.0, 0.0]}


def build_embedded(root: str | Path = "data/embedded", seed: int = 0, n_train: int = 1000,
                   n_valid: int = 100, n_test: int = 100, train_snrs=TRAIN_SNRS, test_snrs=TEST_SNRS,
                   min_seconds: float = 2.0, max_seconds: float = 4.0, workers: int | None = None,
                   verbose: bool = True, task: str = "dry") -> Path:
    """Build (or reuse) the embedded corpus under ``root`` and return ``root`` (lesson 00).

    ``n_*`` are the mixtures per split; utterances are cut to ``max_seconds`` and zero-padded to
    ``min_seconds``; ``workers`` TTS processes run at once (the output does not depend on it).
    ``task``: ``dry`` (12 training voices, one noise, no room) or ``room`` (:data:`ROOM`).
    """
    if task not in TASKS:
        raise ValueError(f"unknown embedded task {task!r}; choose one of {TASKS}")
    root = Path(root)
    params = {"seed": int(seed), "sizes": {"train": int(n_train), "valid": int(n_valid), "test": int(n_test)},
              "train_snrs": [float(s) for s in train_snrs], "test_snrs": [float(s) for s in test_snrs],
              "level_range": list(LEVEL_RANGE), "min_seconds": float(min_seconds),
              "max_seconds": float(max_seconds), "noise_types": list(NOISE_TYPES),
              "voices": {k: list(v) for k, v in VOICES.items()}, "babble_pool": BABBLE_POOL,
              "espeakng_loader": version("espeakng-loader"), "format": FORMAT}
    if task == "room":   # the dry corpus's parameters (and so its manifest) stay as they were
        params.update(task="room", room=ROOM, accents=list(ACCENTS),
                      voices={k: list(v) for k, v in ROOM_VARIANTS.items()})
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds} and {max_seconds}")
    if min(n_train, n_valid, n_test) < 1:
        raise ValueError(f"every split needs at least one mixture, got sizes {params['sizes']}")
    if _is_built(root, params):
        return root
    start = time.perf_counter()
    plans = {split: _plan(split, params) for split in SPLITS}
    requests = [u for split in SPLITS for u in plans[split]["speech"] + plans[split]["babble"]]
    audio = iter(synthesize_many(requests, SAMPLE_RATE, workers))
    for split in SPLITS:
        plans[split]["speech"] = [(u, _fit(next(audio), min_seconds, max_seconds)) for u in plans[split]["speech"]]
        plans[split]["babble"] = [_trim(next(audio)) for _ in plans[split]["babble"]]
        if task == "room":
            rng = np.random.default_rng([params["seed"], _CODE[split], 2])
            n_rooms = min(ROOM["rooms"][split], params["sizes"][split])
            plans[split]["rooms"] = [shoebox_rir(rng, ROOM["rt60_range"]) for _ in range(n_rooms)]

    for path in [root / "manifest.json", *(root / s for s in SPLITS)]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    manifest = {"format": FORMAT, "sample_rate": SAMPLE_RATE, "params": params,
                "splits": {split: _mix_split(root, split, plans[split], params) for split in SPLITS}}
    if task == "room":
        manifest["rooms"] = {split: [info for _, info in plans[split]["rooms"]] for split in SPLITS}
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(root / "manifest.json")
    if verbose:
        n = sum(params["sizes"].values())
        print(f"built the embedded corpus ({n} mixtures) in {root} in {time.perf_counter() - start:.1f} s")
    return root


def load_manifest(root: str | Path) -> dict:
    """The parsed ``manifest.json`` of an embedded corpus; a clear error if it is missing."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no embedded corpus here; build it with "
                                f"selib.data.build_embedded({str(Path(root))!r}) (takes seconds).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: the corpus manifest is damaged ({err}); delete it and rebuild the "
                         f"corpus with selib.data.build_embedded({str(Path(root))!r}).") from None


def verify_embedded(root: str | Path = "data/embedded") -> tuple[int, list[str]]:
    """Check every file of the corpus manifest against its SHA-256 (``selib data verify``); returns
    the number of files checked and one line per missing or changed file."""
    root = Path(root)
    manifest = load_manifest(root)
    checked, problems = 0, []
    for items in manifest["splits"].values():
        for item in items:
            for key, digest in item.get("sha256", {}).items():
                path = root / item[key]
                checked += 1
                if not path.is_file():
                    problems.append(f"{path}: missing")
                elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                    problems.append(f"{path}: SHA-256 differs from the manifest (the file changed)")
    return checked, problems


def snr_by_id(root: str | Path, split: str = "test") -> dict[str, float]:
    """The mixing SNR (dB) of every item of ``split``, by item id (the per-SNR rows of
    ``selib.report``)."""
    return {item["id"]: float(item["snr_db"]) for item in load_manifest(root)["splits"][split]}


def _is_built(root: Path, params: dict) -> bool:
    path = root / "manifest.json"
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    if manifest.get("params") != json.loads(json.dumps(params)):
        return False
    return all((root / item[key]).is_file() for items in manifest["splits"].values()
               for item in items for key in ("noisy", "clean", "noise"))


def _sentences(split: str) -> list[str]:
    """Disjoint sentence sets: line j goes to test if j % 10 == 0, valid if j % 10 == 1, else train."""
    lines = load_sentences()
    keep = {"test": lambda j: j % 10 == 0, "valid": lambda j: j % 10 == 1, "train": lambda j: j % 10 > 1}
    return [s for j, s in enumerate(lines) if keep[split](j)]


def _plan(split: str, params: dict) -> dict:
    """What to say, with which voice, pitch and rate: the speech and babble-pool utterances of a split."""
    rng = np.random.default_rng([params["seed"], _CODE[split], 0])
    sentences, voices = _sentences(split), params["voices"][split]
    room = params.get("room")
    (pitch_lo, pitch_hi), (rate_lo, rate_hi) = (room["pitch"], room["rate"]) if room else ((30, 70), (150, 195))

    def utterance() -> Utterance:
        text = sentences[rng.integers(len(sentences))]
        while len(text.split()) < MIN_WORDS:
            text += " " + sentences[rng.integers(len(sentences))]
        voice = voices[rng.integers(len(voices))]
        if room:
            voice = f"{params['accents'][rng.integers(len(params['accents']))]}+{voice}"
        return Utterance(text, voice, int(rng.integers(pitch_lo, pitch_hi + 1)),
                         int(rng.integers(rate_lo, rate_hi + 1)))

    speech = [utterance() for _ in range(params["sizes"][split])]
    return {"speech": speech, "babble": [utterance() for _ in range(BABBLE_POOL)]}


def _trim(x: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """Cut leading and trailing silence (below 0.1 % of the peak), keeping ``margin`` seconds."""
    loud = np.flatnonzero(np.abs(x) > 1e-3 * np.abs(x).max())
    pad = int(margin * SAMPLE_RATE)
    return x[max(0, loud[0] - pad):loud[-1] + pad + 1]


def _fit(x: np.ndarray, min_seconds: float, max_seconds: float) -> np.ndarray:
    """Trimmed speech cut to ``max_seconds`` (20 ms fade-out) and zero-padded to ``min_seconds``."""
    x = _trim(x)
    longest, shortest = int(max_seconds * SAMPLE_RATE), int(min_seconds * SAMPLE_RATE)
    if len(x) > longest:
        x = x[:longest].copy()
        fade = int(0.02 * SAMPLE_RATE)
        x[-fade:] *= np.linspace(1.0, 0.0, fade)
    return np.pad(x, (0, max(0, shortest - len(x))))


def _write_wav(path: Path, wav: np.ndarray) -> str:
    """Write 16-bit PCM at 16 kHz and return its SHA-256. Encoding in memory avoids the fsync that
    ``soundfile`` issues when it closes a real file (6x slower for thousands of small files)."""
    check_waveform(wav, str(path))
    buffer = io.BytesIO()
    sf.write(buffer, wav, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _mix_split(root: Path, split: str, plan: dict, params: dict) -> list[dict]:
    """Noise, mix and write every mixture of ``split``; returns its manifest entries."""
    speech = plan["speech"]
    spectrum = plan["spectrum"] = ltas([x for _, x in speech])
    kinds = params["noise_types"]
    items = []
    for i, (utt, clean) in enumerate(speech):
        rng = np.random.default_rng([params["seed"], _CODE[split], 1, i])
        kind = kinds[i % len(kinds)]
        if split == "train":
            snr = float(rng.choice(params["train_snrs"]))
        else:
            snr = params["test_snrs"][i % len(params["test_snrs"])]
        level = round(float(rng.uniform(*params["level_range"])), 2)
        noise, noise_params = make_noise(kind, rng, len(clean), spectrum=spectrum, pool=plan["babble"])
        heard, target, extra = clean, None, {}
        if "room" in params:
            heard, target, noise, extra = _room(rng, clean, noise, plan, params)
        noisy, clean_out, noise, info = snr_mix(heard, noise, snr, level, target=target)
        item_id = f"{split}_{i:04d}"
        item = {"id": item_id, "seconds": round(len(clean) / SAMPLE_RATE, 4), "samples": len(clean),
                "voice": utt.voice, "pitch": utt.pitch, "rate": utt.rate, "text": utt.text,
                "noise_type": kind, "noise_params": noise_params, **extra, **info, "sha256": {}}
        for key, wav in (("noisy", noisy), ("clean", clean_out), ("noise", noise)):
            item[key] = f"{split}/{key}/{item_id}.wav"
            item["sha256"][key] = _write_wav(root / item[key], wav)
        items.append(item)
    return items


def _room(rng: np.random.Generator, clean: np.ndarray, noise: np.ndarray, plan: dict, params: dict
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The room task's additions to one mixture: a room from the split's pool (or none, for
    ``dry_share`` of them) and, for some, a second noise; returns ``(heard speech, target, noise,
    manifest fields)``."""
    room, kinds = params["room"], params["noise_types"]
    extra: dict = {"room": None, "second_noise": None}
    heard = target = clean
    if rng.random() >= room["dry_share"]:
        extra["room"] = int(rng.integers(len(plan["rooms"])))
        heard, target = reverberate(clean, plan["rooms"][extra["room"]][0])
    if rng.random() < room["second_noise_share"]:
        kind = kinds[rng.integers(len(kinds))]
        second, _ = make_noise(kind, rng, len(clean), spectrum=plan["spectrum"], pool=plan["babble"])
        db = float(rng.uniform(*room["second_noise_db"]))
        noise = noise / np.sqrt(np.mean(noise ** 2)) + 10 ** (db / 20) * second / np.sqrt(np.mean(second ** 2))
        extra["second_noise"] = {"type": kind, "relative_db": round(db, 2)}
    return heard, target, noise, extra

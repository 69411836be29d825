"""Checkpoints: the one place that writes them, checks them and rebuilds a model from one
(lesson ``06_training_teacher_student``; ``11_results_and_deployment`` loads them to enhance files).

A selib checkpoint is a ``torch.save`` zip file holding at least ``model`` (the state dict) and
``config`` (the resolved config it was trained with). :func:`save_checkpoint` writes it atomically.
:func:`load_checkpoint` refuses, with one line that names the file and what to do, anything that is
not such a file: a missing or truncated file, bytes changed on disk (every zip member's CRC-32 is
verified before torch reads it; a zip structure torch's reader rejects is damage too), a pickle that
``torch.load(..., weights_only=True)`` will not run (a legacy or malicious file) and a file without
the selib keys. :func:`load_model` rebuilds the model.
"""
from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import torch

from selib.files import not_a_file, write_atomically

REQUIRED_KEYS = ("model", "config")
ZIP_READER_FAILED = "PytorchStreamReader failed reading"   # how torch's errors on a damaged archive begin
DEFAULT_FIX = "pass the best.pt or last.pt that selib wrote for a run (selib train CONFIG makes one)"


class CheckpointError(ValueError):
    """A file selib will not load as a checkpoint; the message names the file, the problem and the fix."""


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`selib.files.write_atomically`). It is serialised
    in memory first, so file-system errors are ``OSError``s naming the file (torch's own writer
    reports them as bare RuntimeErrors)."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return write_atomically(path, buffer.getbuffer())


SHIPPED_KEYS = ("model", "config", "step")   # what a model needs outside its run folder


def save_model_only(source: str | Path, dest: str | Path, keys: tuple[str, ...] = SHIPPED_KEYS) -> Path:
    """Copy the run checkpoint ``source`` to ``dest`` with only its weights, config and step (no
    optimiser, scheduler or RNG state: a third of the size; ``keys`` names what is kept), for shipping a
    trained model with the repository; :func:`load_model` reads it like the original (lesson
    ``11_results_and_deployment``)."""
    state = load_checkpoint(source)
    return save_checkpoint({key: state[key] for key in keys if key in state}, dest)


def verify_checkpoint(path: str | Path, fix: str = DEFAULT_FIX) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete zip file whose members all pass
    their CRC-32 check (what ``torch.save`` writes; torch itself does not check the CRCs)."""
    path = Path(path)
    problem = not_a_file(path)
    if problem:
        raise CheckpointError(f"{path}: {problem}; {fix}.")
    try:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: not a selib checkpoint (not a complete torch zip file: "
                                  f"truncated, a legacy torch format or another kind of file); {fix}.")
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as err:
        raise _damaged(path, f"its zip structure is broken: {err}", fix) from None
    if bad is not None:
        raise _damaged(path, f"{bad} fails its CRC check", fix)


def _damaged(path: Path, what: str, fix: str) -> CheckpointError:
    return CheckpointError(f"{path}: the checkpoint is damaged ({what}); its bytes changed on disk or in "
                           f"transfer: use an intact copy, or {fix}.")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", fix: str = DEFAULT_FIX,
                    required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """The verified content of a selib checkpoint, loaded with ``torch.load(..., weights_only=True)``;
    ``fix`` is the advice printed with any error (e.g. what to do with a broken ``last.pt``), and
    ``required`` the keys it must hold. A failure of torch.load is worded by its kind: a refused
    pickle (distrust), an archive torch's zip reader rejects (damage) or another file torch cannot read."""
    path = Path(path)
    verify_checkpoint(path, fix)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never pass that on
        raise CheckpointError(
            f"{path}: not a trusted selib checkpoint: torch.load(weights_only=True) refused it "
            f"(it holds Python objects other than tensors and plain data, as a legacy or a malicious file "
            f"does); {fix}.") from None
    except Exception as err:
        first = str(err).strip().split("\n")[0]
        if first.startswith(ZIP_READER_FAILED):   # end records Python's zipfile tolerates, miniz does not
            reason = first.split(". ")[0].rsplit(": ", 1)[-1]
            raise _damaged(path, f"torch's zip reader rejects its structure: {reason}", fix) from None
        raise CheckpointError(f"{path}: not a selib checkpoint: torch.load cannot read it "
                              f"({type(err).__name__}); {fix}.") from None
    if not isinstance(state, dict) or any(key not in state for key in required):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a selib checkpoint (it lacks the keys {list(required)}; "
                              f"found {found}); {fix}.")
    return state


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu", family: str | None = None,
               preset: str | None = None, overrides: Mapping[str, Any] | None = None,
               fix: str = DEFAULT_FIX):
    """``(model, config)``: the model stored in a run checkpoint, in eval mode on ``device``, and the
    resolved config it was trained with.

    ``family``/``preset``/``overrides`` state what the caller expects (a KD run's ``teacher`` section);
    a checkpoint of another model is refused with one line naming both. With them, a checkpoint may
    hold only ``model`` (weights saved outside selib; ``config`` is then None). The only function in
    selib that rebuilds a model from a checkpoint.
    """
    from selib import models
    from selib.config import ConfigError, load

    path = Path(checkpoint)
    state = load_checkpoint(path, "cpu", fix, required=REQUIRED_KEYS if family is None else ("model",))
    config = None
    if "config" in state:
        try:
            config = load(state["config"])
        except ConfigError as err:
            raise CheckpointError(f"{path}: its stored config is not valid for this selib ({err}); "
                                  f"{fix}.") from None
    stored = config["model"] if config is not None else None
    want = {"family": family or stored["family"], "preset": preset or stored["preset"],
            "overrides": dict((stored or {}).get("overrides", {}) if overrides is None else overrides)}
    have = want if stored is None else {"family": stored["family"], "preset": stored["preset"],
                                        "overrides": dict(stored["overrides"])}
    if want != have:
        raise CheckpointError(
            f"{path}: holds a {_describe(have)} model, not the {_describe(want)} model asked for; point to "
            "the checkpoint of that model, or fix family/preset/overrides to match the checkpoint's config.")
    model = models.build(want["family"], want["preset"], **want["overrides"])
    mismatch = _state_mismatch(model.state_dict(), state["model"])
    if mismatch:
        raise CheckpointError(f"{path}: its weights do not fit a {_describe(want)} model ({mismatch}); "
                              f"{fix}.")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


def _state_mismatch(expected: Mapping[str, torch.Tensor], given: Any) -> str:
    """Empty if ``given`` is a state dict with exactly the keys and shapes of ``expected``, else a summary."""
    if not isinstance(given, Mapping):
        return f"'model' is a {type(given).__name__}, not a state dict"
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [k for k in expected if k in given and (not isinstance(given[k], torch.Tensor)
                                                     or given[k].shape != expected[k].shape)]
    parts = [f"{len(keys)} {what} (first: {keys[0]})" for keys, what in
             ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape")) if keys]
    return "; ".join(parts)


def _describe(spec: Mapping[str, Any]) -> str:
    extra = f" with overrides {dict(spec['overrides'])}" if spec["overrides"] else ""
    return f"{spec['family']} {spec['preset']!r}{extra}"

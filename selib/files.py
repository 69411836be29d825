"""Writing files: atomically, so that a crash, a kill or a full disk never leaves a half-written file
under the real name (used for checkpoints and audio; lesson ``06_training_teacher_student`` explains why
it matters for resuming), the one JSON and CSV writer of per-utterance scores and reports, and telling a
missing input from one that is a folder or a device."""
from __future__ import annotations

import csv
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def write_atomically(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to a hidden temporary file next to ``path``, then rename it onto ``path``. On any
    failure the temporary file is removed and an ``OSError`` names ``path`` itself."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def not_a_file(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file to read ("no such file", "is a folder, not a regular file",
    ...), or None when it is one. Only ``stat`` looks at it: a FIFO is never opened (it would block)."""
    try:
        mode = Path(path).stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "no such file"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"is {kind}, not a regular file"


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``null`` (nested dicts and lists too), so that the JSON
    selib writes is strict JSON that any reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, value: Any, **dumps) -> Path:
    """Write ``value`` as strict JSON (:func:`json_safe`, indent 1; ``dumps`` adds ``json.dumps``
    options), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(value), **{"indent": 1, **dumps}))
    return path


def write_csv(path: str | Path, rows: list[dict[str, Any]], empty_header: tuple[str, ...] = ("id",)) -> Path:
    """Write ``rows`` as CSV with the union of their keys as the header, in first-seen order
    (``empty_header`` when there are no rows), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row)) or list(empty_header)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path

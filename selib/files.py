"""Writing files so that a crash, a kill or a full disk never leaves a half-written file under the real
name (used for checkpoints and audio; lesson ``06_training_teacher_student`` explains why it matters
for resuming)."""
from __future__ import annotations

import os
from pathlib import Path


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

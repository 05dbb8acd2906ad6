"""Write small result files so that a reader never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write `text` to a hidden temporary file beside `path`, then rename it into place.

    `fsync` also flushes the data to disk before the rename, for state that must survive a
    power cut (the closed loop's run state), not only a crash of the process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path

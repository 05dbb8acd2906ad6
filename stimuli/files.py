"""The one way the toolkit writes a file: whole or not at all, and still there after a power cut.

Every file is written to a hidden temporary name in its own folder (a rename across file
systems is a copy), then renamed over the target. `os.replace` is atomic against crashes of
the process, but the new name and the file's bytes may still sit in the page cache: after a
power cut the folder can hold the old name, or the new name over a zero-length file. So the
file is fsynced before the rename and its folder after it.

`write_atomic` takes bytes or text, `write_json` a payload (through `to_plain`, the one JSON
converter), and `atomic_path` yields a temporary path for a library that creates the file
itself (h5py, pynwb, matplotlib, torch.save, np.savez).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a closed file's bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (names created, renamed, removed) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """fsync `tmp`, rename it over `target`, fsync the folder; returns `target`."""
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)
    return Path(target)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a free temporary path beside `path`; on success it replaces `path` durably.

    For files written whole by another library (an NWB export through pynwb): the caller
    writes and closes the file at the yielded path inside the `with` block. On an exception
    the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, marked `.part` (cleaners glob `.*.part*`), the suffix last: some writers judge a file
    # by its extension (pynwb, matplotlib) or add one when it is missing (np.savez).
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()  # handed over free: h5py and pynwb create the file themselves
    try:
        yield tmp
        os.chmod(tmp, default_mode())  # mkstemp's private mode is not what a shared file wants
        durable_replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically and durably; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json(path: str | os.PathLike[str], payload: Any, *, nan_as_null: bool = False) -> Path:
    """Write `payload` as indented JSON (see `to_plain`) atomically and durably; returns `path`."""
    text = json.dumps(to_plain(payload, nan_as_null=nan_as_null), indent=2)
    return write_atomic(path, text + "\n")


def to_plain(value: Any, *, nan_as_null: bool = False) -> Any:
    """`value` in JSON's types: arrays and scalars of numpy (or torch) by `tolist()`, paths as text.

    Dicts, lists and tuples are converted item by item. `nan_as_null`: NaN and infinities become
    None, for files other tools read (strict JSON has no NaN); without it they stay floats, which
    Python's json writes as `NaN` and reads back.
    """
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, nan_as_null=nan_as_null) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v, nan_as_null=nan_as_null) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return None if nan_as_null and not math.isfinite(value) else value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_plain(value.tolist(), nan_as_null=nan_as_null)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any writer threads.
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def default_mode() -> int:
    """The mode `open()` would give a new file (0o666 less the umask)."""
    return 0o666 & ~_UMASK

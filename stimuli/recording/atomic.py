"""Durable renames: a file that is committed survives a power cut, not only a process kill.

`os.replace` is atomic against crashes of the process, but the new name and the file's
bytes may still sit in the page cache: after a power cut the folder can hold the old name,
or the new name over a zero-length file. So the file is fsynced before the rename and its
folder after it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    # The suffix stays last: some writers (pynwb) judge a file by its extension.
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()  # handed over free: h5py and pynwb create the file themselves
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's private mode is not what a shared file wants
        durable_replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any writer threads.
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()

"""Durable renames: a file that is committed survives a power cut, not only a process kill.

`os.replace` is atomic against crashes of the process, but the new name and the file's
bytes may still sit in the page cache: after a power cut the folder can hold the old name,
or the new name over a zero-length file. So the file is fsynced before the rename and its
folder after it.
"""

from __future__ import annotations

import os
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

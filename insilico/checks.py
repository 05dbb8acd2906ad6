"""Checks of a command's arguments, run before anything is loaded or computed.

A mistake in an argument should cost a second, not the 25 s of loading a twin or the minutes
of training before the result cannot be written. Each check raises `InsilicoError` naming the
flag as the user typed it; the library repeats its own checks under its setting names.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stimuli.errors import InsilicoError


def at_least(value: float | None, minimum: float, flag: str) -> None:
    """`value >= minimum` (None, "the default", passes)."""
    if value is not None and value < minimum:
        raise InsilicoError(f"{flag} must be >= {minimum:g}, got {value:g}")


def one_of(value: str | None, options: Sequence[str], flag: str) -> None:
    if value is not None and value not in options:
        raise InsilicoError(f"{flag} must be {', '.join(options[:-1])} or {options[-1]}, got {value!r}")


def input_file(path: Path, flag: str, what: str = "file") -> Path:
    """An existing, readable file; `what` names it in the error ("recording", "stimulus file")."""
    if path.is_dir():
        raise InsilicoError(f"{flag} {path}: is a folder, not a {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such {what}")
    if not os.access(path, os.R_OK):
        raise InsilicoError(f"{flag} {path}: not readable (permissions)")
    return path


def output_folder(path: Path, flag: str) -> Path:
    """A folder that exists (created here if needed) and takes a new file."""
    if path.exists() and not path.is_dir():
        raise InsilicoError(f"{flag} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Permissions are read from the file system, not guessed from mode bits (root, ACLs, NFS).
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as err:
        raise InsilicoError(f"{flag} {path}: cannot write there ({err.strerror})") from None
    return path


def output_file(path: Path, flag: str) -> Path:
    """A file that can be written: not a folder, in a folder that exists or can be made."""
    if path.is_dir():
        raise InsilicoError(f"{flag} {path}: is a folder; name a file")
    output_folder(path.parent, flag)
    return path


def cell_list(spec: str | None, flag: str = "--cells") -> None:
    """The syntax of `--cells` (all, or comma-separated ids) before the twin is loaded to check the ids."""
    if spec is None or spec.strip().lower() == "all":
        return
    # A cell of a shared core is recording:id (insilico.cells.on_recording), "A:all" every cell of A.
    parts = [s.strip().rpartition(":")[2] for s in spec.split(",") if s.strip()]
    bad = [s for s in parts if not s.lstrip("-").isdigit() and not (s.lower() == "all" and ":" in spec)]
    if bad or not parts:
        raise InsilicoError(f"{flag} must be 'all' or comma-separated cell ids like 3,42 (A:42 on a shared "
                            f"core), got {spec!r}")

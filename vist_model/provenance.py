"""Where a twin's training recording is: its absolute path and content hash, and finding it again.

A twin is used from other folders than the one it was trained in (`insilico optimize` reads
its training movies for the contrast budget and the natural clips; the closed loop holds out
and fine-tunes on them), so the checkpoint stores the recording's resolved path, and its
SHA-256 digest and size so that a moved copy can be recognised and a lost one named.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stimuli.errors import InsilicoError

CHUNK_BYTES = 1 << 20


class TrainingDataMissing(InsilicoError, FileNotFoundError):
    """The twin's training recording is neither where it was nor in any place searched."""


def file_digest(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB chunks (memory stays flat).

    SHA-256 rather than BLAKE2b: CPUs with SHA extensions hash it faster
    (`benchmarks/digest.py`, docs/benchmarks.md).
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def data_record(path: str | Path) -> dict[str, Any]:
    """What a checkpoint stores about its training recording: absolute path, size and digest."""
    path = Path(path).resolve()
    return {"data": str(path), "data_bytes": path.stat().st_size, "data_sha256": file_digest(path)}


def locate_training_data(training: Mapping[str, Any], search: Iterable[str | Path] = ()) -> Path | None:
    """The training recording named in a twin's `metadata.training`, or None if none is named.

    Found at its stored path; or, if it moved, a file of the same name and content in one of
    `search`'s folders (the current folder is always searched). Raises `TrainingDataMissing`
    naming the stored path and digest when neither holds. Twins trained before paths were
    stored absolute hold the path as typed, which is read relative to the current folder.
    """
    stored = training.get("data")
    if not stored:
        return None
    path = Path(stored)
    if path.is_file():
        return path
    digest, size = training.get("data_sha256"), training.get("data_bytes")
    folders = [Path.cwd(), *(Path(f) for f in search)]
    if digest is not None:
        for folder in folders:
            candidate = folder / path.name
            if candidate.is_file() and os.path.getsize(candidate) == size and file_digest(candidate) == digest:
                return candidate.resolve()
    where = f" (SHA-256 {digest[:12]}; no file of that name and content in {', '.join(map(str, folders))})" \
        if digest is not None else ""
    raise TrainingDataMissing(f"the twin's training recording {path} is gone{where}")

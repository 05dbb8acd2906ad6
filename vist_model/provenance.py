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
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class TrainingRecord:
    """A twin's record of its training (`TwinMetadata.training` as the checkpoint stores it), typed.

    Attributes:
        data: the training recording's path as stored (`data_record`); None if not named.
        data_bytes, data_sha256: its size and digest, to recognise a moved copy.
        segments: the segments trained on.
        spec: the twin's spec (`vist_model.fit_twin.TwinSpec` fields).
        finetune: one entry per fine-tuning since (oldest first).
        stored: the whole record as stored, keys this class does not name included.
    """

    data: str | None = None
    data_bytes: int | None = None
    data_sha256: str | None = None
    segments: tuple[str, ...] = ()
    spec: Mapping[str, Any] = field(default_factory=dict)
    finetune: tuple[Mapping[str, Any], ...] = ()
    stored: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> TrainingRecord:
        d = dict(d or {})
        return cls(data=d.get("data") or None, data_bytes=d.get("data_bytes"), data_sha256=d.get("data_sha256"),
                   segments=tuple(str(s) for s in d.get("train_segments") or ()), spec=dict(d.get("spec") or {}),
                   finetune=tuple(d.get("finetune") or ()), stored=d)

    def recording(self, search: Iterable[str | Path] = ()) -> Path | None:
        """The training recording, where it was stored or moved to (`locate_training_data`)."""
        return locate_training_data(self.stored, search)

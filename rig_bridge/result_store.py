"""Finished presentations kept on the rig's disk, by session and request id.

When a presentation ends, the rig writes every stream message it produced (flips, spikes,
done) to one `.npz` file, atomically. A controller that retries the same present after the rig
restarted then gets the recorded data replayed instead of a second showing of the stimulus.
Files are deleted once the controller acknowledges that it stored the presentation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rig_bridge.protocol import is_valid_id
from stimuli.errors import InputError
from stimuli.files import atomic_path


@dataclass(frozen=True)
class StreamRecord:
    """A logged stream message without its sequence number (which is reassigned on replay)."""

    type: str
    body: dict[str, Any]
    payload: np.ndarray | None


class ResultStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, session: str, request_id: str) -> Path:
        if not (is_valid_id(session) and is_valid_id(request_id)):
            raise InputError(f"bad session/request id {repr(session)[:100]}/{repr(request_id)[:100]}")
        path = self.root / session / f"{request_id}.npz"
        # The id pattern already keeps paths inside root; this says so where the path is made.
        if path.resolve().parent.parent != self.root.resolve():
            raise InputError(f"session/request id {session!r}/{request_id!r} leaves {self.root}")
        return path

    def has(self, session: str, request_id: str) -> bool:
        return self._path(session, request_id).is_file()

    def put(self, session: str, request_id: str, records: Sequence[StreamRecord]) -> None:
        path = self._path(session, request_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = [{"type": r.type, "body": r.body, "has_payload": r.payload is not None} for r in records]
        arrays = {f"p{i}": r.payload for i, r in enumerate(records) if r.payload is not None}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)

    def get(self, session: str, request_id: str) -> list[StreamRecord]:
        with np.load(self._path(session, request_id), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            return [StreamRecord(m["type"], m["body"], z[f"p{i}"] if m["has_payload"] else None)
                    for i, m in enumerate(meta)]

    def delete(self, session: str, request_id: str) -> None:
        path = self._path(session, request_id)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # the session's folder goes with its last result
        except OSError:
            pass

    def sessions_holding(self) -> dict[str, list[str]]:
        """Request ids stored but not yet acknowledged, by session."""
        out: dict[str, list[str]] = {}
        for path in self.root.glob("*/*.npz"):
            out.setdefault(path.parent.name, []).append(path.stem)
        return out

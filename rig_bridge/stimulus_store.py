"""Content-addressed stimulus store on the rig's disk: frames are sent once and kept by hash.

Each stimulus lives in `<root>/<id>.npy` (uint8 `[T, H, W]`) with `<id>.json` beside it
(frame rate, shape). Files appear by rename, so a crash leaves either a whole stimulus or none,
and the store survives rig restarts.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rig_bridge.protocol import is_valid_id, stimulus_id


@dataclass(frozen=True)
class StoredStimulus:
    stimulus_id: str
    frames: np.ndarray  # uint8 [T, H, W]
    frame_rate: float


class StimulusStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _paths(self, sid: str) -> tuple[Path, Path]:
        if not is_valid_id(sid):
            raise ValueError(f"not a stimulus id: {sid!r}")
        return self.root / f"{sid}.npy", self.root / f"{sid}.json"

    def __contains__(self, sid: str) -> bool:
        if not is_valid_id(sid):
            return False
        npy, meta = self._paths(sid)
        return npy.is_file() and meta.is_file()

    def put(self, frames: np.ndarray, frame_rate: float, sid: str | None = None) -> str:
        """Store uint8 frames `[T, H, W]`; return their id (no-op when already stored).

        `sid` is the id the caller already computed (hashing large stimuli twice is slow).
        """
        sid = sid or stimulus_id(frames, frame_rate)
        if sid in self:
            return sid
        npy, meta = self._paths(sid)
        _atomic_write(npy, lambda f: np.save(f, np.ascontiguousarray(frames, dtype=np.uint8)))
        info = {"frame_rate": float(frame_rate), "shape": [int(s) for s in frames.shape]}
        _atomic_write(meta, lambda f: f.write(json.dumps(info).encode()))
        return sid

    def get(self, sid: str) -> StoredStimulus:
        if sid not in self:
            raise KeyError(sid)
        npy, meta = self._paths(sid)
        info = json.loads(meta.read_text())
        frames = np.load(npy, allow_pickle=False)
        if stimulus_id(frames, info["frame_rate"]) != sid:
            # Disk corruption: drop it so the controller uploads it again.
            npy.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            raise KeyError(sid)
        return StoredStimulus(sid, frames, float(info["frame_rate"]))


def _atomic_write(path: Path, write) -> None:  # noqa: ANN001 - a one-argument writer callback
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Content-addressed stimulus store on the rig's disk: frames are sent once and kept by hash.

Each stimulus lives in `<root>/<id>.npy` (uint8 `[T, H, W]`) with `<id>.json` beside it
(frame rate, shape). Files appear by rename, so a crash leaves either a whole stimulus or none,
and the store survives rig restarts. A stimulus larger than one message arrives in parts
(`PartialStimulus`): each part goes to disk and into the hash as it comes, so the rig's memory
holds one part, never the stimulus.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rig_bridge.protocol import is_stimulus_id, stimulus_id
from stimuli.errors import InputError
from stimuli.files import atomic_path, durable_replace, write_json


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
        if not is_stimulus_id(sid):
            raise InputError(f"not a stimulus id: {sid!r}")
        return self.root / f"{sid}.npy", self.root / f"{sid}.json"

    def __contains__(self, sid: str) -> bool:
        if not is_stimulus_id(sid):
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
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(frames, dtype=np.uint8))
        info = {"frame_rate": float(frame_rate), "shape": [int(s) for s in frames.shape]}
        write_json(meta, info)
        return sid

    def begin(self, sid: str, shape: tuple[int, int, int], frame_rate: float) -> PartialStimulus:
        """Start receiving stimulus `sid` of `shape` `[T, H, W]` in parts (see `PartialStimulus`)."""
        self._paths(sid)
        return PartialStimulus(self, sid, shape, frame_rate)

    def clean_partials(self) -> int:
        """Delete part files a crashed or stopped rig left behind; returns how many."""
        stale = list(self.root.glob(".*.part*"))  # streamed parts and `stimuli.files` temporaries
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def get(self, sid: str) -> StoredStimulus:
        if sid not in self:
            raise KeyError(sid)
        npy, meta = self._paths(sid)
        info = json.loads(meta.read_text())
        # Mapped, not read: a 400 MB stimulus is paged in as the backend shows it.
        frames = np.load(npy, mmap_mode="r", allow_pickle=False)
        if stimulus_id(frames, info["frame_rate"]) != sid:
            # Disk corruption: drop it so the controller uploads it again.
            npy.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            raise KeyError(sid)
        return StoredStimulus(sid, frames, float(info["frame_rate"]))


class PartialStimulus:
    """A stimulus arriving in parts, in frame order, written to disk and hashed as it comes.

    `add(start, frames)` takes frames `[t, H, W]` uint8 for `[start, start + t)`; a part that
    was already received (a retry) is accepted and ignored. `finish()` checks that the frames
    hash to the claimed id and renames the file into the store.
    """

    def __init__(self, store: StimulusStore, sid: str, shape: tuple[int, int, int], frame_rate: float) -> None:
        self.store, self.sid, self.shape, self.frame_rate = store, sid, tuple(int(s) for s in shape), float(frame_rate)
        self.next_frame = 0
        self.touched = time.monotonic()
        self._hash = hashlib.blake2b(digest_size=32)
        self._hash.update(f"insilico-stimulus-v1 {self.frame_rate!r} {list(self.shape)}\n".encode())
        fd, tmp = tempfile.mkstemp(prefix=f".{sid}.", suffix=".part", dir=store.root)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        np.lib.format.write_array_header_1_0(
            self._file, {"descr": "|u1", "fortran_order": False, "shape": self.shape})

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape)

    def add(self, start: int, frames: np.ndarray) -> None:
        self.touched = time.monotonic()
        if start + len(frames) <= self.next_frame:
            return  # a retried part: already written
        if start != self.next_frame:
            raise InputError(f"part starts at frame {start}; the rig expects frame {self.next_frame}")
        if start + len(frames) > self.shape[0] or tuple(frames.shape[1:]) != self.shape[1:]:
            raise InputError(f"part of shape {list(frames.shape)} at frame {start} does not fit a stimulus "
                             f"of shape {list(self.shape)}")
        data = memoryview(np.ascontiguousarray(frames, dtype=np.uint8)).cast("B")
        self._file.write(data)
        self._hash.update(data)
        self.next_frame += len(frames)

    @property
    def complete(self) -> bool:
        return self.next_frame == self.shape[0]

    def finish(self) -> str:
        """Move the stimulus into the store; raises ValueError (and discards it) on a hash mismatch."""
        digest = self._hash.hexdigest()
        if digest != self.sid:
            self.discard()
            raise InputError(f"frames hash to {digest[:16]}..., not the claimed {self.sid[:16]}...")
        self._file.close()
        npy, meta = self.store._paths(self.sid)
        durable_replace(self._tmp, npy)
        write_json(meta, {"frame_rate": self.frame_rate, "shape": list(self.shape)})
        return self.sid

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)



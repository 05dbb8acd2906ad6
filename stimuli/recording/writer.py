"""Write recording-v1 files that grow frame by frame and appear atomically.

The writer fills a temporary file beside the target and renames it over the target only after
the finished file validates, so a crash never leaves a half-written recording under the real
name, and an existing recording is never lost. The file and its folder are fsynced around the
rename, so this holds across a power cut too.

`RecordingWriter.extend` appends to an existing recording in place instead, so adding a block
costs what the block costs, not a copy of the file. Before it touches the file it saves an
undo record beside it (`<file>.undo`): every byte an append can overwrite, i.e. everything but
the chunks of frames and counts that are full (appends write only past them), and the file's
length. A crash mid-append leaves the undo record; `recover()` (run by every later `extend`)
writes those bytes back and truncates the file, which restores it byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from stimuli.errors import InputError
from stimuli.files import atomic_path, default_mode, durable_replace, fsync_dir, fsync_file
from stimuli.recording import layout as L
from stimuli.recording.validate import validate

# Chunks along time so appends and range reads touch few chunks (spec: writers chunk along time).
_FRAME_CHUNK_T = 64
_COUNT_CHUNK_T = 256
_COPY_BLOCK = 16 << 20  # undo records are read and written in blocks of this many bytes


class RecordingWriter:
    """Builds a recording-v1 file; `commit()` validates it and renames it into place.

    Without `cell_ids` the file is stimulus-only (no `/responses`, no `/cells`). Counts are
    appended as `[R, t, N]`; a block shown fewer than `n_repeats` times may pass fewer repeats,
    and the missing ones are stored as NaN (float32 files only, as the spec requires).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        frame_rate: float,
        height: int,
        width: int,
        cell_ids: Sequence[int] | np.ndarray | None = None,
        n_repeats: int = 1,
        counts_dtype: str = "float32",
        pixel_size_um: float | None = None,
        attrs: Mapping[str, object] | None = None,
        _resume_from: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._in_place = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._closed = False
        if _resume_from is not None:
            shutil.copyfile(_resume_from, self._tmp)
            self._f = h5py.File(self._tmp, "r+")
            self._load_state()
            return
        if frame_rate <= 0 or not np.isfinite(frame_rate):
            raise InputError(f"frame_rate must be > 0, got {frame_rate}")
        if height < 1 or width < 1:
            raise InputError(f"height and width must be >= 1, got {height} x {width}")
        if counts_dtype not in ("uint16", "float32"):
            raise InputError(f"counts_dtype must be 'uint16' or 'float32', got {counts_dtype!r}")
        self._f = h5py.File(self._tmp, "w")
        f = self._f
        f.attrs["format"] = L.FORMAT
        f.attrs["version"] = np.int64(L.VERSION)
        f.attrs["frame_rate"] = float(frame_rate)
        if pixel_size_um is not None:
            f.attrs["pixel_size_um"] = float(pixel_size_um)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        f.create_dataset(L.FRAMES, shape=(0, height, width), maxshape=(None, height, width),
                         dtype=np.uint8, chunks=(_FRAME_CHUNK_T, height, width))
        if cell_ids is not None:
            ids = np.asarray(cell_ids, dtype=np.int64)
            if ids.ndim != 1 or len(ids) == 0:
                raise InputError("cell_ids must be a non-empty 1-D sequence")
            if len(np.unique(ids)) != len(ids):
                raise InputError("cell_ids must be unique")
            if n_repeats < 1:
                raise InputError(f"n_repeats must be >= 1, got {n_repeats}")
            f.create_dataset(L.CELL_IDS, data=ids)
            f.create_dataset(L.COUNTS, shape=(n_repeats, 0, len(ids)),
                             maxshape=(n_repeats, None, len(ids)), dtype=counts_dtype,
                             chunks=(n_repeats, _COUNT_CHUNK_T, len(ids)))
        self._segments: list[L.Segment] = []
        self._load_state()

    @classmethod
    def append_to(cls, path: str | os.PathLike[str]) -> RecordingWriter:
        """Continue an existing recording; the original stays intact until `commit()`."""
        from stimuli.recording.reader import open_recording

        with open_recording(path) as rec:  # refuse to extend a file that breaks the spec
            segments = list(rec.segments)
        writer = cls(path, frame_rate=1.0, height=1, width=1, _resume_from=str(path))
        writer._segments = segments
        return writer

    @classmethod
    def extend(cls, path: str | os.PathLike[str]) -> RecordingWriter:
        """Continue an existing recording in place (no copy); `commit()` or `abort()` ends it.

        Crash-safe through the undo record described at the top of this module.
        """
        from stimuli.recording.reader import open_recording

        recover(path)
        with open_recording(path) as rec:  # refuse to extend a file that breaks the spec
            segments = list(rec.segments)
        _write_undo(Path(path))
        writer = cls.__new__(cls)
        writer.path = Path(path)
        writer._in_place = True
        writer._tmp = writer.path
        writer._closed = False
        try:
            writer._f = h5py.File(writer.path, "r+")
        except BaseException:
            recover(path)
            raise
        writer._segments = segments
        writer._load_state()
        return writer

    def _load_state(self) -> None:
        f = self._f
        self.height, self.width = (int(s) for s in f[L.FRAMES].shape[1:])
        self.frame_rate = float(f.attrs["frame_rate"])
        self.has_responses = L.COUNTS in f
        if self.has_responses:
            self.n_repeats = int(f[L.COUNTS].shape[0])
            self.n_cells = int(f[L.COUNTS].shape[2])
            self.counts_dtype = str(f[L.COUNTS].dtype)
        else:
            self.n_repeats = self.n_cells = 0
            self.counts_dtype = None
        if not hasattr(self, "_segments"):
            self._segments = []

    @property
    def n_frames(self) -> int:
        """Frames written so far."""
        return int(self._f[L.FRAMES].shape[0])

    def append(self, frames: np.ndarray, counts: np.ndarray | None = None) -> tuple[int, int]:
        """Append frames `[t, H, W]` uint8 and, for recordings, counts `[r, t, N]` (r <= R).

        Returns the frame range `[start, stop)` that the block occupies.
        """
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.dtype != np.uint8:
            raise InputError(f"frames must be uint8 grey levels, got {frames.dtype}")
        if frames.ndim != 3 or frames.shape[1:] != (self.height, self.width):
            raise InputError(f"frames must be [t, {self.height}, {self.width}], got {list(frames.shape)}")
        t = frames.shape[0]
        block = None
        if self.has_responses:
            if counts is None:
                raise InputError("this recording has cells: append needs counts [r, t, N]")
            block = self._counts_block(np.asarray(counts), t)
        elif counts is not None:
            raise InputError("a stimulus-only recording takes no counts")
        start = self.n_frames
        ds = self._f[L.FRAMES]
        ds.resize(start + t, axis=0)
        ds[start:] = frames
        if block is not None:
            cds = self._f[L.COUNTS]
            cds.resize(start + t, axis=1)
            cds[:, start:, :] = block
        return start, start + t

    def _counts_block(self, counts: np.ndarray, t: int) -> np.ndarray:
        if counts.ndim == 2:
            counts = counts[None]
        if counts.ndim != 3 or counts.shape[1:] != (t, self.n_cells):
            raise InputError(f"counts must be [r, {t}, {self.n_cells}], got {list(counts.shape)}")
        r = counts.shape[0]
        if not 1 <= r <= self.n_repeats:
            raise InputError(f"counts carry {r} repeats; this recording holds 1..{self.n_repeats}")
        if counts.dtype.kind == "f" and not np.isfinite(counts).all():
            raise InputError("counts must be finite (missing repeats are left out, not NaN)")
        if (counts < 0).any():
            raise InputError("counts must be >= 0")
        if r < self.n_repeats and self.counts_dtype != "float32":
            raise InputError("a block with fewer repeats than the file needs float32 counts (NaN marks them)")
        if self.counts_dtype == "uint16" and (counts > np.iinfo(np.uint16).max).any():
            raise InputError("counts exceed the uint16 range")
        block = np.full((self.n_repeats, t, self.n_cells), np.nan if r < self.n_repeats else 0,
                        dtype=self.counts_dtype)
        block[:r] = counts
        return block

    def add_segment(self, name: str, start: int, stop: int) -> None:
        """Name the frame range `[start, stop)`; names must be unique, ranges disjoint."""
        if any(s.name == name for s in self._segments):
            raise InputError(f"segment name {name!r} is already used")
        if not 0 <= start < stop:
            raise InputError(f"segment {name!r}: need 0 <= start < stop, got [{start}, {stop})")
        for s in self._segments:
            if start < s.stop and s.start < stop:
                raise InputError(f"segment {name!r} [{start}, {stop}) overlaps {s.name!r}")
        self._segments.append(L.Segment(name, int(start), int(stop)))

    def append_segment(self, name: str, frames: np.ndarray, counts: np.ndarray | None = None) -> L.Segment:
        """Append a block and name its frame range in one step."""
        start, stop = self.append(frames, counts)
        self.add_segment(name, start, stop)
        return L.Segment(name, start, stop)

    def set_rf(self, rf: np.ndarray) -> None:
        """Store receptive fields `[N, H, W]` (e.g. spike-triggered averages)."""
        rf = np.asarray(rf, dtype=np.float32)
        if rf.shape != (self.n_cells, self.height, self.width):
            raise InputError(f"rf must be [{self.n_cells}, {self.height}, {self.width}], got {list(rf.shape)}")
        _replace(self._f, L.CELL_RF, rf)

    def set_cell_types(self, types: Sequence[str]) -> None:
        if len(types) != self.n_cells:
            raise InputError(f"need {self.n_cells} cell types, got {len(types)}")
        _replace(self._f, L.CELL_TYPE, np.array(list(types), dtype=h5py.string_dtype()))

    def set_cell_extra(self, name: str, values: np.ndarray | Sequence[object]) -> None:
        """Store per-cell metadata `[N]` outside the spec's names as `/cells/<name>` (e.g. `electrode`).

        Readers keep and ignore unknown datasets, so e.g. an NWB import can keep each unit's
        electrode beside its id; the spec's own `id`, `rf` and `type` have their own methods.
        """
        if name in ("id", "rf", "type") or "/" in name or not name:
            raise InputError(f"/cells/{name} is not a free per-cell name; use the writer's own methods")
        data = np.asarray(values)
        if data.dtype.kind in ("U", "O"):
            data = np.array([str(v) for v in data], dtype=h5py.string_dtype())
        if data.ndim < 1 or data.shape[0] != self.n_cells:
            raise InputError(f"/cells/{name} needs {self.n_cells} entries, got shape {list(data.shape)}")
        _replace(self._f, f"/cells/{name}", data)

    def write_extra(self, path: str, data: np.ndarray) -> None:
        """Store a dataset outside the spec's names (e.g. `/presentation/flip_time`).

        Recording-v1 readers keep and ignore unknown datasets; the spec's own paths are refused
        here so that an extra can never shadow them.
        """
        reserved = ("/stimulus", "/responses", "/cells", "/segments")
        full = "/" + path.lstrip("/")
        if any(full == r or full.startswith(r + "/") for r in reserved):
            raise InputError(f"{full} is part of the recording-v1 layout; use the writer's own methods")
        _replace(self._f, full, np.asarray(data))

    def commit(self) -> Path:
        """Validate, flush and rename into place. The writer is closed afterwards."""
        self._write_segments()
        validate(self._f, str(self.path))
        self._f.close()
        if self._in_place:
            fsync_file(self.path)  # the new block is on disk before its undo record goes
            _undo_path(self.path).unlink()
            fsync_dir(self.path.parent)
            self._closed = True
            return self.path
        os.chmod(self._tmp, default_mode())  # mkstemp made it private; a recording is not
        durable_replace(self._tmp, self.path)  # fsync file and folder: survives a power cut
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop everything written; the target path is left as it was."""
        if self._closed:
            return
        self._f.close()
        if self._in_place:
            recover(self.path)
        else:
            self._tmp.unlink(missing_ok=True)
        self._closed = True

    def _write_segments(self) -> None:
        for s in self._segments:
            if s.stop > self.n_frames:
                raise InputError(f"segment {s.name!r} ends at {s.stop} beyond the {self.n_frames} frames written")
        names = np.array([s.name for s in self._segments], dtype=h5py.string_dtype())
        _replace(self._f, L.SEGMENT_NAME, names)
        _replace(self._f, L.SEGMENT_START, np.array([s.start for s in self._segments], dtype=np.int64))
        _replace(self._f, L.SEGMENT_STOP, np.array([s.stop for s in self._segments], dtype=np.int64))

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _undo_path(path: Path) -> Path:
    return path.with_name(path.name + ".undo")


def _write_undo(path: Path) -> None:
    """Save every byte of `path` an append may overwrite (see the module docstring)."""
    untouched: list[tuple[int, int]] = []
    with h5py.File(path, "r") as f:
        for name, axis in ((L.FRAMES, 0), (L.COUNTS, 1)):
            ds = f.get(name)
            if ds is None or ds.chunks is None:
                continue
            n, c = ds.shape[axis], ds.chunks[axis]

            def visit(info, n: int = n, c: int = c, axis: int = axis) -> None:  # noqa: ANN001 - h5py StoreInfo
                if info.chunk_offset[axis] + c <= n:  # full along time: appends never write to it
                    untouched.append((int(info.byte_offset), int(info.size)))

            ds.id.chunk_iter(visit)
    length = path.stat().st_size
    ranges, at = [], 0
    for offset, size in sorted(untouched):
        if offset > at:
            ranges.append((at, offset - at))
        at = max(at, offset + size)
    if at < length:
        ranges.append((at, length - at))
    with atomic_path(_undo_path(path)) as tmp, open(tmp, "wb") as out, open(path, "rb") as src:
        header = json.dumps({"length": length, "ranges": ranges}).encode()
        out.write(len(header).to_bytes(8, "little") + header)
        for offset, size in ranges:
            src.seek(offset)
            _copy(src, out, size)


def recover(path: str | os.PathLike[str]) -> bool:
    """Undo an in-place append that a crash interrupted; True if there was one to undo."""
    path = Path(path)
    undo = _undo_path(path)
    if not undo.is_file():
        return False
    with open(undo, "rb") as src, open(path, "r+b") as f:
        meta = json.loads(src.read(int.from_bytes(src.read(8), "little")))
        for offset, size in meta["ranges"]:
            f.seek(offset)
            _copy(src, f, size)
        f.truncate(meta["length"])
        f.flush()
        os.fsync(f.fileno())
    undo.unlink()
    fsync_dir(path.parent)
    return True


def _copy(src, dst, size: int) -> None:  # noqa: ANN001 - binary files
    while size > 0:
        block = src.read(min(size, _COPY_BLOCK))
        if not block:
            raise OSError(f"{getattr(src, 'name', src)}: undo record cut short")
        dst.write(block)
        size -= len(block)


def _replace(f: h5py.File, path: str, data: np.ndarray) -> None:
    if path in f:
        del f[path]
    f.create_dataset(path, data=data)


def write_stimulus(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    frame_rate: float,
    *,
    segment: str = "stimulus",
    attrs: Mapping[str, object] | None = None,
    pixel_size_um: float | None = None,
) -> Path:
    """Write a stimulus-only recording (designed stimuli): frames `[T, H, W]` uint8, one segment."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise InputError(f"frames must be [T, H, W], got shape {list(frames.shape)}")
    with RecordingWriter(path, frame_rate=frame_rate, height=frames.shape[1], width=frames.shape[2],
                         pixel_size_um=pixel_size_um, attrs=attrs) as w:
        w.append_segment(segment, frames)
    return Path(path)

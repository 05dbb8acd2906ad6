"""Lazy, validated access to a recording-v1 file.

Nothing is read in bulk when a file is opened: frames and counts are sliced from disk by frame
range or segment, so a one-hour recording can be trained on piece by piece.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from stimuli.errors import InputError, NotFoundError
from stimuli.recording import layout as L
from stimuli.recording.errors import RecordingFormatError
from stimuli.recording.validate import check_counts, validate

# `verify()` reads bulk data in blocks of about this many bytes, so memory stays flat
# whatever the length of the recording.
_VERIFY_BLOCK_BYTES = 64 << 20

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")


class Recording:
    """An open recording-v1 file. Use as a context manager or call `close()`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"{self.path}: no such recording file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            if Path(self.path).suffix.lower() in VIDEO_SUFFIXES:
                raise RecordingFormatError(self.path, "file", "a video, not a recording-v1 HDF5 file: convert it "
                                           "first with `insilico import video FILE --out stim.h5`") from None
            raise RecordingFormatError(self.path, "file", f"not a readable HDF5 file ({err})") from None
        try:
            self.layout = validate(self._file, self.path)
        except BaseException:
            self._file.close()
            raise

    # --- metadata -------------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        return self.layout.frame_rate

    @property
    def pixel_size_um(self) -> float | None:
        return self.layout.pixel_size_um

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(T, H, W)` of the stimulus."""
        return (self.layout.n_frames, self.layout.height, self.layout.width)

    @property
    def n_frames(self) -> int:
        return self.layout.n_frames

    @property
    def n_cells(self) -> int:
        return self.layout.n_cells

    @property
    def n_repeats(self) -> int:
        return self.layout.n_repeats

    @property
    def has_responses(self) -> bool:
        return self.layout.has_responses

    @property
    def segments(self) -> tuple[L.Segment, ...]:
        return self.layout.segments

    @property
    def attrs(self) -> dict[str, object]:
        """Root attributes, the unknown ones included (kept for forward compatibility)."""
        return {k: _plain(v) for k, v in self._file.attrs.items()}

    def segment(self, name: str) -> L.Segment:
        for seg in self.layout.segments:
            if seg.name == name:
                return seg
        known = ", ".join(s.name for s in self.layout.segments) or "none"
        raise NotFoundError(f"{self.path}: no segment named {name!r} (segments: {known})")

    @property
    def cell_ids(self) -> np.ndarray:
        """`[N]` int64 cell ids (empty for a stimulus-only file)."""
        if not self.has_responses:
            return np.zeros(0, dtype=np.int64)
        return self._read(L.CELL_IDS, ())

    def cell_index(self, cell_id: int) -> int:
        """Position of the cell whose id is `cell_id` along the cell axis."""
        hits = np.flatnonzero(self.cell_ids == cell_id)
        if len(hits) == 0:
            raise NotFoundError(f"{self.path}: no cell with id {cell_id}")
        return int(hits[0])

    @property
    def cell_types(self) -> list[str] | None:
        if not self.layout.has_types:
            return None
        return [_plain(v) for v in self._read(L.CELL_TYPE, ())]

    @property
    def rf(self) -> np.ndarray | None:
        """`[N, H, W]` float32 receptive-field maps, or None where the file has none."""
        return self._read(L.CELL_RF, ()) if self.layout.has_rf else None

    # --- bulk data, read by range ---------------------------------------------------------
    def _read(self, dataset: str, selection: tuple, frames: tuple[int, int] | None = None) -> np.ndarray:
        """`dataset[selection]`; a corrupt chunk or failed checksum is refused naming file and dataset."""
        try:
            return self._file[dataset][selection]
        except OSError as err:
            part = f" in frames [{frames[0]}, {frames[1]})" if frames else ""
            raise RecordingFormatError(self.path, dataset, f"cannot be read{part}: a chunk is corrupt "
                                       f"or fails its checksum ({err})") from None

    def _range(self, segment: str | None, start: int | None, stop: int | None) -> tuple[int, int]:
        if segment is not None:
            if start is not None or stop is not None:
                raise InputError("give either a segment or a frame range, not both")
            seg = self.segment(segment)
            return seg.start, seg.stop
        a = 0 if start is None else int(start)
        b = self.n_frames if stop is None else int(stop)
        if not 0 <= a < b <= self.n_frames:
            raise InputError(f"{self.path}: frame range [{a}, {b}) is not inside [0, {self.n_frames})")
        return a, b

    def frames(
        self, segment: str | None = None, start: int | None = None, stop: int | None = None
    ) -> np.ndarray:
        """Stimulus frames `[t, H, W]` uint8 of a segment or frame range (default: all)."""
        a, b = self._range(segment, start, stop)
        return self._read(L.FRAMES, np.s_[a:b], (a, b))

    def counts(
        self, segment: str | None = None, start: int | None = None, stop: int | None = None
    ) -> np.ndarray:
        """Spike counts `[R, t, N]` float32; repeats that were not shown hold NaN."""
        if not self.has_responses:
            raise InputError(f"{self.path}: stimulus-only file has no {L.COUNTS}")
        a, b = self._range(segment, start, stop)
        out = self._read(L.COUNTS, np.s_[:, a:b, :], (a, b)).astype(np.float32)
        check_counts(out, self.path, a)
        return out

    def repeats_shown(self, segment: str) -> int:
        """How many repeats of a segment hold data (reads one bin per repeat)."""
        seg = self.segment(segment)
        if not self.has_responses:
            return 0
        first = self._read(L.COUNTS, np.s_[:, seg.start, :], (seg.start, seg.start + 1))
        return int((~np.isnan(first.astype(np.float32)).all(axis=1)).sum())

    def mean_response(self, segment: str | None = None, start: int | None = None,
                      stop: int | None = None) -> np.ndarray:
        """Trial-averaged counts `[t, N]` over the repeats that were shown."""
        return np.nanmean(self.counts(segment, start, stop), axis=0)

    def verify(self) -> None:
        """Read every chunk of the recording's datasets and check every value (slow, thorough).

        Opening a file checks its metadata and that its data is stored; this also finds corrupt
        chunks, failed checksums, and counts that are not whole numbers >= 0 (NaN only where a
        repeat was not shown), anywhere in the file, in blocks of about 64 MiB.
        Raises RecordingFormatError naming the file, the dataset and the frames.
        """
        t, h, w = self.shape
        step = max(1, _VERIFY_BLOCK_BYTES // (h * w))
        if self.has_responses:
            step = min(step, max(1, _VERIFY_BLOCK_BYTES // (4 * self.n_repeats * self.n_cells)))
        for a in range(0, t, step):
            b = min(t, a + step)
            self._read(L.FRAMES, np.s_[a:b], (a, b))
            if self.has_responses:
                self.counts(start=a, stop=b)
        if self.has_responses:
            self.cell_ids  # noqa: B018 - read for its checks
            if self.layout.has_rf:
                for n in range(self.n_cells):  # one map at a time: N x H x W may be large
                    rf = self._read(L.CELL_RF, np.s_[n])
                    if not np.isfinite(rf).all():
                        raise RecordingFormatError(self.path, L.CELL_RF, f"map {n} holds NaN or infinite values")
            if self.layout.has_types:
                self.cell_types  # noqa: B018

    def to_xarray(self):
        """A lazy `xarray.Dataset`: `frames (time, y, x)`, `spike_counts (repeat, time, cell)`."""
        from stimuli.recording.xarray_view import open_xarray

        return open_xarray(self)

    # --- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        t, h, w = self.shape
        return (f"Recording({self.path!r}, T={t}, H={h}, W={w}, N={self.n_cells}, "
                f"R={self.n_repeats}, {self.frame_rate:g} Hz)")


def open_recording(path: str | os.PathLike[str]) -> Recording:
    """Open and validate a recording-v1 file; raises `RecordingFormatError` naming what is wrong."""
    return Recording(path)


def _plain(value):
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value

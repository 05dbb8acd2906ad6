"""Check an open HDF5 file against recording-v1, reading metadata and small datasets only.

Every rule of the spec has its own message naming the dataset or attribute it concerns, so
the check never surfaces as an h5py traceback. Bulk data (frames, counts, RFs) is not read:
value rules on it (no NaN in repeat 0, finite whole counts) are checked on the parts a reader
loads (`check_counts`), or on all of it by `Recording.verify()` (`insilico inspect --deep`).
What is checked here is that the bulk data is there: every chunk a dataset's shape declares
is stored, so a file cannot claim 10^12 frames it never held.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import h5py
import numpy as np

from stimuli.recording import layout as L
from stimuli.recording.errors import RecordingFormatError


def validate(f: h5py.File, path: str) -> L.Layout:
    """Return the file's `Layout`, or raise `RecordingFormatError` naming the first broken rule."""

    def fail(where: str, problem: str) -> RecordingFormatError:
        return RecordingFormatError(path, where, problem)

    fmt = _attr_str(f.attrs.get("format"))
    if fmt is None:
        raise fail("@format", f"missing or not a string; expected {L.FORMAT!r}")
    if fmt != L.FORMAT:
        raise fail("@format", f"is {fmt!r}; expected {L.FORMAT!r}")
    version = f.attrs.get("version")
    if version is None:
        raise fail("@version", "missing")
    if not isinstance(version, Integral | np.integer) or isinstance(version, bool | np.bool_):
        raise fail("@version", f"must be an integer, got {version!r}")
    if int(version) != L.VERSION:
        raise fail("@version", f"is {int(version)}; this reader knows version {L.VERSION}")
    frame_rate = _positive_real(f.attrs.get("frame_rate"), "@frame_rate", fail, required=True)
    pixel_size = _positive_real(f.attrs.get("pixel_size_um"), "@pixel_size_um", fail, required=False)

    frames = _dataset(f, L.FRAMES, fail)
    if frames.dtype != np.uint8:
        raise fail(L.FRAMES, f"dtype is {frames.dtype}; expected uint8")
    if frames.ndim != 3:
        raise fail(L.FRAMES, f"has {frames.ndim} dimensions; expected 3 [T, H, W]")
    n_frames, height, width = (int(s) for s in frames.shape)
    for name, size in (("T", n_frames), ("H", height), ("W", width)):
        if size < 1:
            raise fail(L.FRAMES, f"{name} is {size}; must be >= 1")

    _check_stored(frames, L.FRAMES, fail)
    has_counts = _get(f, L.COUNTS, fail) is not None
    has_cells = _get(f, "/cells", fail) is not None
    n_repeats = n_cells = 0
    counts_dtype: str | None = None
    has_rf = has_types = False
    if has_counts != has_cells:
        present, missing = (L.COUNTS, "/cells") if has_counts else ("/cells", L.COUNTS)
        raise fail(missing, f"missing while {present} is present (a stimulus-only file has neither)")
    if has_counts:
        counts = _dataset(f, L.COUNTS, fail)
        if counts.dtype not in (np.uint16, np.float32):
            raise fail(L.COUNTS, f"dtype is {counts.dtype}; expected uint16 or float32")
        if counts.ndim != 3:
            raise fail(L.COUNTS, f"has {counts.ndim} dimensions; expected 3 [R, T, N]")
        n_repeats, t_counts, n_cells = (int(s) for s in counts.shape)
        if n_repeats < 1:
            raise fail(L.COUNTS, "R (repeats, axis 0) is 0; must be >= 1")
        if n_cells < 1:
            raise fail(L.COUNTS, "N (cells, axis 2) is 0; must be >= 1")
        if t_counts != n_frames:
            raise fail(L.COUNTS, f"has {t_counts} time bins (axis 1) but {L.FRAMES} has {n_frames} frames")
        counts_dtype = str(counts.dtype)
        _check_stored(counts, L.COUNTS, fail)

        ids = _dataset(f, L.CELL_IDS, fail)
        if ids.dtype != np.int64:
            raise fail(L.CELL_IDS, f"dtype is {ids.dtype}; expected int64")
        if ids.shape != (n_cells,):
            raise fail(L.CELL_IDS, f"shape is {ids.shape}; expected ({n_cells},) to match {L.COUNTS}")
        id_values = _read(ids, L.CELL_IDS, fail)
        if len(np.unique(id_values)) != n_cells:
            raise fail(L.CELL_IDS, "ids are not unique")

        if _get(f, L.CELL_RF, fail) is not None:
            rf = _dataset(f, L.CELL_RF, fail)
            if rf.dtype != np.float32:
                raise fail(L.CELL_RF, f"dtype is {rf.dtype}; expected float32")
            if rf.shape != (n_cells, height, width):
                raise fail(L.CELL_RF, f"shape is {rf.shape}; expected {(n_cells, height, width)} [N, H, W]")
            _check_stored(rf, L.CELL_RF, fail)
            has_rf = True
        if _get(f, L.CELL_TYPE, fail) is not None:
            types = _dataset(f, L.CELL_TYPE, fail)
            _require_strings(types, L.CELL_TYPE, fail)
            if types.shape != (n_cells,):
                raise fail(L.CELL_TYPE, f"shape is {types.shape}; expected ({n_cells},)")
            _texts(_read(types, L.CELL_TYPE, fail), L.CELL_TYPE, fail)
            has_types = True

    segments = _segments(f, n_frames, fail)
    return L.Layout(
        n_frames=n_frames,
        height=height,
        width=width,
        frame_rate=frame_rate,
        pixel_size_um=pixel_size,
        n_repeats=n_repeats,
        n_cells=n_cells,
        counts_dtype=counts_dtype,
        segments=segments,
        has_rf=has_rf,
        has_types=has_types,
    )


def _segments(f: h5py.File, n_frames: int, fail) -> tuple[L.Segment, ...]:
    paths = (L.SEGMENT_NAME, L.SEGMENT_START, L.SEGMENT_STOP)
    if _get(f, "/segments", fail) is None:
        raise fail("/segments", "missing (a file with one unnamed range still lists it)")
    name_ds, start_ds, stop_ds = (_dataset(f, p, fail) for p in paths)
    _require_strings(name_ds, L.SEGMENT_NAME, fail)
    for ds, p in ((start_ds, L.SEGMENT_START), (stop_ds, L.SEGMENT_STOP)):
        if ds.dtype != np.int64:
            raise fail(p, f"dtype is {ds.dtype}; expected int64")
    for ds, p in zip((name_ds, start_ds, stop_ds), paths, strict=True):
        if ds.ndim != 1:
            raise fail(p, f"has {ds.ndim} dimensions; expected 1 [S]")
    n = name_ds.shape[0]
    for ds, p in ((start_ds, L.SEGMENT_START), (stop_ds, L.SEGMENT_STOP)):
        if ds.shape[0] != n:
            raise fail(p, f"has {ds.shape[0]} entries but {L.SEGMENT_NAME} has {n}")
    names = _texts(_read(name_ds, L.SEGMENT_NAME, fail), L.SEGMENT_NAME, fail)
    starts = [int(v) for v in _read(start_ds, L.SEGMENT_START, fail)]
    stops = [int(v) for v in _read(stop_ds, L.SEGMENT_STOP, fail)]
    seen: set[str] = set()
    for name, start, stop in zip(names, starts, stops, strict=True):
        if name in seen:
            raise fail(L.SEGMENT_NAME, f"name {name!r} appears twice; names must be unique")
        seen.add(name)
        if not 0 <= start < stop <= n_frames:
            raise fail(
                "/segments",
                f"segment {name!r} [{start}, {stop}) does not lie inside [0, {n_frames}) "
                "with start < stop",
            )
    ordered = sorted(zip(starts, stops, names, strict=True))
    for (_, stop_a, name_a), (start_b, _, name_b) in zip(ordered, ordered[1:], strict=False):
        if start_b < stop_a:
            raise fail("/segments", f"segments {name_a!r} and {name_b!r} overlap")
    return tuple(L.Segment(n, a, b) for n, a, b in zip(names, starts, stops, strict=True))


def _dataset(f: h5py.File, path: str, fail) -> h5py.Dataset:
    obj = _get(f, path, fail)
    if obj is None:
        raise fail(path, "missing")
    if not isinstance(obj, h5py.Dataset):
        raise fail(path, "is a group; expected a dataset")
    return obj


def _get(f: h5py.File, path: str, fail) -> h5py.Group | h5py.Dataset | None:
    """The object at `path`, None where no link names it; a link whose object cannot be opened is
    a corrupt file, not a missing dataset (h5py's `in` and `get` cannot tell the two apart)."""
    obj: h5py.Group | h5py.Dataset = f
    where = ""
    for part in path.strip("/").split("/"):
        where = f"{where}/{part}"
        if not isinstance(obj, h5py.Group):
            return None
        try:
            listed = obj.id.links.exists(part.encode())
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            raise fail(where, f"cannot be looked up: the file is corrupt ({err})") from None
        if not listed:
            return None
        try:
            obj = obj[part]
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            raise fail(where, f"is listed but cannot be opened: its object header is corrupt ({err})") from None
    return obj


def _read(ds: h5py.Dataset, path: str, fail, selection=()) -> np.ndarray:  # noqa: ANN001 - an h5py selection
    """Read `ds[selection]`; a corrupt chunk or a failed checksum becomes a RecordingFormatError."""
    try:
        return ds[selection]
    except OSError as err:
        raise fail(path, f"cannot be read: a chunk is corrupt or fails its checksum ({err})") from None


def _check_stored(ds: h5py.Dataset, path: str, fail) -> None:
    """Every chunk the shape declares is in the file (a writer writes each one it fills).

    Counting allocated chunks reads the chunk index only, never the data.
    """
    if ds.size == 0:
        return
    if ds.chunks is None:
        stored, needed = ds.id.get_storage_size(), ds.size * ds.dtype.itemsize
        if stored < needed:
            raise fail(path, f"declares shape {ds.shape} ({needed} bytes) but the file stores {stored} bytes of it")
        return
    needed = math.prod(-(-s // c) for s, c in zip(ds.shape, ds.chunks, strict=True))
    try:
        stored = ds.id.get_num_chunks()
    except (OSError, RuntimeError) as err:
        raise fail(path, f"its chunk index cannot be read: the file is corrupt ({err})") from None
    if stored < needed:
        raise fail(path, f"declares shape {ds.shape} ({needed} chunks of {ds.chunks}) but only {stored} "
                         "chunks are stored: the data was never written, or the file was cut short")


def _texts(values: np.ndarray, path: str, fail) -> list[str]:
    out = []
    for i, value in enumerate(values):
        try:
            out.append(_decode(value))
        except UnicodeDecodeError:
            raise fail(path, f"entry {i} ({bytes(value)[:40]!r}) is not UTF-8 text") from None
    return out


def check_counts(counts: np.ndarray, path: str, start: int) -> None:
    """Value rules of spike counts `[R, t, N]` (float32) read from frames `[start, start + t)`.

    Counts are whole numbers >= 0; NaN marks a repeat that was not shown, so repeat 0 never
    holds it. Raises RecordingFormatError naming the first offending bin.
    """
    def fail(problem: str, mask: np.ndarray) -> RecordingFormatError:
        r, t, n = (int(i) for i in np.argwhere(mask)[0])
        return RecordingFormatError(path, L.COUNTS, f"{problem} (first at repeat {r}, frame {start + t}, "
                                                    f"cell index {n})")

    nan = np.isnan(counts)
    if nan[:1].any():
        raise fail("repeat 0 holds NaN; only repeats >= 1 may", nan & (np.arange(len(counts)) == 0)[:, None, None])
    with np.errstate(invalid="ignore"):
        if np.isinf(counts).any():
            raise fail("holds infinite counts", np.isinf(counts))
        if (counts < 0).any():
            raise fail("holds negative counts", counts < 0)
        fractional = ~nan & (counts != np.floor(counts))
    if fractional.any():
        raise fail("holds fractional counts; spike counts are whole numbers", fractional)


def _require_strings(ds: h5py.Dataset, path: str, fail) -> None:
    if h5py.check_string_dtype(ds.dtype) is None and ds.dtype.kind not in ("S", "U"):
        raise fail(path, f"dtype is {ds.dtype}; expected strings")


def _positive_real(value, where: str, fail, *, required: bool) -> float | None:
    if value is None:
        if required:
            raise fail(where, "missing")
        return None
    if isinstance(value, np.ndarray) and value.shape in ((), (1,)):
        value = value.reshape(()).item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real | np.number):
        raise fail(where, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise fail(where, f"is {value}; must be finite and > 0")
    return value


def _attr_str(value) -> str | None:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return None


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)

"""NWB file (units, stimulus presentations) -> recording-v1 file (frames, counts per frame bin).

The mapping, rule by rule, is in docs/nwb.md. In short:

1. Cells are the rows of `/units` (ids kept); their `spike_times` are the spikes.
2. Each image series in `stimulus/presentation` is a segment named after it: an
   `OpticalSeries`/`ImageSeries` holds its frames in `data` and is one showing; an `IndexSeries`
   points into an `Images` template (in the order of `order_of_images`) and, when its
   indices are one sequence repeated, each repetition is one showing (a repeat of the segment).
3. Frame t of a showing is on screen from its flip to the next flip of that showing. The last
   frame ends at the `stop_time` of the showing's row in `intervals/presentations` when the file
   has that table; else at the next flip of any presented series when that follows within
   `gap_intervals` median frame intervals (showings back to back); else one median interval
   after its own flip.
4. The frame rate is 1 / the median flip interval over every showing; series whose own median
   differs by more than `rate_tolerance` are refused (one recording has one frame rate).
5. Receptive fields: a `rf` column of `/units` when it has one, else the STA of a white-noise
   segment when there is one. Cell types (`cell_type` column) and each unit's first electrode
   are kept as cell metadata; flip times and spike times are kept beside the recording
   (`/timing`, `/spikes`) so that an export gives them back unchanged.

Frames and counts are written segment by segment in blocks of `chunk_frames`, and the STA is
accumulated block by block; spike times (8 bytes a spike), flip times and one segment's counts
are what is held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stimuli.errors import InputError
from stimuli.nwb.errors import NwbError
from stimuli.recording import RecordingWriter
from stimuli.recording.sta import DEFAULT_LAGS, NOISE_SEGMENT_NAMES, ReceptiveFieldAccumulator

if TYPE_CHECKING:  # pynwb loads slowly: imported where a file is read
    from pynwb import NWBFile, TimeSeries

PRESENTATIONS = "presentations"
"""Name of the `intervals` table whose rows give each showing's start and stop (our export's)."""


@dataclass(frozen=True)
class NwbImportSettings:
    """What to take from an NWB file and how to bin it; the CLI and notebooks build one of these."""

    units: tuple[int, ...] | None = None  # unit ids to keep; None: every unit
    stimuli: tuple[str, ...] | None = None  # series of stimulus/presentation to take; None: every image series
    noise_segment: str | None = None  # white-noise series for STA RFs; None: one named as NOISE_SEGMENT_NAMES
    rate_tolerance: float = 0.05  # largest relative difference between a series' and the overall frame interval
    gap_intervals: float = 1.5  # a next flip later than this many frame intervals leaves a gap after a showing
    sta_lags: tuple[int, ...] = tuple(DEFAULT_LAGS)
    chunk_frames: int = 512  # frames written per block (bounds memory on long segments)

    def __post_init__(self) -> None:
        for name in ("rate_tolerance", "gap_intervals", "chunk_frames"):
            if not getattr(self, name) > 0:
                raise InputError(f"NwbImportSettings.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ImportedSegment:
    name: str
    kind: str  # the NWB type: OpticalSeries, ImageSeries or IndexSeries
    n_frames: int
    repeats: int


@dataclass(frozen=True)
class NwbImportReport:
    """What an import did, for the user to read (`lines()`) and for tests to check."""

    out: Path
    n_cells: int
    frame_rate: float
    frame_rate_source: str
    segments: tuple[ImportedSegment, ...]
    n_spikes: int  # all spikes of the kept units
    n_spikes_outside: int  # of those, the ones in no bin of any imported showing
    units_outside_only: tuple[int, ...]  # units none of whose spikes fell in a showing
    rf_source: str | None
    ignored: tuple[str, ...] = field(default=())  # series of stimulus/presentation that are not images

    def lines(self) -> list[str]:
        out = [f"{self.n_cells} cells, {len(self.segments)} segments at {self.frame_rate:.4f} Hz "
               f"({self.frame_rate_source})"]
        out += [f"segment {s.name!r}: {s.kind}, {s.n_frames} frames, shown "
                f"{'once' if s.repeats == 1 else f'{s.repeats} times'}" for s in self.segments]
        share = self.n_spikes_outside / self.n_spikes if self.n_spikes else 0.0
        out.append(f"{self.n_spikes - self.n_spikes_outside} of {self.n_spikes} spikes binned; "
                   f"{self.n_spikes_outside} ({share:.1%}) fell outside every imported presentation")
        if self.units_outside_only:
            out.append(f"units with no spike inside any presentation: {list(self.units_outside_only)}")
        out.append(f"receptive fields: {self.rf_source or 'none (no rf column and no white-noise segment)'}")
        if self.ignored:
            out.append(f"not image series, ignored: {', '.join(self.ignored)}")
        return out


# --- what one image series showed, and when ---------------------------------------------------
@dataclass(frozen=True)
class _Series:
    name: str
    kind: str
    flips: np.ndarray  # [K] float64 s, one per entry of the series
    period: int  # P frames per showing
    n_showings: int  # K / P
    height: int
    width: int
    read: Callable[[int, int], np.ndarray]  # frames [a, b) of one showing -> [b - a, H, W] uint8
    pixel_size_um: float | None

    def showing_flips(self, r: int) -> np.ndarray:
        return self.flips[r * self.period:(r + 1) * self.period]


@dataclass(frozen=True)
class _Showing:
    series: str
    repeat: int
    edges: np.ndarray  # [T + 1] s: frame t is on screen in [edges[t], edges[t + 1])


def import_nwb(path: str | os.PathLike[str], out: str | os.PathLike[str],
               settings: NwbImportSettings = NwbImportSettings()) -> NwbImportReport:
    """Convert an NWB file into the recording-v1 file `out` (written atomically).

    Raises `NwbError` naming the NWB object that is missing or inconsistent; nothing is
    written then.
    """
    from pynwb import NWBHDF5IO

    src = str(path)
    if not Path(src).is_file():
        raise FileNotFoundError(f"{src}: no such NWB file")
    _precheck(src)
    try:
        io = NWBHDF5IO(src, "r", load_namespaces=True)
        nwbfile = io.read()
    except Exception as err:  # pynwb/hdmf raise many types for a file that is not NWB
        detail = str(err).splitlines()[0][:300] if str(err) else ""
        raise NwbError(src, "file", f"not a readable NWB file ({type(err).__name__}: {detail})") from None
    try:
        return _import(src, nwbfile, Path(out), settings)
    finally:
        io.close()


def _precheck(src: str) -> None:
    """Refuse, by name, what pynwb would only refuse with a long construction error."""
    import h5py

    try:
        f = h5py.File(src, "r")
    except OSError as err:
        raise NwbError(src, "file", f"not a readable NWB file (not HDF5: {err})") from None
    with f:
        group = f.get("stimulus/presentation")
        for name, obj in (group.items() if isinstance(group, h5py.Group) else ()):
            if isinstance(obj, h5py.Group) and "data" in obj and "timestamps" not in obj \
                    and "starting_time" not in obj:
                raise NwbError(src, f"stimulus/presentation/{name}", "has neither timestamps nor "
                               "starting_time + rate: when was each frame shown?")


def _import(src: str, nwbfile: NWBFile, out: Path, settings: NwbImportSettings) -> NwbImportReport:
    ids, spikes = _units(src, nwbfile, settings.units)
    series, ignored = _image_series(src, nwbfile, settings.stimuli)
    median = _frame_interval(src, series, settings.rate_tolerance)
    showings = _showings(src, nwbfile, series, _other_flips(nwbfile, series), median, settings.gap_intervals)
    sizes = {(s.height, s.width) for s in series}
    if len(sizes) > 1:
        listing = ", ".join(f"{s.name} {s.height}x{s.width}" for s in series)
        raise NwbError(src, "stimulus/presentation", f"series differ in frame size ({listing}); one recording "
                       "has one screen size: import them into separate files (stimuli setting)")
    height, width = sizes.pop()
    order = sorted(series, key=lambda s: s.flips[0])
    n_repeats = max(s.n_showings for s in series)
    pixel = next((s.pixel_size_um for s in order if s.pixel_size_um is not None), None)
    n_flips = sum(len(s.flips) for s in series)
    rate_source = f"1 / median flip interval, {median * 1e3:.3f} ms over {n_flips} flips"
    # Rounded to a micro-hertz: flips written at exactly 1/rate come back as that rate.
    frame_rate = round(1.0 / median, 6)

    inside = np.zeros(len(ids), dtype=np.int64)
    noise_name = _noise_name(src, order, settings.noise_segment)
    sta: ReceptiveFieldAccumulator | None = None
    imported: list[ImportedSegment] = []
    with RecordingWriter(out, frame_rate=frame_rate, height=height, width=width, cell_ids=ids,
                         n_repeats=n_repeats, counts_dtype="float32", pixel_size_um=pixel,
                         attrs={**_session_attrs(src, nwbfile, rate_source),
                                "timing_source": f"flips of the NWB stimulus series in {Path(src).name}"}) as writer:
        for s in order:
            edges = np.stack([sh.edges for sh in showings[s.name]])  # [R_s, T + 1]
            counts = np.stack([_bin(edges[r], spikes) for r in range(len(edges))])  # [R_s, T, N]
            inside += counts.sum(axis=(0, 1)).astype(np.int64)
            start = writer.n_frames
            if s.name == noise_name:
                lags = [lag for lag in settings.sta_lags if lag < s.period]
                sta = ReceptiveFieldAccumulator(len(ids), height, width, lags) if lags else None
            for a in range(0, s.period, settings.chunk_frames):
                b = min(a + settings.chunk_frames, s.period)
                frames = s.read(a, b)
                writer.append(frames, counts[:, a:b])
                if s.name == noise_name and sta is not None:
                    sta.add(frames.astype(np.float32) / 255.0, counts[:, a:b].mean(axis=0))
            writer.add_segment(s.name, start, start + s.period)
            writer.write_extra(f"/timing/{s.name}/flip_time", edges)
            imported.append(ImportedSegment(s.name, s.kind, s.period, len(edges)))
        flat = np.concatenate(spikes) if spikes else np.zeros(0)
        writer.write_extra("/spikes/times", flat.astype(np.float64))
        writer.write_extra("/spikes/index", np.cumsum([len(x) for x in spikes]).astype(np.int64))
        rf_source = _cell_metadata(src, nwbfile, writer, settings, ids, height, width)
        if rf_source is None and sta is not None:
            rf = sta.result()
            writer.set_rf(rf.maps)
            rf_source = rf.source(noise_name)
        totals = np.array([len(x) for x in spikes], dtype=np.int64)
        writer.set_cell_extra("n_spikes_outside", totals - inside)
    outside_only = tuple(int(i) for i, t, n in zip(ids, totals, inside, strict=True) if t > 0 and n == 0)
    return NwbImportReport(out=out, n_cells=len(ids), frame_rate=frame_rate, frame_rate_source=rate_source,
                           segments=tuple(imported), n_spikes=int(totals.sum()),
                           n_spikes_outside=int((totals - inside).sum()), units_outside_only=outside_only,
                           rf_source=rf_source, ignored=tuple(ignored))


# --- units ----------------------------------------------------------------------------------------
def _units(src: str, nwbfile: NWBFile, keep: Sequence[int] | None) -> tuple[np.ndarray, list[np.ndarray]]:
    units = nwbfile.units
    if units is None or len(units.id) == 0:
        raise NwbError(src, "/units", "missing or empty: the file has no sorted units to take spikes from")
    if "spike_times" not in units.colnames:
        raise NwbError(src, "/units/spike_times", "missing: the units have no spike times")
    ids = np.asarray(units.id[:], dtype=np.int64)
    ends = np.asarray(units["spike_times"].data[:], dtype=np.int64)
    flat = units["spike_times"].target.data
    rows = np.arange(len(ids))
    if keep is not None:
        want = np.asarray(list(keep), dtype=np.int64)
        unknown = want[~np.isin(want, ids)]
        if len(unknown):
            known = ", ".join(str(i) for i in ids[:12]) + (" ..." if len(ids) > 12 else "")
            raise NwbError(src, "/units", f"no unit with id {unknown.tolist()} (ids: {known})")
        rows = np.array([int(np.flatnonzero(ids == i)[0]) for i in want], dtype=np.int64)
    spikes = []
    for row in rows:
        lo = int(ends[row - 1]) if row > 0 else 0
        times = np.sort(np.asarray(flat[lo:int(ends[row])], dtype=np.float64))
        if not np.isfinite(times).all():
            raise NwbError(src, "/units/spike_times", f"unit {ids[row]} has a spike time that is not finite")
        spikes.append(times)
    return ids[rows], spikes


def _cell_metadata(src: str, nwbfile: NWBFile, writer: RecordingWriter, settings: NwbImportSettings,
                   ids: np.ndarray, height: int, width: int) -> str | None:
    """Cell types, electrodes and (when given) RFs of the kept units; returns the RF source."""
    units = nwbfile.units
    rows = np.array([int(np.flatnonzero(units.id[:] == i)[0]) for i in ids])
    if "cell_type" in units.colnames:
        types = np.asarray(units["cell_type"].data[:])
        writer.set_cell_types([_text(types[r]) for r in rows])
    if "electrodes" in units.colnames:
        col = units["electrodes"]
        ends = np.asarray(col.data[:], dtype=np.int64)
        region = np.asarray(col.target.data[:], dtype=np.int64)
        table_ids = np.asarray(col.target.table.id[:], dtype=np.int64)
        first = [table_ids[region[ends[r - 1] if r > 0 else 0]] if ends[r] > (ends[r - 1] if r > 0 else 0)
                 else -1 for r in rows]
        writer.set_cell_extra("electrode", np.asarray(first, dtype=np.int64))
    if "rf" in units.colnames:
        rf = np.asarray(units["rf"].data[:], dtype=np.float32)
        if rf.shape[1:] != (height, width):
            raise NwbError(src, "/units/rf", f"maps are {list(rf.shape[1:])}, the frames are [{height}, {width}]")
        writer.set_rf(rf[rows])
        return "/units/rf"
    return None


# --- stimulus series -------------------------------------------------------------------------------
def _image_series(src: str, nwbfile: NWBFile, wanted: Sequence[str] | None) -> tuple[list[_Series], list[str]]:
    from pynwb.image import ImageSeries, IndexSeries

    where = "stimulus/presentation"
    present = dict(nwbfile.stimulus)
    if wanted is not None:
        missing = [n for n in wanted if n not in present]
        if missing:
            raise NwbError(src, where, f"no series named {missing} (series: {', '.join(present) or 'none'})")
        present = {n: present[n] for n in wanted}
    series, ignored = [], []
    for name, obj in present.items():
        if isinstance(obj, IndexSeries):
            series.append(_index_series(src, obj))
        elif isinstance(obj, ImageSeries):
            series.append(_frame_series(src, obj))
        elif wanted is not None:
            raise NwbError(src, f"{where}/{name}", f"is a {type(obj).__name__}, not an image series")
        else:
            ignored.append(name)
    if not series:
        raise NwbError(src, where, "holds no OpticalSeries, ImageSeries or IndexSeries: no stimulus to bin to")
    return series, ignored


def _flips(src: str, obj: TimeSeries, n: int) -> np.ndarray:
    where = f"stimulus/presentation/{obj.name}"
    if obj.timestamps is not None:
        flips = np.asarray(obj.timestamps[:], dtype=np.float64)
        if len(flips) != n:
            raise NwbError(src, f"{where}/timestamps", f"has {len(flips)} flip times for {n} frames")
    elif obj.rate is not None and obj.starting_time is not None:
        if not obj.rate > 0:
            raise NwbError(src, f"{where}/starting_time", f"rate is {obj.rate}; must be > 0")
        flips = float(obj.starting_time) + np.arange(n, dtype=np.float64) / float(obj.rate)
    else:
        raise NwbError(src, where, "has neither timestamps nor starting_time + rate: when was each frame shown?")
    if not np.isfinite(flips).all():
        raise NwbError(src, f"{where}/timestamps", "holds a flip time that is not finite")
    steps = np.diff(flips)
    if (steps <= 0).any():
        k = int(np.flatnonzero(steps <= 0)[0])
        raise NwbError(src, f"{where}/timestamps", f"flips out of order: frame {k + 1} at {flips[k + 1]:.6f} s "
                       f"does not come after frame {k} at {flips[k]:.6f} s")
    return flips


def _frame_series(src: str, obj: TimeSeries) -> _Series:
    where = f"stimulus/presentation/{obj.name}"
    if obj.external_file is not None and len(obj.external_file) > 0:
        raise NwbError(src, f"{where}/external_file", "frames live in external files; store them in data to import")
    data = obj.data
    shape = tuple(int(s) for s in data.shape)
    height, width = _frame_shape(src, f"{where}/data", shape[1:])
    if shape[0] < 1:
        raise NwbError(src, f"{where}/data", "holds no frames")
    flips = _flips(src, obj, shape[0])

    def read(a: int, b: int) -> np.ndarray:
        return _grey(src, f"{where}/data", np.asarray(data[a:b]))

    pixel = None
    fov = getattr(obj, "field_of_view", None)
    if fov is not None and len(fov) >= 1 and float(fov[0]) > 0:
        pixel = _round(float(fov[0]) / width * 1e6)
    return _Series(obj.name, type(obj).__name__, flips, shape[0], 1, height, width, read, pixel)


def _index_series(src: str, obj: TimeSeries) -> _Series:
    where = f"stimulus/presentation/{obj.name}"
    index = np.asarray(obj.data[:])
    if index.ndim != 1 or len(index) == 0 or index.dtype.kind not in "iu":
        raise NwbError(src, f"{where}/data", f"must be 1-D integer template indices, got {index.dtype} {list(index.shape)}")
    index = index.astype(np.int64)
    if obj.indexed_images is not None:
        images = obj.indexed_images
        if images.order_of_images is None:
            if len(images.images) != 1:
                raise NwbError(src, f"stimulus/templates/{images.name}", "has no order_of_images: which image is index k?")
            template = list(images.images.values())
        else:
            template = list(images.order_of_images.data[:])
        tname = f"stimulus/templates/{images.name}"
        n_template = len(template)
        shapes = {tuple(int(s) for s in np.shape(img.data)) for img in template}
        if len(shapes) != 1:
            raise NwbError(src, tname, f"images differ in size: {sorted(shapes)}")
        height, width = _frame_shape(src, tname, shapes.pop())

        def frames_of(picked: np.ndarray) -> np.ndarray:
            cache: dict[int, np.ndarray] = {}
            for k in np.unique(picked):
                cache[int(k)] = _grey(src, f"{tname}/{template[k].name}", np.asarray(template[k].data[()])[None])[0]
            return np.stack([cache[int(k)] for k in picked])

        pixel = next((_round(1e4 / float(img.resolution)) for img in template[:1]
                      if img.resolution is not None and float(img.resolution) > 0), None)
    else:
        # pynwb 4 no longer builds IndexSeries over an ImageSeries (indexed_timeseries).
        raise NwbError(src, where, "has no indexed_images: no template to index")
    if index.min() < 0 or index.max() >= n_template:
        raise NwbError(src, f"{where}/data", f"indices run {index.min()}..{index.max()}; the template holds "
                       f"{n_template} frames")
    flips = _flips(src, obj, len(index))
    period = _period(index)
    one = index[:period]
    return _Series(obj.name, "IndexSeries", flips, period, len(index) // period, height, width,
                   lambda a, b: frames_of(one[a:b]), pixel)


def _period(index: np.ndarray) -> int:
    """Smallest P dividing K such that the K indices are the first P repeated (K: one showing)."""
    k = len(index)
    for p in range(1, k // 2 + 1):
        if k % p == 0 and np.array_equal(index, np.tile(index[:p], k // p)):
            return p
    return k


def _frame_shape(src: str, where: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if len(shape) == 3 and shape[2] in (3, 4):
        raise NwbError(src, where, f"frames are colour ({shape[2]} channels); recordings hold grey levels")
    if len(shape) != 2 or min(shape) < 1:
        raise NwbError(src, where, f"frames must be [height, width] grey images, got {list(shape)}")
    return shape[0], shape[1]


def _grey(src: str, where: str, frames: np.ndarray) -> np.ndarray:
    """Frames `[t, H, W]` (or `[t, H, W, 1]`) as uint8 grey levels; floats must lie in [0, 1]."""
    if frames.ndim == 4:
        frames = frames[..., 0]
    if frames.dtype == np.uint8:
        return frames
    if frames.dtype.kind == "f":
        if not np.isfinite(frames).all() or frames.min() < 0 or frames.max() > 1:
            raise NwbError(src, where, "float frames must be grey levels in [0, 1]")
        return np.rint(frames * 255).astype(np.uint8)
    raise NwbError(src, where, f"frames are {frames.dtype}; expected uint8 grey levels or floats in [0, 1]")


# --- timing -----------------------------------------------------------------------------------------
def _frame_interval(src: str, series: list[_Series], tolerance: float) -> float:
    steps = [np.diff(s.showing_flips(r)) for s in series for r in range(s.n_showings)]
    pooled = np.concatenate(steps)
    if len(pooled) == 0:
        raise NwbError(src, "stimulus/presentation", "every showing is one frame long: no flip interval to "
                       "take the frame rate from")
    median = float(np.median(pooled))
    for s, own in _series_medians(series):
        if abs(own / median - 1) > tolerance:
            raise NwbError(src, f"stimulus/presentation/{s.name}",
                           f"flips every {own * 1e3:.3f} ms, the others every {median * 1e3:.3f} ms: one "
                           "recording has one frame rate; import the series separately (stimuli setting)")
    return median


def _series_medians(series: list[_Series]) -> list[tuple[_Series, float]]:
    out = []
    for s in series:
        steps = np.concatenate([np.diff(s.showing_flips(r)) for r in range(s.n_showings)])
        if len(steps):
            out.append((s, float(np.median(steps))))
    return out


def _other_flips(nwbfile: NWBFile, series: list[_Series]) -> np.ndarray:
    """Flip times of the presented image series not taken: their first frame ends the one before."""
    from pynwb.image import ImageSeries, IndexSeries

    taken = {s.name for s in series}
    out = []
    for name, obj in nwbfile.stimulus.items():
        if name in taken or not isinstance(obj, ImageSeries | IndexSeries):
            continue
        if obj.timestamps is not None:
            out.append(np.asarray(obj.timestamps[:], dtype=np.float64))
        elif obj.rate is not None and obj.starting_time is not None and obj.data is not None:
            out.append(float(obj.starting_time) + np.arange(len(obj.data)) / float(obj.rate))
    return np.concatenate(out) if out else np.zeros(0)


def _showings(src: str, nwbfile: NWBFile, series: list[_Series], other_flips: np.ndarray, median: float,
              gap_intervals: float) -> dict[str, list[_Showing]]:
    """Bin edges of every showing: frame flips plus the end of its last frame (module rule 3)."""
    stops = _presentation_stops(src, nwbfile)
    every_flip = np.sort(np.concatenate([*(s.flips for s in series), other_flips]))
    out: dict[str, list[_Showing]] = {}
    for s in series:
        shown = []
        for r in range(s.n_showings):
            flips = s.showing_flips(r)
            end = _listed_stop(src, stops.get(s.name), flips, median)
            if end is None:
                k = int(np.searchsorted(every_flip, flips[-1], side="right"))
                nxt = every_flip[k] if k < len(every_flip) else np.inf
                end = nxt if nxt - flips[-1] <= gap_intervals * median else flips[-1] + median
            shown.append(_Showing(s.name, r, np.append(flips, end)))
        out[s.name] = shown
    spans = sorted((sh.edges[0], sh.edges[-1], sh.series, sh.repeat) for v in out.values() for sh in v)
    for (_, end_a, name_a, r_a), (start_b, _, name_b, r_b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a - 1e-9:
            raise NwbError(src, "stimulus/presentation", f"showing {r_a} of {name_a!r} (until {end_a:.6f} s) overlaps "
                           f"showing {r_b} of {name_b!r} (from {start_b:.6f} s): one screen shows one frame at a time")
    return out


def _presentation_stops(src: str, nwbfile: NWBFile) -> dict[str, np.ndarray]:
    """`{series: [k, 2] (start_time, stop_time)}` from `intervals/presentations`, if the file has it."""
    table = nwbfile.intervals.get(PRESENTATIONS) if nwbfile.intervals is not None else None
    if table is None:
        return {}
    if "stimulus_name" not in table.colnames:
        raise NwbError(src, f"intervals/{PRESENTATIONS}", "has no stimulus_name column: which series is each row?")
    names = [_text(v) for v in table["stimulus_name"].data[:]]
    starts = np.asarray(table["start_time"].data[:], dtype=np.float64)
    stops = np.asarray(table["stop_time"].data[:], dtype=np.float64)
    out: dict[str, list[tuple[float, float]]] = {}
    for n, a, b in zip(names, starts, stops, strict=True):
        out.setdefault(n, []).append((a, b))
    return {n: np.asarray(v) for n, v in out.items()}


def _listed_stop(src: str, rows: np.ndarray | None, flips: np.ndarray, median: float) -> float | None:
    if rows is None:
        return None
    hit = np.flatnonzero(np.abs(rows[:, 0] - flips[0]) < 0.5 * median)
    if len(hit) == 0:
        return None
    stop = float(rows[hit[0], 1])
    if stop <= flips[-1]:
        raise NwbError(src, f"intervals/{PRESENTATIONS}", f"a row stops at {stop:.6f} s, before the last flip "
                       f"({flips[-1]:.6f} s) of the showing it starts")
    return stop


def _bin(edges: np.ndarray, spikes: list[np.ndarray]) -> np.ndarray:
    """Counts `[T, N]` of each unit's spikes in `[edges[t], edges[t + 1])`."""
    n_frames = len(edges) - 1
    out = np.zeros((n_frames, len(spikes)), dtype=np.float32)
    for n, times in enumerate(spikes):
        lo, hi = np.searchsorted(times, [edges[0], edges[-1]], side="left")
        t = np.searchsorted(edges, times[lo:hi], side="right") - 1
        out[:, n] = np.bincount(t, minlength=n_frames)[:n_frames]
    return out


# --- metadata ---------------------------------------------------------------------------------------
def _noise_name(src: str, order: list[_Series], wanted: str | None) -> str | None:
    names = [s.name for s in order]
    if wanted is not None:
        if wanted not in names:
            raise NwbError(src, "stimulus/presentation", f"no series {wanted!r} to estimate receptive fields from "
                           f"(series: {', '.join(names)})")
        return wanted
    return next((n for n in names if n.lower() in NOISE_SEGMENT_NAMES), None)


def _session_attrs(src: str, nwbfile: NWBFile, rate_source: str) -> dict[str, object]:
    """Root attributes that carry the NWB session metadata, so an export can give it back."""
    attrs: dict[str, object] = {"source": "NWB import", "nwb_file": Path(src).name,
                                "frame_rate_source": rate_source}
    resolution = nwbfile.units.resolution if nwbfile.units is not None else None
    if resolution is not None and float(resolution) > 0:
        attrs["spike_time_resolution"] = float(resolution)  # s; an export declares it again
    plain = {"nwb_session_description": nwbfile.session_description, "nwb_identifier": nwbfile.identifier,
             "nwb_session_start_time": nwbfile.session_start_time.isoformat(), "nwb_lab": nwbfile.lab,
             "nwb_institution": nwbfile.institution}
    if nwbfile.experimenter:
        plain["nwb_experimenter"] = "; ".join(_text(e) for e in nwbfile.experimenter)
    subject = nwbfile.subject
    if subject is not None:
        for key in ("subject_id", "species", "sex", "age", "weight", "strain", "description"):
            plain[f"nwb_subject_{key}"] = getattr(subject, key, None)
    attrs.update({k: _text(v) for k, v in plain.items() if v is not None})
    return attrs


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)


def _round(value: float) -> float:
    # Sizes travel as metres or pixels per cm; 12 significant digits undo the float round trip.
    return float(f"{value:.12g}")

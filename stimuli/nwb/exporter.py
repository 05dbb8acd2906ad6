"""Recording-v1 file -> NWB file that `nwbinspector` passes without a critical finding.

What goes where (docs/nwb.md has the full table):

- cells -> `/units` rows (id = cell id) with `spike_times`: the recorded spike times when the
  recording keeps them (`/spikes`, e.g. from an NWB import), otherwise one time per counted spike
  at the centre of its frame bin; the `spike_times_source` column says which, per unit.
- each segment -> a series in `stimulus/presentation` named after it: an `OpticalSeries` when it
  was shown once and is at least as long as the screen is wide (`nwbinspector` takes a shorter
  frame axis for a transposed array), otherwise an `IndexSeries` over an `Images` template of
  its frames in `stimulus/templates`, one run of indices per repeat.
- flip times: the recorded ones (`/timing/<segment>/flip_time`) when present, otherwise frame
  t of a showing at t / frame_rate, showings back to back in file order (the notes say so).
- every showing -> a row of the `presentations` TimeIntervals table (its `stop_time` is the end
  of the last frame, which the stimulus series cannot hold); recorded flips also go to
  `acquisition/frame_flips`; designs (`DesignRecord`s from the closed loop) -> the `designs`
  TimeIntervals table, one row per showing of each designed or control clip.
- session and subject metadata -> `NWBFile` and `Subject`, from `NwbSessionMetadata`, filled
  from the recording's `nwb_*` attributes where the caller leaves a field unset.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from stimuli.files import atomic_path
from stimuli.nwb.errors import NwbError
from stimuli.nwb.importer import PRESENTATIONS
from stimuli.recording import open_recording

if TYPE_CHECKING:  # pynwb loads slowly: imported where a file is written
    from pynwb import NWBFile

    from stimuli.recording.layout import Segment
    from stimuli.recording.reader import Recording

REQUIRED_SUBJECT = ("subject_id", "species", "sex", "age")
"""Subject fields an archive (and nwbinspector, as critical) asks for; export refuses without them."""


@dataclass(frozen=True)
class NwbSessionMetadata:
    """Session and subject metadata of an export; unset fields come from the recording's attrs."""

    session_description: str | None = None
    session_start_time: str | None = None  # ISO 8601 with a time zone, e.g. 2026-11-03T10:00:00+00:00
    experimenter: str | None = None  # several separated by "; "
    lab: str | None = None
    institution: str | None = None
    subject_id: str | None = None
    species: str | None = None  # Latin binomial, e.g. "Mus musculus"
    sex: str | None = None  # M, F, O or U (unknown)
    age: str | None = None  # ISO 8601 duration, e.g. "P90D"
    weight: str | None = None  # e.g. "0.025 kg"
    strain: str | None = None
    subject_description: str | None = None

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> NwbSessionMetadata:
        """Read the fields from a TOML file (top-level keys named as the fields)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such metadata file")
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise NwbError(str(path), "metadata", f"not valid TOML ({err})") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise NwbError(str(path), "metadata", f"unknown keys {unknown} (known: {', '.join(sorted(known))})")
        return cls(**{k: str(v) for k, v in table.items()})

    def filled_from(self, attrs: dict[str, object]) -> NwbSessionMetadata:
        """This metadata, with unset fields taken from `nwb_*` root attributes (an NWB import's)."""
        found = {}
        for f in fields(self):
            key = "nwb_subject_description" if f.name == "subject_description" else (
                f"nwb_subject_{f.name}" if f.name in ("subject_id", "species", "sex", "age", "weight", "strain")
                else f"nwb_{f.name}")
            if getattr(self, f.name) is None and key in attrs:
                found[f.name] = str(attrs[key])
        return replace(self, **found)

    def missing(self) -> list[str]:
        """The required subject fields (`REQUIRED_SUBJECT`) that are unset."""
        return [k for k in REQUIRED_SUBJECT if getattr(self, k) is None]


@dataclass(frozen=True)
class DesignRecord:
    """One clip of a closed-loop round: which segment showed it, for which cell and objective."""

    segment: str
    objective: str  # e.g. increase, discriminative
    cell: int  # target cell id
    twin: str  # the twin that designed it (its run folder)
    role: str = "design"  # design, or the control it is: natural, parametric


@dataclass(frozen=True)
class NwbExportReport:
    out: Path
    n_units: int
    n_spikes: int
    spike_times_source: str  # "recorded" or "bin centres"
    flip_source: str  # "recorded" or "synthesized from frame_rate"
    series: tuple[tuple[str, str], ...]  # (segment, NWB type)

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{n} ({k})" for n, k in self.series)
        return [f"{self.n_units} units, {self.n_spikes} spikes (spike times: {self.spike_times_source})",
                f"stimuli: {kinds}; flip times: {self.flip_source}"]


@dataclass(frozen=True)
class _Extras:
    """What a recording may keep beside the spec that an export uses (see the module docstring)."""

    flips: dict[str, np.ndarray]  # segment -> [R_s, T + 1] s
    spike_times: list[np.ndarray] | None  # per cell, s
    electrode: np.ndarray | None  # [N] int64, -1 none
    timing_source: str | None


def export_nwb(recording: str | os.PathLike[str], out: str | os.PathLike[str],
               metadata: NwbSessionMetadata = NwbSessionMetadata(),
               designs: Sequence[DesignRecord] = ()) -> NwbExportReport:
    """Write the recording as the NWB file `out` (atomically); raises `NwbError` on what it cannot say."""
    from pynwb import NWBHDF5IO

    src = str(recording)
    with open_recording(src) as rec:
        if not rec.has_responses:
            raise NwbError(src, "/responses", "a stimulus-only file has no units to export")
        meta = metadata.filled_from(rec.attrs)
        missing = meta.missing()
        if missing:
            raise NwbError(src, "metadata", f"the subject's {', '.join(missing)} are unknown; archives require "
                           "them: give them as metadata (insilico export nwb --metadata FILE.toml)")
        extras = _read_extras(src, rec.n_cells)
        nwbfile, report = _build(src, rec, meta, extras, designs)
        with atomic_path(out) as tmp, NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)
    return replace(report, out=Path(out))


def _read_extras(src: str, n_cells: int) -> _Extras:
    with h5py.File(src, "r") as f:
        flips = {name: np.asarray(group["flip_time"][()], dtype=np.float64)
                 for name, group in f["timing"].items() if "flip_time" in group} if "timing" in f else {}
        spike_times = None
        if "spikes" in f:
            times = np.asarray(f["spikes/times"][()], dtype=np.float64)
            ends = np.asarray(f["spikes/index"][()], dtype=np.int64)
            if len(ends) != n_cells:
                raise NwbError(src, "/spikes/index", f"has {len(ends)} entries for {n_cells} cells")
            spike_times = np.split(times, ends[:-1])
        electrode = np.asarray(f["cells/electrode"][()], dtype=np.int64) if "cells/electrode" in f else None
        source = f.attrs.get("timing_source")
    return _Extras(flips, spike_times, electrode, _plain(source) if source is not None else None)


def _build(src: str, rec: Recording, meta: NwbSessionMetadata, extras: _Extras,
           designs: Sequence[DesignRecord]) -> tuple[NWBFile, NwbExportReport]:
    from hdmf.data_utils import DataChunkIterator
    from pynwb import NWBFile, TimeSeries
    from pynwb.base import ImageReferences
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.image import GrayscaleImage, Images, IndexSeries, OpticalSeries

    # 1. When each frame of each showing was on screen: [R_s, T + 1] per segment.
    timing: dict[str, np.ndarray] = {}
    clock = 0.0
    for seg in rec.segments:
        shown = rec.repeats_shown(seg.name)
        if seg.name in extras.flips:
            edges = extras.flips[seg.name]
            if edges.shape != (shown, seg.n_frames + 1):
                raise NwbError(src, f"/timing/{seg.name}/flip_time", f"shape is {list(edges.shape)}; the segment "
                               f"was shown {shown} times over {seg.n_frames} frames: expected [{shown}, {seg.n_frames + 1}]")
        else:
            edges = clock + np.arange(shown * seg.n_frames + 1, dtype=np.float64) / rec.frame_rate
            edges = np.stack([edges[r * seg.n_frames:(r + 1) * seg.n_frames + 1] for r in range(shown)])
            clock = float(edges[-1, -1])
        timing[seg.name] = edges
    recorded_flips = bool(extras.flips)
    if recorded_flips and len(extras.flips) != len(rec.segments):
        absent = [s.name for s in rec.segments if s.name not in extras.flips]
        raise NwbError(src, "/timing", f"holds flip times for some segments but not {absent}")
    flip_source = "recorded" if recorded_flips else "synthesized from frame_rate"

    # 2. The file and its subject.
    start = _start_time(src, meta.session_start_time)
    notes = [f"Exported by insilico from the recording-v1 file {Path(src).name}."]
    if not recorded_flips:
        notes.append(f"The recording kept no flip times: frame t of each showing is placed at t / {rec.frame_rate:g} Hz, "
                     "showings back to back in the file's segment order.")
    if extras.timing_source:
        notes.append(f"Flip times: {extras.timing_source}.")
    nwbfile = NWBFile(
        session_description=meta.session_description or f"retina recording {Path(src).stem}",
        identifier=str(uuid.uuid4()), session_start_time=start,
        experimenter=meta.experimenter.split("; ") if meta.experimenter else None,
        lab=meta.lab, institution=meta.institution, notes=" ".join(notes),
    )
    nwbfile.subject = Subject(subject_id=meta.subject_id, species=meta.species, sex=meta.sex, age=meta.age,
                              weight=meta.weight, strain=meta.strain, description=meta.subject_description)

    # 3. Stimuli: one series per segment, and one presentations row per showing.
    pixel = rec.pixel_size_um
    _, height, width = rec.shape
    rows = []
    kinds = []
    for seg in rec.segments:
        edges = timing[seg.name]
        shown = len(edges)
        described = f"segment {seg.name!r} of {Path(src).name}: {seg.n_frames} frames, shown {shown} times"
        if shown == 1 and seg.n_frames >= max(height, width):
            frames = DataChunkIterator(data=_frame_blocks(rec, seg), maxshape=(seg.n_frames, height, width),
                                       dtype=np.dtype(np.uint8), buffer_size=64)
            fov = [width * pixel * 1e-6, height * pixel * 1e-6] if pixel else None
            nwbfile.add_stimulus(OpticalSeries(
                name=seg.name, data=frames, unit="grey level", format="raw", timestamps=edges[0, :-1],
                field_of_view=fov, distance=None, orientation="row 0 is the top of the screen",
                description=described + "; data [frame, row, column] uint8, 0 black .. 255 white"))
            kinds.append((seg.name, "OpticalSeries"))
        else:
            stack = rec.frames(seg.name)
            resolution = 1e4 / pixel if pixel else None
            images = [GrayscaleImage(name=f"frame{t:06d}", data=stack[t], resolution=resolution,
                                     description=f"frame {t} of segment {seg.name!r}") for t in range(seg.n_frames)]
            template = Images(name=seg.name, images=images, description=f"the frames of segment {seg.name!r}",
                              order_of_images=ImageReferences(name="order_of_images", data=images))
            nwbfile.add_stimulus_template(template)
            index = np.tile(np.arange(seg.n_frames, dtype=np.uint32), shown)
            nwbfile.add_stimulus(IndexSeries(
                name=seg.name, data=index, unit="N/A", indexed_images=template,
                timestamps=edges[:, :-1].reshape(-1),
                description=described + f"; one run of {seg.n_frames} indices per repeat"))
            kinds.append((seg.name, "IndexSeries"))
        rows += [(float(edges[r, 0]), float(edges[r, -1]), seg.name, r) for r in range(shown)]
    table = TimeIntervals(name=PRESENTATIONS, description="every showing of every stimulus series: start at its "
                          "first flip, stop at the end of its last frame")
    table.add_column("stimulus_name", "the series in stimulus/presentation that was shown")
    table.add_column("repeat", "which showing of that series (0 = first)")
    for a, b, name, r in sorted(rows):
        table.add_row(start_time=a, stop_time=b, stimulus_name=name, repeat=r)
    nwbfile.add_time_intervals(table)
    if recorded_flips:
        flips = np.concatenate([e.reshape(-1) for e in timing.values()])
        frame = np.concatenate([np.tile(np.arange(e.shape[1]), e.shape[0]) for e in timing.values()])
        order = np.argsort(flips, kind="stable")
        nwbfile.add_acquisition(TimeSeries(
            name="frame_flips", data=frame[order].astype(np.int64), unit="frame", timestamps=flips[order],
            description="every frame flip of every showing (data: frame index in its showing; index T marks the "
                        "end of a showing's last frame)"))
    _add_designs(src, nwbfile, designs, timing)

    # 4. Units.
    n_spikes, spike_source = _add_units(src, nwbfile, rec, extras, timing)
    report = NwbExportReport(out=Path(), n_units=rec.n_cells, n_spikes=n_spikes, spike_times_source=spike_source,
                             flip_source=flip_source, series=tuple(kinds))
    return nwbfile, report


def _add_units(src: str, nwbfile: NWBFile, rec: Recording, extras: _Extras,
               timing: dict[str, np.ndarray]) -> tuple[int, str]:
    ids = rec.cell_ids
    if extras.spike_times is not None:
        spikes = extras.spike_times
        source = "recorded"
    else:
        spikes = [[] for _ in ids]
        for seg in rec.segments:
            counts = rec.counts(seg.name)  # [R, T, N]
            edges = timing[seg.name]
            centres = (edges[:, :-1] + edges[:, 1:]) / 2
            for r in range(len(edges)):
                block = counts[r]  # whole numbers: the reader refuses fractional counts
                for n in range(len(ids)):
                    spikes[n].append(np.repeat(centres[r], block[:, n].astype(np.int64)))
        spikes = [np.sort(np.concatenate(s)) if s else np.zeros(0) for s in spikes]
        source = "bin centres"
    from hdmf.common import DynamicTableRegion, VectorData, VectorIndex
    from pynwb.misc import Units

    # The table is built from whole columns: add_unit would turn every spike time into a Python
    # float (about 60 bytes a spike instead of 8).
    n = len(ids)
    times = VectorData(name="spike_times", description="spike times (s) of each unit",
                       data=np.concatenate([np.asarray(x, dtype=np.float64) for x in spikes]) if n else np.zeros(0))
    columns = [times, VectorIndex(name="spike_times_index", data=np.cumsum([len(x) for x in spikes]), target=times),
               VectorData(name="spike_times_source", data=[source] * n,
                          description="'recorded': spike times as recorded; 'bin centres': one time per counted "
                                      "spike at the centre of its frame bin (the recording kept only counts)")]
    if rec.cell_types is not None:
        columns.append(VectorData(name="cell_type", description="cell type as the recording names it",
                                  data=list(rec.cell_types)))
    if rec.rf is not None:
        columns.append(VectorData(name="rf", description="receptive-field map [row, column] on the stimulus grid "
                                  "(sign free)", data=rec.rf))
    if extras.electrode is not None and (extras.electrode >= 0).any():
        device = nwbfile.create_device(name="array", description="recording array")
        group = nwbfile.create_electrode_group(name="array", description="electrodes of the units",
                                               location="retina", device=device)
        row_of = {}
        for e in np.unique(extras.electrode[extras.electrode >= 0]):
            row_of[int(e)] = len(row_of)
            nwbfile.add_electrode(id=int(e), location="retina", group=group)
        rows = [[row_of[int(e)]] if e >= 0 else [] for e in extras.electrode]
        region = DynamicTableRegion(name="electrodes", description="the electrode each unit was sorted on",
                                    data=np.array([r for row in rows for r in row], dtype=np.int64),
                                    table=nwbfile.electrodes)
        columns += [region, VectorIndex(name="electrodes_index", data=np.cumsum([len(r) for r in rows]),
                                        target=region)]
    # Spikes placed at bin centres are known to one frame; two in one bin share a time, which
    # the resolution declares (nwbinspector takes equal times as an error otherwise).
    resolution = 1.0 / rec.frame_rate if source == "bin centres" else float(rec.attrs.get("spike_time_resolution", -1.0))
    nwbfile.units = Units(name="units", id=[int(i) for i in ids], columns=columns, resolution=resolution,
                          description="cells of the recording; id = the recording's cell id")
    return int(sum(len(x) for x in spikes)), source


def _add_designs(src: str, nwbfile: NWBFile, designs: Sequence[DesignRecord],
                 timing: dict[str, np.ndarray]) -> None:
    if not designs:
        return
    from pynwb.epoch import TimeIntervals

    table = TimeIntervals(name="designs", description="stimuli designed by the twin: every showing of each")
    table.add_column("stimulus_name", "the series in stimulus/presentation that showed the design")
    table.add_column("objective", "what the design asked of the cell (e.g. increase, discriminative)")
    table.add_column("cell", "id of the target cell (a unit id)")
    table.add_column("twin", "the twin that designed it")
    table.add_column("role", "design, or the control it is (natural, parametric)")
    rows = []
    for d in designs:
        if d.segment not in timing:
            raise NwbError(src, "designs", f"a design names segment {d.segment!r}, which the recording lacks")
        rows += [(float(e[0]), float(e[-1]), d) for e in timing[d.segment]]
    for a, b, d in sorted(rows, key=lambda row: row[:2]):
        table.add_row(start_time=a, stop_time=b, stimulus_name=d.segment, objective=d.objective, cell=int(d.cell),
                      twin=d.twin, role=d.role)
    nwbfile.add_time_intervals(table)


def _frame_blocks(rec: Recording, seg: Segment, block: int = 256) -> Iterator[np.ndarray]:
    # DataChunkIterator takes one frame per step; reading them from disk in blocks keeps memory flat.
    for a in range(seg.start, seg.stop, block):
        yield from rec.frames(start=a, stop=min(a + block, seg.stop))


def _start_time(src: str, text: str | None) -> dt.datetime:
    if text is None:
        # The recording does not say when it was made; its file time is the best witness.
        return dt.datetime.fromtimestamp(Path(src).stat().st_mtime, tz=dt.UTC).replace(microsecond=0)
    try:
        start = dt.datetime.fromisoformat(text)
    except ValueError:
        raise NwbError(src, "metadata", f"session_start_time {text!r} is not ISO 8601") from None
    if start.tzinfo is None:
        raise NwbError(src, "metadata", f"session_start_time {text!r} has no time zone (e.g. +00:00)")
    return start


def _plain(value: object) -> object:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value

"""What `insilico inspect` reports: a recording's shape, segments, rates and reliability."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from stimuli.recording.reader import Recording
from stimuli.recording.reliability import split_half_reliability


@dataclass(frozen=True)
class SegmentSummary:
    name: str
    start: int
    stop: int
    repeats: int
    mean_rate_hz: float | None  # population mean over cells and shown repeats
    split_half_reliability: float | None  # mean over cells, Spearman-Brown corrected; None if < 2 repeats


@dataclass(frozen=True)
class RecordingSummary:
    path: str
    n_frames: int
    height: int
    width: int
    frame_rate: float
    pixel_size_um: float | None
    duration_s: float
    n_cells: int
    n_repeats: int
    has_rf: bool
    cell_types: dict[str, int]
    segments: tuple[SegmentSummary, ...]
    cell_mean_rate_hz: tuple[float, ...]  # per cell, over every shown bin
    cell_ids: tuple[int, ...] = ()  # in the order of /cells/ids, which the rates follow

    def to_json_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(rec: Recording) -> RecordingSummary:
    """Summarise a recording, reading its counts one segment at a time."""
    segs: list[SegmentSummary] = []
    total = np.zeros(rec.n_cells)
    bins = np.zeros(rec.n_cells)
    for seg in rec.segments:
        if not rec.has_responses:
            segs.append(SegmentSummary(seg.name, seg.start, seg.stop, 0, None, None))
            continue
        counts = rec.counts(seg.name)
        shown = ~np.isnan(counts).all(axis=(1, 2))
        shown_counts = counts[shown]
        total += shown_counts.sum(axis=(0, 1))
        bins += shown_counts.shape[0] * shown_counts.shape[1]
        reliability = None
        if shown.sum() >= 2:
            reliability = float(np.nanmean(split_half_reliability(shown_counts, spearman_brown=True)))
        segs.append(SegmentSummary(
            name=seg.name, start=seg.start, stop=seg.stop, repeats=int(shown.sum()),
            mean_rate_hz=float(shown_counts.mean() * rec.frame_rate),
            split_half_reliability=reliability,
        ))
    with np.errstate(invalid="ignore", divide="ignore"):
        cell_rates = total / bins * rec.frame_rate if rec.has_responses else np.zeros(0)
    types: dict[str, int] = {}
    for t in rec.cell_types or []:
        types[t] = types.get(t, 0) + 1
    return RecordingSummary(
        path=rec.path, n_frames=rec.n_frames, height=rec.layout.height, width=rec.layout.width,
        frame_rate=rec.frame_rate, pixel_size_um=rec.pixel_size_um,
        duration_s=rec.n_frames / rec.frame_rate, n_cells=rec.n_cells, n_repeats=rec.n_repeats,
        has_rf=rec.layout.has_rf, cell_types=types, segments=tuple(segs),
        cell_mean_rate_hz=tuple(float(x) for x in cell_rates),
        cell_ids=tuple(int(i) for i in rec.cell_ids) if rec.n_cells else (),
    )

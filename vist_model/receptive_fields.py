"""Receptive-field maps for the twin's AdaLN conditioning, and where they came from.

The recording's `/cells/rf` is used when present; otherwise spike-triggered averages from a
white-noise segment (`stimuli.recording.sta.ReceptiveFieldAccumulator`: linear, or contrast energy
for cells whose linear STA is flat); otherwise a flat map, and the caller is told which it was.

Without either, `cell_locations` still finds where each cell is from the training movie: the
movie's STA is its RF blurred by the movie's spatial correlations, wrong in shape (so it is not
used as an RF) but peaked at the cell, which is where its readout should start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stimuli.errors import InputError
from stimuli.recording import Recording, Segment
from stimuli.recording.sta import NOISE_SEGMENT_NAMES, ReceptiveFieldAccumulator, ReceptiveFieldMaps

BLOCK_FRAMES = 1024
"""Frames of the white-noise segment read at a time (memory does not grow with its length)."""


@dataclass(frozen=True)
class ReceptiveFields:
    maps: np.ndarray  # [N, H, W] float32, sign free
    source: str  # said to the user: "/cells/rf", "STA of segment 'noise'", or "flat ..."


def noise_segment_names(rec: Recording) -> list[str]:
    """The recording's white-noise segments (named as in `NOISE_SEGMENT_NAMES`), in file order."""
    return [s.name for s in rec.segments if s.name.lower() in NOISE_SEGMENT_NAMES]


def receptive_fields(rec: Recording, noise_segment: str | None = None) -> ReceptiveFields:
    """RF maps `[N, H, W]` of every cell, with the source they came from."""
    if rec.rf is not None:
        return ReceptiveFields(rec.rf.astype(np.float32), "/cells/rf")
    names = [s.name for s in rec.segments]
    candidates = [noise_segment] if noise_segment else noise_segment_names(rec)
    for name in candidates:
        if name not in names:
            raise InputError(f"no segment named {name!r} to estimate receptive fields from")
        rf = _accumulate(rec, [rec.segment(name)])
        return ReceptiveFields(rf.maps, rf.source(name))
    _, h, w = rec.shape
    flat = np.ones((rec.n_cells, h, w), dtype=np.float32)
    return ReceptiveFields(flat, FLAT_SOURCE)


FLAT_SOURCE = "flat maps (the file has no /cells/rf and no white-noise segment)"


def cell_locations(rec: Recording, rfs: ReceptiveFields, ranges: Sequence[Segment]) -> ReceptiveFields:
    """Maps `[N, H, W]` that peak where each cell is: `rfs` where they are real RFs, else a point at
    the peak of the STA (linear or contrast energy, as for white noise) of the frames in `ranges`
    (the training movie). Only the peak: the movie's STA is so wide that the centre of its
    half-maximum region lies between the cell and the middle of the screen."""
    if rfs.source != FLAT_SOURCE:
        return rfs
    maps = np.abs(_accumulate(rec, ranges).maps)
    n, h, w = maps.shape
    points = np.zeros((n, h * w), dtype=np.float32)
    points[np.arange(n), maps.reshape(n, -1).argmax(axis=1)] = 1.0
    return ReceptiveFields(points.reshape(n, h, w), "the peak of each cell's STA of the training movie")


def _accumulate(rec: Recording, ranges: Sequence[Segment]) -> ReceptiveFieldMaps:
    _, h, w = rec.shape
    acc = ReceptiveFieldAccumulator(rec.n_cells, h, w)
    for r in ranges:
        for a in range(r.start, r.stop, BLOCK_FRAMES):
            b = min(a + BLOCK_FRAMES, r.stop)
            acc.add(rec.frames(start=a, stop=b).astype(np.float32) / 255.0,
                    np.nanmean(rec.counts(start=a, stop=b), axis=0))
    return acc.result()


def rf_to_grid(maps: np.ndarray, grid: int = 16) -> torch.Tensor:
    """Downsample RF maps `[N, H, W]` to the feature grid `[N, grid, grid]`.

    Maps are taken by magnitude (RF sign is free: ON and OFF cells must not cancel when the
    population map is summed) and scaled to a peak of 1 per cell, then area-averaged.
    """
    m = torch.from_numpy(np.abs(np.asarray(maps, dtype=np.float32)))
    peak = m.flatten(1).amax(dim=1).clamp_min(1e-12)
    m = m / peak[:, None, None]
    return F.adaptive_avg_pool2d(m[:, None], grid)[:, 0]

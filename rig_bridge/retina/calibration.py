"""Setting each cell's gain so natural-like movies at RMS contrast 0.2 drive it well.

A fixed reference movie (natural-like spectrum, RMS 0.2, its own fixed seed) is run
through the uncalibrated population; each cell's gain is set so the standard deviation
of its nonlinearity input ``gain * generator`` equals ``TARGET_INPUT_STD``, and its offset
so the mean input over the movie is ``TARGET_INPUT_MEAN`` (-1). That puts the typical
operating point on the expansive part of the softplus, with strong stimuli several-fold
above it, which gives reliable responses on repeats. For linear cells the generator of a
zero-mean movie averages ~0, so the offset stays ~-1; cells that sum rectified pathways
(ON-OFF, subunit) have a positive mean generator, so their offset and grey-screen
baseline come out lower, as for real ON-OFF and Y-like cells.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rig_bridge.retina.cells import CellSpec
from rig_bridge.retina.circuit import Circuit
from rig_bridge.retina.movies import smooth_random_movie
from rig_bridge.retina.video import to_contrast
from stimuli.errors import InputError

TARGET_INPUT_STD = 2.0
TARGET_INPUT_MEAN = -1.0
REFERENCE_RMS = 0.2
REFERENCE_SECONDS = 15.0
WARM_UP_SECONDS = 1.0
"""Skipped so contrast adaptation has settled from the grey screen before measuring."""
REFERENCE_SEED = 20_240_601


def reference_movie(height: int, width: int, frame_rate: float) -> np.ndarray:
    """The calibration movie ``[T, H, W]`` (deterministic, independent of the population)."""
    n_frames = int(round(REFERENCE_SECONDS * frame_rate))
    return smooth_random_movie(
        n_frames, height, width, np.random.default_rng(REFERENCE_SEED),
        rms_contrast=REFERENCE_RMS, frame_rate=frame_rate,
    )


def calibrate_gains(
    cells: tuple[CellSpec, ...], height: int, width: int, frame_rate: float
) -> tuple[CellSpec, ...]:
    """``cells`` with ``gain`` and ``offset`` set from the reference movie (std 2, mean -1).

    Raises:
        ValueError: a cell does not respond at all to the reference movie.
    """
    circuit = Circuit.compile(cells, frame_rate)
    movie = reference_movie(height, width, frame_rate)
    generator = circuit.advance(to_contrast(movie), circuit.initial_state())
    warm_up = min(int(round(WARM_UP_SECONDS * frame_rate)), len(movie) // 2)
    settled = generator[warm_up:]
    spread = settled.std(axis=0)
    if not (spread > 0).all():
        silent = [c.cell_id for c, s in zip(cells, spread, strict=True) if not s > 0]
        raise InputError(f"cells {silent} do not respond to the calibration movie")
    gains = TARGET_INPUT_STD / spread
    offsets = TARGET_INPUT_MEAN - gains * settled.mean(axis=0)
    return tuple(
        dataclasses.replace(cell, gain=float(g), offset=float(o))
        for cell, g, o in zip(cells, gains, offsets, strict=True)
    )

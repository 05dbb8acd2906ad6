"""Receptive fields from white noise: linear STA, or contrast energy where the linear STA is flat."""

from __future__ import annotations

import numpy as np
import pytest

from rig_bridge.retina.simulated import SimulatedRetina
from stimuli.recording.rf_geometry import rf_centre_and_size
from stimuli.recording.sta import (
    ReceptiveFieldAccumulator,
    map_significance,
    receptive_field_maps,
    spike_triggered_average,
)

SIZE, CHECK = 32, 4


def _checkerboard(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """Binary checks `[T, SIZE, SIZE]` in {0.3, 0.7}: squared contrast is the same in every pixel."""
    checks = rng.integers(0, 2, (n_frames, SIZE // CHECK, SIZE // CHECK)).astype(np.float64)
    return 0.3 + 0.4 * np.repeat(np.repeat(checks, CHECK, axis=1), CHECK, axis=2)


def _gaussian(centre: tuple[float, float], sigma: float) -> np.ndarray:
    y, x = np.indices((SIZE, SIZE))
    g = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * sigma**2))
    return g / g.sum()


def _cells(frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Spike counts `[T, 2]` of a linear ON cell and an ON-OFF cell, one frame after the stimulus."""
    centres = [(8.0, 22.0), (21.0, 9.0)]
    drive = [np.einsum("thw,hw->t", frames - 0.5, _gaussian(c, 3.0)) for c in centres]
    rates = np.stack([np.maximum(drive[0], 0.0) * 20.0, np.abs(drive[1]) * 20.0], axis=1)
    counts = np.zeros_like(rates)
    counts[1:] = rng.poisson(rates[:-1])
    return counts, centres


def test_an_on_off_cell_is_found_by_its_contrast_energy_where_its_sta_is_flat() -> None:
    rng = np.random.default_rng(0)
    frames = _checkerboard(rng, 4000)
    counts, centres = _cells(frames, rng)
    rf = receptive_field_maps(frames, counts, lags=range(0, 4))
    assert rf.kinds[0] == "linear" and rf.kinds[1].startswith("energy")
    for i, truth in enumerate(centres):
        (y, x), _ = rf_centre_and_size(rf.maps[i])
        assert np.hypot(y - truth[0], x - truth[1]) < 1.5, (i, (y, x), truth)
    # The linear STA of the ON-OFF cell is its noise: far less significant than its energy map.
    sta = spike_triggered_average(frames, counts, range(0, 4))
    assert map_significance(sta[1]) < 0.5 * rf.significance[1]
    assert map_significance(sta[0]) == pytest.approx(rf.significance[0])
    assert "contrast energy for 1 of 2 cells" in rf.source("noise")


def test_receptive_fields_accumulated_block_by_block_equal_the_whole_segment() -> None:
    rng = np.random.default_rng(1)
    frames = _checkerboard(rng, 900)
    counts, _ = _cells(frames, rng)
    whole = receptive_field_maps(frames, counts, lags=range(0, 4))
    acc = ReceptiveFieldAccumulator(2, SIZE, SIZE, range(0, 4))
    for a in range(0, 900, 250):
        acc.add(frames[a:a + 250], counts[a:a + 250])
    blocks = acc.result()
    assert blocks.kinds == whole.kinds
    np.testing.assert_allclose(blocks.maps, whole.maps, rtol=1e-4, atol=1e-6)


def test_simulated_on_off_cells_are_located_by_the_recorded_rf() -> None:
    """The simulator's ON-OFF cells: their /cells/rf (as `insilico simulate` writes it) sits on them."""
    retina = SimulatedRetina.create(n_cells=6, height=SIZE, width=SIZE, seed=3, type_weights={"on_off": 1.0})
    rng = np.random.default_rng(2)
    frames = _checkerboard(rng, 9000)  # 5 minutes: these cells fire ~2 spikes/s to noise
    counts = retina.spikes(frames, rng)
    rf = receptive_field_maps(frames, counts)
    errors = [np.hypot(*np.subtract(rf_centre_and_size(rf.maps[i])[0], cell.centre))
              for i, cell in enumerate(retina.cells)]
    assert np.median(errors) < 2.0 and max(errors) < 4.0, errors

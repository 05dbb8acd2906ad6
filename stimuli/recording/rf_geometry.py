"""Where a receptive field map is: its centre mechanism's position and size.

Shared by the twin (each cell's readout starts at its RF centre) and the design (the envelope
around the RF). A plain centre of mass is not enough: an STA's magnitude has a noise floor over
the whole screen, and its mass pulls the centre towards the middle (on the default simulation,
by 1-2 grid positions for cells near the edge); the centre is taken inside the half-maximum
region around the peak instead.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, label

from stimuli.errors import InputError

__all__ = ["rf_centre_and_size", "rf_centre_pixel"]

MIN_SIGMA_PX = 1.0
SMOOTH_PX = 1.0


def rf_centre_and_size(rf: np.ndarray) -> tuple[tuple[float, float], float]:
    """`((row, col), sigma)` of the receptive field's centre mechanism, in the map's units.

    The map is smoothed lightly (an STA is noisy pixel by pixel). The centre is the peak of
    |map|; sigma comes from the area of the connected region around the peak above half its
    height (a Gaussian's half-maximum disc has radius `sigma * sqrt(2 ln 2)`), less the
    smoothing, so isolated noise elsewhere on the screen does not count.
    """
    rf = np.asarray(rf, dtype=np.float64)
    if rf.ndim != 2 or not np.isfinite(rf).all():
        raise InputError(f"a receptive field must be a finite [H, W] map, got shape {rf.shape}")
    smooth = np.abs(gaussian_filter(rf, SMOOTH_PX))
    cy, cx = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    if smooth[cy, cx] <= 0:
        h, w = rf.shape
        return ((h - 1) / 2.0, (w - 1) / 2.0), max(h, w) / 4.0
    regions, _ = label(smooth >= 0.5 * smooth[cy, cx])
    disc = regions == regions[cy, cx]
    weight = np.where(disc, smooth, 0.0)
    rows, cols = np.indices(rf.shape)
    y, x = (weight * rows).sum() / weight.sum(), (weight * cols).sum() / weight.sum()
    smoothed_sigma = np.sqrt(disc.sum() / np.pi / (2.0 * np.log(2.0)))
    sigma = np.sqrt(max(smoothed_sigma**2 - SMOOTH_PX**2, 0.0))
    return (float(y), float(x)), max(float(sigma), MIN_SIGMA_PX)


def rf_centre_pixel(rf: np.ndarray) -> tuple[int, int]:
    """`(row, col)` of the pixel nearest the centre `rf_centre_and_size` finds in a map `[H, W]`.

    Where a figure cuts through the receptive field: the same centre as the design's envelope.
    """
    (y, x), _ = rf_centre_and_size(rf)
    h, w = np.shape(rf)
    return min(max(round(y), 0), h - 1), min(max(round(x), 0), w - 1)

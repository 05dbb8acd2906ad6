"""A spatial envelope around a cell's recorded receptive field, for gradient designs.

A twin's pixel gradient is not confined to the cell's receptive field: a ViT backbone mixes
every patch with every other, so part of each step lands where the real cell cannot see.
Spread over the screen, the contrast budget then leaves the receptive field with a fraction
of the contrast it could have. Walker et al. (2019) and Franke et al. (2022) confine their
most exciting inputs to a Gaussian window around the receptive field; so does this: the
design's start and every gradient step are weighted by `rf_envelope(rf, width)`, a Gaussian
centred on the strongest part of the recorded map (`/cells/rf`, the STA on simulated data)
with `width` times the centre's size as its sigma, cut to 0 beyond `CUTOFF_SIGMAS` of its
own sigmas. The cut matters: when the contrast budget cannot be spent inside the window,
the post-processor raises the gain until it can, and a Gaussian's far tail, however small,
would be scaled up to full contrast.

How wide depends on how well the twin knows the cell. With the twins of 2026-11-27, whose
predictions of strong stimuli were poor, a width of 1 did best. A linear cell's true optimum
at a whole-clip budget, though, is its filter's sign at full contrast wherever the filter is
not negligible: a saturated centre and a saturated surround annulus many centre sigmas wide.
An envelope of 1 or 2 sigmas cuts the surround off; with a twin trained on the movie and white
noise (today's defaults), 3 (the default) did as well as none on the tuning member and keeps
the design off the far screen where a poorer twin's gradient wanders (docs/benchmarks.md,
"The envelope leaves the surround").

A prior is only as good as the map. An ON-OFF cell's STA can cancel to noise (its ON and OFF
halves average out), and then its "strongest part" is a noise speckle anywhere on the
screen: the envelope confined the design to a place the cell never sees, and the cell stayed
silent (true response 0 in the closed loop and in `benchmarks/mei.py`). `rf_peak_snr`
measures the map's peak against its own noise; below `MIN_RF_PEAK_SNR` the design runs
without an envelope.
"""

from __future__ import annotations

import numpy as np

from stimuli.errors import InputError
from stimuli.recording.rf_geometry import rf_centre_and_size

CUTOFF_SIGMAS = 2.0

MIN_RF_PEAK_SNR = 4.0
"""The peak |map| in robust noise SDs below which a map does not locate its cell: the value
that separated maps whose centre missed the true one from maps that found it, on simulated
recordings (docs/benchmarks.md, "The RF envelope's noise test")."""


def rf_peak_snr(rf: np.ndarray) -> float:
    """Peak |map - median| over the map's robust noise SD (1.4826 x the median absolute deviation)."""
    m = np.asarray(rf, dtype=np.float64)
    centred = m - np.median(m)
    noise = 1.4826 * float(np.median(np.abs(centred)))
    # The peak above the map's median: a flat map (a twin trained without white noise and no
    # recorded RF gets one) has no peak, not an infinitely clear one.
    peak = float(np.abs(centred).max())
    return peak / noise if noise > 0 else (float("inf") if peak > 0 else 0.0)


def rf_envelope(rf: np.ndarray, width: float) -> np.ndarray:
    """`[H, W]` Gaussian in [0, 1], peak 1 at the RF centre, sigma `width` x the centre's sigma,
    0 beyond `CUTOFF_SIGMAS` of its sigma."""
    if not width > 0:
        raise InputError(f"the envelope width must be > 0 RF sigmas, got {width}")
    (cy, cx), sigma = rf_centre_and_size(rf)
    rows, cols = np.indices(np.shape(rf))
    s = width * sigma
    r2 = ((rows - cy) ** 2 + (cols - cx) ** 2) / (s * s)
    return np.where(r2 <= CUTOFF_SIGMAS**2, np.exp(-0.5 * r2), 0.0).astype(np.float32)

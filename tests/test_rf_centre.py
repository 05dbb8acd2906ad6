"""One rule for a receptive field's centre: the design's envelope and its contact sheet agree."""

from __future__ import annotations

import numpy as np

from insilico.design.envelope import rf_envelope
from stimuli.recording.rf_geometry import rf_centre_pixel


def test_the_envelope_and_the_contact_sheet_share_the_centre() -> None:
    rows, cols = np.indices((32, 32))
    rf = np.exp(-((rows - 20.4) ** 2 + (cols - 11.6) ** 2) / (2 * 3.0**2))  # the cell's RF
    rf[5, 25] = 1.3  # one noisy STA pixel, stronger than the RF's peak: not the centre
    envelope = rf_envelope(rf, width=1.0)
    peak = tuple(int(i) for i in np.unravel_index(int(np.argmax(envelope)), envelope.shape))
    assert rf_centre_pixel(rf) == peak == (20, 12)

"""Full-field flashes: the quickest test of a cell's ON/OFF polarity."""

from __future__ import annotations

import numpy as np

from stimuli._checks import require_contrast, require_frame_rate, require_frame_size, require_int
from stimuli._geometry import modulation_to_frames
from stimuli.stimulus import Stimulus


def full_field_flash(
    n_frames: int,
    height: int,
    width: int,
    on_frames: int = 30,
    off_frames: int = 30,
    contrast: float = 1.0,
    frame_rate: float = 30.0,
) -> Stimulus:
    """Square-wave full-field flicker: bright for ``on_frames``, dark for ``off_frames``, repeated.

    The clip starts with the bright (ON) phase; the last cycle is cut at ``n_frames``.
    Bright is ``0.5 * (1 + contrast)`` and dark ``0.5 * (1 - contrast)``, so the clip
    averages to mean grey when ``on_frames == off_frames``.

    Args:
        n_frames: number of frames ``T``.
        height: frame height ``H`` in pixels.
        width: frame width ``W`` in pixels.
        on_frames: frames per bright phase (>= 1).
        off_frames: frames per dark phase (>= 0; 0 gives a steady bright field).
        contrast: in [0, 1]; 1 flashes between black and white.
        frame_rate: Hz.

    Returns:
        ``Stimulus`` named ``"full_field_flash"`` with frames uint8 ``[T, H, W]``.
    """
    n_frames, height, width = require_frame_size(n_frames, height, width)
    on_frames = require_int("on_frames", on_frames, minimum=1)
    off_frames = require_int("off_frames", off_frames, minimum=0)
    contrast = require_contrast(contrast)
    frame_rate = require_frame_rate(frame_rate)

    is_on = (np.arange(n_frames) % (on_frames + off_frames)) < on_frames
    trace = np.where(is_on, contrast, -contrast)  # [T]
    modulation = np.broadcast_to(trace[:, None, None], (n_frames, height, width))
    return Stimulus(
        frames=modulation_to_frames(modulation),
        frame_rate=frame_rate,
        name="full_field_flash",
        params={
            "n_frames": n_frames,
            "height": height,
            "width": width,
            "on_frames": on_frames,
            "off_frames": off_frames,
            "contrast": contrast,
            "frame_rate": frame_rate,
        },
    )

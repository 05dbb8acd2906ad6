"""A flashed disc: probes receptive-field centre and surround."""

from __future__ import annotations

import numpy as np

from stimuli._checks import (
    require_contrast,
    require_float,
    require_frame_rate,
    require_frame_size,
    require_int,
    require_point,
    require_polarity,
)
from stimuli._geometry import default_center, modulation_to_frames, pixel_offsets, soft_inside
from stimuli.errors import InputError
from stimuli.stimulus import Stimulus


def spot(
    n_frames: int,
    height: int,
    width: int,
    center_yx: tuple[float, float] | None = None,
    radius_px: float = 8.0,
    polarity: int = 1,
    contrast: float = 1.0,
    onset_frame: int = 0,
    duration_frames: int | None = None,
    frame_rate: float = 30.0,
) -> Stimulus:
    """A disc flashed on a mean-grey background.

    Args:
        n_frames: number of frames ``T``.
        height: frame height ``H`` in pixels.
        width: frame width ``W`` in pixels.
        center_yx: ``(row, col)`` of the disc centre in pixels (may be fractional, or
            off screen); None for the frame centre.
        radius_px: disc radius in pixels (> 0); the edge is anti-aliased over 1 px.
        polarity: +1 bright spot, -1 dark spot.
        contrast: in [0, 1]; the spot is ``0.5 * (1 + polarity * contrast)``.
        onset_frame: first frame showing the spot (0 <= onset_frame < n_frames).
        duration_frames: frames the spot stays on (>= 1), cut at the clip end; None
            keeps it on until the end.
        frame_rate: Hz.

    Returns:
        ``Stimulus`` named ``"spot"`` with frames uint8 ``[T, H, W]``.
    """
    n_frames, height, width = require_frame_size(n_frames, height, width)
    center = (
        default_center(height, width)
        if center_yx is None
        else require_point("center_yx", center_yx)
    )
    radius_px = require_float("radius_px", radius_px, minimum=0.0, strict_minimum=True)
    polarity = require_polarity("polarity", polarity)
    contrast = require_contrast(contrast)
    onset_frame = require_int("onset_frame", onset_frame, minimum=0)
    if onset_frame >= n_frames:
        raise InputError(f"onset_frame must be < n_frames ({n_frames}), got {onset_frame}")
    if duration_frames is None:
        duration_frames = n_frames - onset_frame
    duration_frames = require_int("duration_frames", duration_frames, minimum=1)
    frame_rate = require_frame_rate(frame_rate)

    dy, dx = pixel_offsets(height, width, center)
    disc = soft_inside(np.hypot(dy, dx) - radius_px)  # [H, W]
    frame_index = np.arange(n_frames)
    is_on = (frame_index >= onset_frame) & (frame_index < onset_frame + duration_frames)  # [T]
    modulation = (polarity * contrast) * is_on[:, None, None] * disc[None]
    return Stimulus(
        frames=modulation_to_frames(modulation),
        frame_rate=frame_rate,
        name="spot",
        params={
            "n_frames": n_frames,
            "height": height,
            "width": width,
            "center_yx": center,
            "radius_px": radius_px,
            "polarity": polarity,
            "contrast": contrast,
            "onset_frame": onset_frame,
            "duration_frames": duration_frames,
            "frame_rate": frame_rate,
        },
    )

"""A bar sweeping across the screen: the classic probe of direction selectivity."""

from __future__ import annotations

import numpy as np

from stimuli._checks import (
    require_contrast,
    require_float,
    require_frame_rate,
    require_frame_size,
    require_polarity,
)
from stimuli._geometry import (
    direction_coordinates,
    half_extent_along,
    modulation_to_frames,
    soft_inside,
)
from stimuli.stimulus import Stimulus


def moving_bar(
    n_frames: int,
    height: int,
    width: int,
    orientation_deg: float = 0.0,
    bar_width_px: float = 8.0,
    bar_length_px: float | None = None,
    speed_px_per_frame: float = 1.0,
    polarity: int = 1,
    contrast: float = 1.0,
    frame_rate: float = 30.0,
) -> Stimulus:
    """A rectangular bar moving at constant speed along a line through the frame centre.

    The bar starts just outside the frame (its leading edge at the frame border) and
    its centre is at ``start_px + speed_px_per_frame * frame`` along the motion
    direction, measured from the frame centre; ``start_px`` is recorded in ``params``.
    Edges are anti-aliased over 1 px, so the clip varies continuously with every
    float parameter.

    Args:
        n_frames: number of frames ``T``.
        height: frame height ``H`` in pixels.
        width: frame width ``W`` in pixels.
        orientation_deg: direction of motion, degrees counter-clockwise from rightward
            (0 right, 90 up); the bar's long axis is perpendicular to it.
        bar_width_px: extent along the motion direction, in pixels (> 0).
        bar_length_px: extent across the motion direction, in pixels (> 0); None for a
            bar spanning the whole frame.
        speed_px_per_frame: pixels per frame (> 0).
        polarity: +1 bright bar, -1 dark bar.
        contrast: in [0, 1]; the bar is ``0.5 * (1 + polarity * contrast)``.
        frame_rate: Hz.

    Returns:
        ``Stimulus`` named ``"moving_bar"`` with frames uint8 ``[T, H, W]``.
    """
    n_frames, height, width = require_frame_size(n_frames, height, width)
    orientation_deg = require_float("orientation_deg", orientation_deg)
    bar_width_px = require_float("bar_width_px", bar_width_px, minimum=0.0, strict_minimum=True)
    if bar_length_px is not None:
        bar_length_px = require_float(
            "bar_length_px", bar_length_px, minimum=0.0, strict_minimum=True
        )
    speed_px_per_frame = require_float(
        "speed_px_per_frame", speed_px_per_frame, minimum=0.0, strict_minimum=True
    )
    polarity = require_polarity("polarity", polarity)
    contrast = require_contrast(contrast)
    frame_rate = require_frame_rate(frame_rate)

    u, v = direction_coordinates(height, width, orientation_deg)  # [H, W] each
    start_px = -(half_extent_along(height, width, orientation_deg) + bar_width_px / 2.0)
    positions = start_px + speed_px_per_frame * np.arange(n_frames, dtype=np.float64)  # [T]
    along = soft_inside(np.abs(u[None] - positions[:, None, None]) - bar_width_px / 2.0)
    if bar_length_px is None:
        mask = along  # [T, H, W]
    else:
        mask = along * soft_inside(np.abs(v) - bar_length_px / 2.0)[None]
    return Stimulus(
        frames=modulation_to_frames(polarity * contrast * mask),
        frame_rate=frame_rate,
        name="moving_bar",
        params={
            "n_frames": n_frames,
            "height": height,
            "width": width,
            "orientation_deg": orientation_deg,
            "bar_width_px": bar_width_px,
            "bar_length_px": bar_length_px,
            "speed_px_per_frame": speed_px_per_frame,
            "polarity": polarity,
            "contrast": contrast,
            "frame_rate": frame_rate,
            "start_px": start_px,
        },
    )

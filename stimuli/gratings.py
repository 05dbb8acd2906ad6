"""Drifting sinusoidal and square-wave gratings, optionally in a circular aperture."""

from __future__ import annotations

import math

import numpy as np

from stimuli._checks import (
    require_contrast,
    require_float,
    require_frame_rate,
    require_frame_size,
    require_point,
)
from stimuli._geometry import (
    direction_coordinates,
    modulation_to_frames,
    pixel_offsets,
    soft_inside,
)
from stimuli.errors import InputError
from stimuli.stimulus import Stimulus

MIN_SPATIAL_PERIOD_PX = 2.0
"""Shorter periods alias on the pixel grid (Nyquist)."""


def drifting_grating(
    n_frames: int,
    height: int,
    width: int,
    orientation_deg: float = 0.0,
    spatial_period_px: float = 16.0,
    temporal_freq_hz: float = 2.0,
    contrast: float = 1.0,
    frame_rate: float = 30.0,
    phase: float = 0.0,
    size_px: float | None = None,
    center_yx: tuple[float, float] | None = None,
    square: bool = False,
) -> Stimulus:
    """A grating drifting perpendicular to its stripes, on a mean-grey background.

    Intensity ``0.5 * (1 + contrast * w(2 pi u / P - 2 pi f t + phase))`` where ``u`` is
    the pixel position (px) along ``orientation_deg`` measured from ``center_yx``, ``t`` the
    frame time ``frame / frame_rate`` (s), ``w`` sine (or an anti-aliased square wave).

    Args:
        n_frames: number of frames ``T``.
        height: frame height ``H`` in pixels.
        width: frame width ``W`` in pixels.
        orientation_deg: direction of drift (the grating's wave vector), degrees
            counter-clockwise from rightward (0 right, 90 up); the stripes run
            perpendicular to it. Any real value; it is periodic with period 360.
        spatial_period_px: wavelength in pixels (>= 2).
        temporal_freq_hz: drift frequency in Hz (>= 0; 0 is a static grating). To drift
            the other way add 180 to ``orientation_deg``.
        contrast: Michelson contrast in [0, 1].
        frame_rate: Hz.
        phase: spatial phase in radians at ``u = 0``, ``t = 0``.
        size_px: diameter of a circular aperture in pixels (> 0), outside which the
            screen is mean grey; None for a full-field grating.
        center_yx: ``(y, x)`` pixel coordinates of the aperture centre and of the phase
            origin; None for the frame centre.
        square: square wave (edges anti-aliased over 1 px) instead of a sinusoid.

    Returns:
        ``Stimulus`` named ``"drifting_grating"`` with frames uint8 ``[T, H, W]``.
    """
    n_frames, height, width = require_frame_size(n_frames, height, width)
    orientation_deg = require_float("orientation_deg", orientation_deg)
    spatial_period_px = require_float(
        "spatial_period_px", spatial_period_px, minimum=MIN_SPATIAL_PERIOD_PX
    )
    temporal_freq_hz = require_float("temporal_freq_hz", temporal_freq_hz, minimum=0.0)
    contrast = require_contrast(contrast)
    frame_rate = require_frame_rate(frame_rate)
    phase = require_float("phase", phase)
    if size_px is not None:
        size_px = require_float("size_px", size_px, minimum=0.0, strict_minimum=True)
    center_yx = None if center_yx is None else require_point("center_yx", center_yx)
    if not isinstance(square, bool | np.bool_):
        raise InputError(f"square must be a bool, got {square!r}")

    u, _ = direction_coordinates(height, width, orientation_deg, center_yx)  # [H, W]
    times = np.arange(n_frames, dtype=np.float64) / frame_rate  # [T]
    angle = (
        2.0 * math.pi * u[None] / spatial_period_px
        - 2.0 * math.pi * temporal_freq_hz * times[:, None, None]
        + phase
    )  # [T, H, W]
    wave = np.sin(angle)
    if square:
        # Near a zero crossing sin(angle) * P / (2 pi) is the signed distance (px) to the
        # edge, so doubling and clipping it gives a 1-px anti-aliased square wave.
        wave = np.clip(2.0 * wave * spatial_period_px / (2.0 * math.pi), -1.0, 1.0)
    modulation = contrast * wave
    if size_px is not None:
        dy, dx = pixel_offsets(height, width, center_yx)
        aperture = soft_inside(np.hypot(dy, dx) - size_px / 2.0)  # [H, W]
        modulation = modulation * aperture[None]

    return Stimulus(
        frames=modulation_to_frames(modulation),
        frame_rate=frame_rate,
        name="drifting_grating",
        params={
            "n_frames": n_frames,
            "height": height,
            "width": width,
            "orientation_deg": orientation_deg,
            "spatial_period_px": spatial_period_px,
            "temporal_freq_hz": temporal_freq_hz,
            "contrast": contrast,
            "frame_rate": frame_rate,
            "phase": phase,
            "size_px": size_px,
            "center_yx": center_yx,
            "square": bool(square),
        },
    )

"""Checking luminance videos and turning them into contrast."""

from __future__ import annotations

import numpy as np

from stimuli.errors import InputError

LUMINANCE_TOLERANCE = 1e-6
"""How far outside [0, 1] a float luminance may stray (rounding) before it is rejected."""


def check_video(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Validate a luminance video and return it as float64 ``[T, H, W]`` (no copy if already).

    Raises:
        ValueError: not 3-D, wrong screen size, integer dtype (convert uint8 with /255),
            non-finite values, or values outside [0, 1].
    """
    array = np.asarray(video)
    if array.ndim != 3:
        raise InputError(f"video must be [T, H, W], got shape {array.shape}")
    if array.shape[1:] != (height, width):
        raise InputError(
            f"video frames are {array.shape[1]} x {array.shape[2]} but the retina's screen is "
            f"{height} x {width}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            f"video must be float luminance in [0, 1], got dtype {array.dtype} "
            "(divide uint8 frames by 255)"
        )
    array = array.astype(np.float64, copy=False)
    if array.size:
        low, high = float(array.min()), float(array.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise InputError("video contains NaN or inf")
        if low < -LUMINANCE_TOLERANCE or high > 1.0 + LUMINANCE_TOLERANCE:
            raise InputError(f"video luminance must lie in [0, 1], got [{low:.4g}, {high:.4g}]")
    return array


def to_contrast(frames: np.ndarray) -> np.ndarray:
    """Luminance ``[t, H, W]`` in [0, 1] around grey 0.5 -> contrast ``[t, H*W]`` in [-1, 1]."""
    t = frames.shape[0]
    return (frames.reshape(t, -1) - 0.5) * 2.0

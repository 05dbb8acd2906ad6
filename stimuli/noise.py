"""White-noise checkerboard, the standard stimulus for mapping receptive fields."""

from __future__ import annotations

import math

import numpy as np

from stimuli._checks import (
    require_contrast,
    require_frame_rate,
    require_frame_size,
    require_int,
)
from stimuli._geometry import modulation_to_frames
from stimuli.errors import InputError
from stimuli.stimulus import Stimulus

GAUSSIAN_SIGMAS_TO_FULL_RANGE = 3.0
"""In Gaussian mode at contrast 1, +-3 standard deviations span black..white."""


def checkerboard_noise(
    n_frames: int,
    height: int,
    width: int,
    check_size: int = 4,
    frame_rate: float = 30.0,
    contrast: float = 1.0,
    seed: int = 0,
    binary: bool = True,
) -> Stimulus:
    """Spatio-temporal white-noise checkerboard on a mean-grey background.

    Every frame draws a new, independent check pattern (refresh = frame rate).

    Args:
        n_frames: number of frames ``T``.
        height: frame height ``H`` in pixels.
        width: frame width ``W`` in pixels.
        check_size: side of a square check, in pixels (>= 1). Checks are aligned to the
            top-left corner; the last row/column is cut at the frame border.
        frame_rate: Hz.
        contrast: in [0, 1]. Binary mode: checks are ``0.5 * (1 +- contrast)``
            (contrast 1 = black/white). Gaussian mode: intensity
            ``0.5 * (1 + contrast * z / 3)`` with ``z ~ N(0, 1)``, clipped to [0, 1].
        seed: seed of the numpy generator; the same seed gives the same clip.
        binary: True for black/white checks, False for Gaussian checks.

    Returns:
        ``Stimulus`` named ``"checkerboard_noise"`` with frames uint8 ``[T, H, W]``.
    """
    n_frames, height, width = require_frame_size(n_frames, height, width)
    check_size = require_int("check_size", check_size, minimum=1)
    frame_rate = require_frame_rate(frame_rate)
    contrast = require_contrast(contrast)
    seed = require_int("seed", seed, minimum=0)
    if not isinstance(binary, bool | np.bool_):
        raise InputError(f"binary must be a bool, got {binary!r}")

    rng = np.random.default_rng(seed)
    grid = (n_frames, math.ceil(height / check_size), math.ceil(width / check_size))
    if binary:
        checks = rng.integers(0, 2, size=grid).astype(np.float64) * 2.0 - 1.0
    else:
        checks = rng.standard_normal(size=grid) / GAUSSIAN_SIGMAS_TO_FULL_RANGE
    modulation = np.clip(contrast * checks, -1.0, 1.0)
    modulation = np.repeat(np.repeat(modulation, check_size, axis=1), check_size, axis=2)
    modulation = modulation[:, :height, :width]
    return Stimulus(
        frames=modulation_to_frames(modulation),
        frame_rate=frame_rate,
        name="checkerboard_noise",
        params={
            "n_frames": n_frames,
            "height": height,
            "width": width,
            "check_size": check_size,
            "frame_rate": frame_rate,
            "contrast": contrast,
            "seed": seed,
            "binary": bool(binary),
        },
    )

"""Luminance correction: designed grey levels -> the output levels the display must receive.

A designed grey level `g` (0..255) means linear luminance `g / 255` of the display's maximum
(the twin and the stimulus families think in linear luminance). A display does not respond
linearly: output level `v` gives luminance `L(v)`. The correction sends, for each `g`, the
level `v = lut[g]` whose luminance is closest to `g / 255` (after removing the black level).

Two ways to describe the display (see `RigProfile`):

- `gamma`: `L(v) = (v / 255) ** gamma`, so `lut[g] = round(255 * (g / 255) ** (1 / gamma))`;
  `gamma = 1.0` is the identity (a linear display or one already linearised by the OS).
- `lut`: 256 output levels, `lut[g]` for each designed grey `g` ("input grey -> output
  level"). Build it from a photometer measurement with `lut_from_measurement`.
"""

from __future__ import annotations

import numpy as np

from stimuli.errors import InputError
from stimuli.presentation.rig_profile import RigProfile


def gamma_lut(gamma: float) -> np.ndarray:
    """`[256]` uint8: output level for each designed grey level on a power-law display."""
    if not np.isfinite(gamma) or gamma <= 0:
        raise InputError(f"gamma must be > 0, got {gamma}")
    g = np.arange(256, dtype=np.float64) / 255.0
    return np.round(255.0 * g ** (1.0 / gamma)).astype(np.uint8)


def lut_from_measurement(luminance: np.ndarray) -> np.ndarray:
    """Invert a photometer measurement into a correction table.

    `luminance`: `[256]` measured luminance (any unit, e.g. cd/m^2) at each output level
    0..255, non-decreasing. Returns `[256]` uint8 `lut` with `lut[g]` the output level whose
    luminance, black level removed, is nearest to `g / 255` of the range.
    """
    lum = np.asarray(luminance, dtype=np.float64)
    if lum.shape != (256,):
        raise InputError(f"luminance must be [256] (one value per output level), got {list(lum.shape)}")
    if not np.isfinite(lum).all():
        raise InputError("luminance must be finite")
    if (np.diff(lum) < 0).any():
        raise InputError("luminance must be non-decreasing with output level (re-measure or smooth it)")
    span = lum[-1] - lum[0]
    if span <= 0:
        raise InputError("luminance does not rise from level 0 to level 255")
    relative = (lum - lum[0]) / span  # [256] in 0..1
    targets = np.arange(256, dtype=np.float64) / 255.0
    # Nearest measured level for each target: compare the two levels around the crossing.
    hi = np.clip(np.searchsorted(relative, targets, side="left"), 0, 255)
    lo = np.clip(hi - 1, 0, 255)
    pick_lo = np.abs(relative[lo] - targets) <= np.abs(relative[hi] - targets)
    return np.where(pick_lo, lo, hi).astype(np.uint8)


def profile_lut(profile: RigProfile) -> np.ndarray:
    """`[256]` uint8 correction table of a rig profile (its `lut`, else from its `gamma`)."""
    if profile.lut is not None:
        return np.asarray(profile.lut, dtype=np.uint8)
    return gamma_lut(profile.gamma)


def apply_lut(frames: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Designed grey levels `[...]` uint8 -> output levels `[...]` uint8 (same shape)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8 grey levels, got {frames.dtype}")
    lut = np.asarray(lut)
    if lut.shape != (256,) or lut.dtype != np.uint8:
        raise InputError(f"lut must be [256] uint8, got {list(lut.shape)} {lut.dtype}")
    return lut[frames]


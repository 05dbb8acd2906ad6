"""Luminance statistics of clips: RMS contrast, uint8 conversion, mean/contrast matching.

Convention: intensities are fractions of the display's full range, 0 black .. 1 white
(uint8 0..255). RMS contrast is the standard deviation of those intensities over the
whole clip, so a clip at mean 0.5 and RMS 0.2 has pixel std 0.2 * 255 = 51 grey levels.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from stimuli._checks import require_float, require_int
from stimuli.errors import InputError

RMS_TOLERANCE = 1e-3
"""Accuracy ``set_mean_and_contrast`` aims for, on both the mean and the RMS contrast."""


def _as_unit_float(frames: np.ndarray) -> np.ndarray:
    """uint8 -> float64 in [0, 1]; float input is taken as already in [0, 1]."""
    array = np.asarray(frames)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"frames must be uint8 or float in [0, 1], got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def rms_contrast(frames: np.ndarray) -> float:
    """RMS contrast of a clip.

    Args:
        frames: ``[T, H, W]`` (any shape works) uint8 0..255 or float in [0, 1].

    Returns:
        Standard deviation of the intensities, in units of the full range, over the
        whole clip (all frames and pixels pooled).
    """
    values = _as_unit_float(frames)
    if values.size == 0:
        raise InputError("frames must not be empty")
    return float(values.std())


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float intensities in [0, 1] -> uint8 0..255 (rounded to nearest, clipped).

    Args:
        x: float array of any shape, e.g. ``[T, H, W]``. Values outside [0, 1] are
            clipped; NaN is rejected because it has no grey level.
    """
    array = np.asarray(x, dtype=np.float64)
    if np.isnan(array).any():
        raise InputError("x contains NaN; cannot convert to grey levels")
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def max_rms_contrast(mean: float) -> float:
    """Largest RMS contrast any [0, 1]-valued clip with this mean can have.

    It is reached by a black/white clip with a fraction ``mean`` of white pixels.
    """
    return math.sqrt(mean * (1.0 - mean))


def set_mean_and_contrast(
    x: np.ndarray,
    mean: float = 0.5,
    rms: float = 0.2,
    *,
    max_iter: int = 100,
) -> np.ndarray:
    """Rescale a clip around its mean to a requested mean and RMS contrast, within [0, 1].

    The clip is standardised, then mapped affinely as ``offset + gain * z`` and clipped
    to [0, 1]. Clipping lowers the contrast and shifts the mean, so gain and offset are
    re-estimated from the clipped result until both mean and RMS are within
    ``RMS_TOLERANCE`` (1e-3) of the request. The spatial-temporal structure is
    preserved up to that monotone (affine then clipped) intensity map.

    Behaviour when the request cannot be met:
        - ``rms > sqrt(mean * (1 - mean))`` is impossible for any [0, 1] clip (that bound
          is a pure black/white clip), and a constant ``x`` has no contrast to scale:
          both raise ``ValueError``.
        - Requests near that bound may be unreachable for a particular clip (e.g. one
          with a few distinct values, whose saturated version cannot have the requested
          proportions). Then the closest clip found is returned and a ``RuntimeWarning``
          states the achieved mean and RMS.

    Args:
        x: float ``[T, H, W]`` (any shape works), any real range.
        mean: target mean intensity in (0, 1).
        rms: target RMS contrast (std in units of the full range), >= 0.
        max_iter: maximum number of gain/offset refinements.

    Returns:
        float64 array of the same shape as ``x``, in [0, 1].
    """
    array = np.asarray(x, dtype=np.float64)
    if array.size == 0:
        raise InputError("x must not be empty")
    if not np.isfinite(array).all():
        raise InputError("x must be finite (no NaN or inf)")
    mean = require_float("mean", mean, minimum=0.0, maximum=1.0)
    if mean in (0.0, 1.0):
        raise InputError(f"mean must be strictly between 0 and 1, got {mean}")
    rms = require_float("rms", rms, minimum=0.0)
    max_iter = require_int("max_iter", max_iter, minimum=1)
    bound = max_rms_contrast(mean)
    if rms > bound:
        raise InputError(
            f"rms {rms} is infeasible at mean {mean}: a [0, 1] clip can reach at most "
            f"sqrt(mean * (1 - mean)) = {bound:.4f}"
        )

    spread = float(array.std())
    if rms == 0.0:
        return np.full_like(array, mean)
    if spread == 0.0:
        raise InputError("x is constant, so it has no contrast to rescale to rms > 0")

    z = (array - array.mean()) / spread
    gain, offset = rms, mean
    best: np.ndarray | None = None
    best_error = math.inf
    for _ in range(max_iter):
        y = np.clip(offset + gain * z, 0.0, 1.0)
        got_mean, got_rms = float(y.mean()), float(y.std())
        error = max(abs(got_mean - mean), abs(got_rms - rms))
        if error < best_error:
            best, best_error = y, error
        # Aim a little inside the tolerance so uint8 rounding downstream stays within it.
        if error <= RMS_TOLERANCE / 4:
            break
        if got_rms == 0.0:
            # Everything clipped to one side: re-centre before adjusting the gain.
            offset = mean
            gain *= 0.5
            continue
        gain *= rms / got_rms
        offset += mean - got_mean
    assert best is not None
    if best_error > RMS_TOLERANCE:
        warnings.warn(
            f"set_mean_and_contrast reached mean {best.mean():.4f} and rms {best.std():.4f} "
            f"instead of mean {mean} and rms {rms}: clipping to [0, 1] saturates too much",
            RuntimeWarning,
            stacklevel=2,
        )
    return best

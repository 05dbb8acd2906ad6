"""Ground-truth optimal stimuli of linear cells, and the linear drive they maximise.

For a linear cell the response at the clip's last frame is a monotone function of the
drive ``d = sum_{l, x} k[l] w[x] c[T-1-l, x]`` (``c`` = contrast), so the most exciting
clip under a contrast budget solves, with ``u = clip - mean``::

    maximise <F, u>  subject to  sum(u) = 0,  ||u||^2 = n * rms^2,  -mean <= u <= 1 - mean

where ``F[t, x] = k[T-1-t] w[x]`` (the time-reversed filter placed at the clip's end) and
``n`` is the number of pixel-frames. Relaxing the norm to ``<=`` makes the problem convex;
its KKT conditions give ``u = clip((F - mu) / lam, -mean, 1 - mean)`` for scalars
``lam > 0`` and ``mu``, found here by nested root finding, so the answer is exact rather
than iterated. Without clipping this is the zero-mean filter scaled to the budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import brentq
from scipy.signal import lfilter

from rig_bridge.retina.video import check_video, to_contrast
from stimuli.errors import InputError

if TYPE_CHECKING:
    from rig_bridge.retina.simulated import SimulatedRetina

_RELATIVE_TOLERANCE = 1e-12


def drive(retina: SimulatedRetina, i: int, video: np.ndarray) -> np.ndarray:
    """Linear drive (generator before gain) of cell ``i`` at every frame.

    It is the cell's spatial filter applied to each contrast frame, then its causal
    temporal filter (grey before the first frame). For linear cells the rate is
    ``rate_scale * softplus(gain * drive + offset)``; for the others this is the
    output of their linear receptive field.

    Args:
        video: ``[T, H, W]`` float luminance in [0, 1].

    Returns:
        ``[T]`` float64.
    """
    frames = check_video(video, retina.height, retina.width)
    projected = to_contrast(frames) @ retina.spatial_filter(i).reshape(-1)
    return lfilter(retina.temporal_filter(i), [1.0], projected)


def response_at_end(retina: SimulatedRetina, i: int, video: np.ndarray) -> float:
    """Expected spike count of cell ``i`` in the bin of the video's last frame."""
    frames = check_video(video, retina.height, retina.width)
    if frames.shape[0] == 0:
        raise InputError("video has no frames")
    return float(retina.rate(frames)[-1, retina_index(retina, i)])


def retina_index(retina: SimulatedRetina, i: int) -> int:
    if not -retina.n_cells <= int(i) < retina.n_cells:
        raise InputError(f"cell index {i} out of range for {retina.n_cells} cells")
    return int(i)


def end_filter(retina: SimulatedRetina, i: int, n_frames: int) -> np.ndarray:
    """``[n_frames, H, W]`` weights of each pixel-frame in the drive at the last frame."""
    k = retina.temporal_filter(i)
    w = retina.spatial_filter(i)
    weights = np.zeros((n_frames, retina.height, retina.width))
    used = min(n_frames, k.size)
    # Frame n_frames-1-l is seen at lag l.
    weights[n_frames - used :] = k[:used][::-1, None, None] * w[None]
    return weights


def window_filter(retina: SimulatedRetina, i: int, n_frames: int, window: int) -> np.ndarray:
    """``[n_frames, H, W]`` weights of each pixel-frame in the mean drive over the last ``window`` frames."""
    weights = np.zeros((n_frames, retina.height, retina.width))
    for j in range(window):
        weights[: n_frames - j] += end_filter(retina, i, n_frames - j)
    return weights / window


def true_optimal_stimulus(
    retina: SimulatedRetina,
    i: int,
    n_frames: int,
    rms_contrast: float,
    mean: float = 0.5,
    window: int = 1,
) -> np.ndarray:
    """The clip that maximises linear cell ``i``'s drive (and rate) at its last frame, or with
    ``window`` > 1 its mean drive over the last ``window`` frames.

    Subject to: mean intensity ``mean`` and RMS contrast ``rms_contrast`` (std of the
    intensities over the whole clip, fraction of full range) and every value in [0, 1].
    Frames earlier than the filter reaches cannot change the drive; they carry whatever
    the exact optimum gives them (a constant that balances the mean), and if the budget
    cannot be spent on the filter's frames alone, the rest is spent there as a zero-mean
    checkerboard, which leaves the drive unchanged.

    Args:
        retina: the simulated retina.
        i: index of a linear cell.
        n_frames: clip length (>= 1).
        rms_contrast: in [0, sqrt(mean * (1 - mean))).
        mean: mean intensity in (0, 1).
        window: frames at the clip's end whose mean drive is maximised (1: the last frame's).
            The rate is a convex function of the drive, so for a window this maximises the
            mean drive, not exactly the mean rate.

    Returns:
        ``[n_frames, H, W]`` float64 in [0, 1].

    Raises:
        ValueError: non-linear cell, or an infeasible budget.
    """
    i = retina_index(retina, i)
    if not retina.is_linear(i):
        raise InputError(
            f"cell index {i} is a {retina.cell_types[i]} cell: the true optimum is only "
            "defined for linear cells"
        )
    if n_frames < 1:
        raise InputError(f"n_frames must be >= 1, got {n_frames}")
    if not 0.0 < mean < 1.0:
        raise InputError(f"mean must be in (0, 1), got {mean}")
    bound = float(np.sqrt(mean * (1.0 - mean)))
    if not 0.0 <= rms_contrast < bound:
        raise InputError(
            f"rms_contrast must be in [0, {bound:.4f}) at mean {mean}, got {rms_contrast}"
        )
    if not 1 <= window <= n_frames:
        raise InputError(f"window must be 1 to n_frames ({n_frames}) frames, got {window}")
    weights = end_filter(retina, i, n_frames) if window == 1 else window_filter(retina, i, n_frames, window)
    if rms_contrast == 0.0:
        return np.full_like(weights, mean)
    u = _maximise_linear_on_budget(weights.reshape(-1), rms_contrast, 0.0 - mean, 1.0 - mean)
    return np.clip(mean + u.reshape(weights.shape), 0.0, 1.0)


_SMALLEST_LAM = 1e-9
"""Smallest ``lam`` tried, relative to the filter's scale: below it ``mu / lam`` loses
precision, and entries with ``|f| < 1e-9`` of the peak are idle for all purposes."""


def _zero_mean_clip(f: np.ndarray, lam: float, low: float, high: float) -> np.ndarray:
    """``clip((f - mu) / lam, low, high)`` with ``mu`` chosen so the result sums to 0."""

    def total(mu: float) -> float:
        return float(np.clip((f - mu) / lam, low, high).sum())

    lo_mu = float(f.min()) - high * lam
    hi_mu = float(f.max()) - low * lam
    mu = brentq(total, lo_mu, hi_mu, xtol=1e-12 * lam, rtol=1e-15, maxiter=500)
    u = np.clip((f - mu) / lam, low, high)
    # Root finding leaves a rounding-level sum; spread it over the unclipped entries.
    free = (u > low) & (u < high)
    if free.any():
        u[free] -= u.sum() / free.sum()
    return u


def _maximise_linear_on_budget(f: np.ndarray, rms: float, low: float, high: float) -> np.ndarray:
    """Maximiser of ``<f, u>`` with ``sum u = 0``, ``rms(u) = rms``, ``low <= u <= high``."""
    n = f.size
    target = rms * np.sqrt(n)
    scale = float(np.abs(f).max())
    spread = float(np.linalg.norm(f - f.mean()))
    if scale == 0.0 or spread == 0.0:
        raise InputError("the cell's filter has no weight on this clip")

    def excess(log_lam: float) -> float:
        return float(np.linalg.norm(_zero_mean_clip(f, np.exp(log_lam), low, high))) - target

    # Large lam: nothing clips and the norm is spread / lam (= target / 2 here).
    log_hi = float(np.log(2.0 * spread / target))
    log_lo = float(np.log(_SMALLEST_LAM * scale))
    if log_lo >= log_hi or excess(log_lo) < 0.0:
        # Saturating every pixel-frame the filter sees still spends less than the budget.
        u = _spend_rest(_zero_mean_clip(f, np.exp(log_lo), low, high), f, target, low, high)
    else:
        log_lam = brentq(excess, log_lo, log_hi, xtol=1e-12, rtol=_RELATIVE_TOLERANCE)
        u = _zero_mean_clip(f, np.exp(log_lam), low, high)
    if abs(float(u.sum())) > 1e-9 * n or abs(float(np.linalg.norm(u)) - target) > 1e-6 * target:
        raise RuntimeError("true optimum solver did not meet the mean and contrast budget")
    return u


def _spend_rest(
    u: np.ndarray, f: np.ndarray, target: float, low: float, high: float
) -> np.ndarray:
    """Add a zero-mean +-a checkerboard where ``f`` is 0 to bring ``||u||`` to ``target``."""
    idle = np.flatnonzero(f == 0.0)
    # An even number of idle entries pairs + and - exactly, so the mean is unchanged.
    idle = idle[: 2 * (idle.size // 2)]
    missing = target**2 - float(u @ u)
    if idle.size == 0 or missing <= 0.0:
        raise InputError("the contrast budget cannot be met for this clip")
    level = u[idle]
    sign = np.where(np.arange(idle.size) % 2 == 0, 1.0, -1.0)
    # ||level + a*sign||^2 = ||level||^2 + 2a <level, sign> + a^2 * m
    m = idle.size
    b = 2.0 * float(level @ sign)
    a = (-b + np.sqrt(b * b + 4.0 * m * missing)) / (2.0 * m)
    out = u.copy()
    out[idle] = level + a * sign
    if out[idle].min() < low - 1e-12 or out[idle].max() > high + 1e-12:
        raise InputError(
            "the contrast budget is too close to its maximum to be met within [0, 1] for "
            "this clip length; use a lower rms_contrast or fewer frames"
        )
    return out

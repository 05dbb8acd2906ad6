"""From per-clip attributions `[clips, L, H, W]` to a cell's spatial map, temporal profile and RF."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr, spearmanr

from stimuli.errors import InputError


@dataclass(frozen=True)
class EffectiveRF:
    """Attribution-weighted receptive field: centre `(row, col)` and size, in pixels.

    Weights are the squared spatial map, so the peak dominates and small noise far away does not.
    `sigma` is the weighted root-mean-square distance from the centre.
    """

    centre: tuple[float, float]
    sigma: float


def spatial_map(attributions: np.ndarray) -> np.ndarray:
    """`[H, W]`: the spatial part of the clip-mean attributions' best space-time separable fit.

    The clip mean `[L, H, W]` is approximated by `profile[t] * map[h, w]` (first singular
    pair), the profile scaled to 1 at its largest |value|: the map is the pattern at the lag
    that matters most, signed as it acts there. A plain sum over time would cancel a
    biphasic cell, whose early and late lobes have opposite signs, to noise.
    """
    a = _check(attributions).mean(axis=0)
    u, s, vt = np.linalg.svd(a.reshape(a.shape[0], -1), full_matrices=False)
    peak_lag = int(np.argmax(np.abs(u[:, 0])))
    return (s[0] * u[peak_lag, 0] * vt[0]).reshape(a.shape[1:])


def to_resolution(attributions: np.ndarray, grid: int | None) -> np.ndarray:
    """Attributions `[..., H, W]` averaged over each cell of a `grid x grid` partition of the screen.

    A twin sees the screen through `grid x grid` patches (Vi-ST's backbone patches, a baseline's
    area-averaged pixels); within one patch a pixel-level gradient carries the fixed pattern of
    the patch embedding, which no smooth stimulus can exploit. Averaging over the patch keeps
    what the twin resolves. `grid` None (or >= the screen) leaves the attributions as they are.
    """
    a = np.asarray(attributions, dtype=np.float64)
    h, w = a.shape[-2:]
    if grid is None or grid >= min(h, w):
        return a
    rows = _partition(h, grid)  # [grid, H], each row averages one band of pixels
    cols = _partition(w, grid)
    pooled = np.einsum("gh,...hw,kw->...gk", rows, a, cols)
    return np.einsum("gh,...gk,kw->...hw", rows > 0, pooled, cols > 0)


def temporal_profile(attributions: np.ndarray, spatial: np.ndarray, radius: float) -> np.ndarray:
    """`[L]`, lag 0 (the clip's last frame) first: attributions summed over a disc of `radius`
    pixels around the spatial map's peak, averaged over clips."""
    a = _check(attributions)
    disc = _disc(spatial.shape, peak(spatial), radius)
    profile = a[:, :, disc].sum(axis=2).mean(axis=0)
    return profile[::-1].copy()


def peak(spatial: np.ndarray) -> tuple[int, int]:
    """`(row, col)` of the largest |value|."""
    r, c = np.unravel_index(int(np.argmax(np.abs(spatial))), spatial.shape)
    return int(r), int(c)


def effective_rf(spatial: np.ndarray) -> EffectiveRF:
    w = np.asarray(spatial, dtype=np.float64) ** 2
    total = w.sum()
    if not np.isfinite(total) or total <= 0:
        return EffectiveRF((float("nan"), float("nan")), float("nan"))
    rows, cols = np.indices(w.shape)
    cy, cx = (w * rows).sum() / total, (w * cols).sum() / total
    sigma = np.sqrt((w * ((rows - cy) ** 2 + (cols - cx) ** 2)).sum() / total)
    return EffectiveRF((float(cy), float(cx)), float(sigma))


def map_correlation(a: np.ndarray, b: np.ndarray | None) -> float:
    """Pearson r between two maps of the same shape (NaN if either is constant or missing)."""
    if b is None:
        return float("nan")
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.shape != b.shape:
        raise InputError(f"maps differ in size: {a.size} and {b.size} pixels")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(pearsonr(a, b)[0])


def rank_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of |a| and |b| (Adebayo et al. 2018's similarity of maps)."""
    a, b = np.abs(np.ravel(a)), np.abs(np.ravel(b))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


def _partition(n: int, grid: int) -> np.ndarray:
    band = (np.arange(n) * grid) // n
    member = (band[None, :] == np.arange(grid)[:, None]).astype(np.float64)
    return member / member.sum(axis=1, keepdims=True)


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= max(float(radius), 0.0) ** 2


def _check(attributions: np.ndarray) -> np.ndarray:
    a = np.asarray(attributions, dtype=np.float64)
    if a.ndim != 4:
        raise InputError(f"attributions must be [clips, L, H, W], got shape {a.shape}")
    return a

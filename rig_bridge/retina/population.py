"""Creating a population of cells: type mix, jittered mosaics, per-cell parameters, ids.

Everything is drawn from ``np.random.default_rng(seed)`` in a fixed order, so a seed
fully determines the population (before gain calibration, which is deterministic too).

Id assignment (so that demos can always talk about cell 42):
    1. Cells are ranked in raster order of their RF centres (by row, then column).
    2. With ``N > 42`` cells the ids are the ranks ``0 .. N-1``; with ``N <= 42`` they are
       ``0 .. N-2`` and the last-ranked cell gets id 42.
    3. If the cell holding id 42 is not linear, it swaps ids with the linear cell closest
       to it in raster rank (the lower rank on a tie), so cell 42 is linear whenever the
       population has a linear cell at all.
    4. The population is stored in id order, so for ``N > 42`` index ``i`` is id ``i``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rig_bridge.retina.cells import (
    LINEAR_TYPES,
    NONLINEAR_TYPES,
    CellSpec,
    CellType,
    ContrastGainControl,
    SubunitPool,
    biphasic_temporal_filter,
    difference_of_gaussians,
    gaussian_2d,
    unit_norm,
)
from stimuli.errors import InputError

DEMO_CELL_ID = 42
LINEAR_FRACTION = 0.6
MAX_SIGMA_CENTRE_PX = 4.0
BORDER_SIGMAS = 1.5
"""Centres stay at least this many (largest) centre sigmas inside the screen border."""
FILTER_DURATION_S = 0.5

LINEAR_ORDER: tuple[CellType, ...] = (
    CellType.ON_SUSTAINED,
    CellType.OFF_SUSTAINED,
    CellType.ON_TRANSIENT,
    CellType.OFF_TRANSIENT,
)


@dataclass(frozen=True)
class TypeParameters:
    """Ranges (low, high) that a type's per-cell parameters are drawn uniformly from."""

    sigma_centre: tuple[float, float]
    surround_ratio: tuple[float, float]
    surround_weight: tuple[float, float]
    tau_fast_s: tuple[float, float]
    slow_over_fast: tuple[float, float]
    biphasic_weight: tuple[float, float]
    baseline_hz: tuple[float, float]


_SUSTAINED_TIME = dict(
    tau_fast_s=(0.018, 0.024), slow_over_fast=(1.8, 2.2), biphasic_weight=(0.3, 0.5)
)
_TRANSIENT_TIME = dict(
    tau_fast_s=(0.014, 0.020), slow_over_fast=(1.6, 2.0), biphasic_weight=(0.85, 1.0)
)

TYPE_PARAMETERS: dict[CellType, TypeParameters] = {
    CellType.ON_SUSTAINED: TypeParameters(
        sigma_centre=(2.0, 2.8), surround_ratio=(2.0, 3.0), surround_weight=(0.5, 0.8),
        baseline_hz=(4.0, 8.0), **_SUSTAINED_TIME,
    ),
    CellType.OFF_SUSTAINED: TypeParameters(
        sigma_centre=(2.2, 3.0), surround_ratio=(2.0, 3.0), surround_weight=(0.5, 0.8),
        baseline_hz=(6.0, 12.0), **_SUSTAINED_TIME,
    ),
    CellType.ON_TRANSIENT: TypeParameters(
        sigma_centre=(3.0, 4.0), surround_ratio=(2.0, 3.0), surround_weight=(0.5, 0.8),
        baseline_hz=(4.0, 7.0), **_TRANSIENT_TIME,
    ),
    CellType.OFF_TRANSIENT: TypeParameters(
        sigma_centre=(3.0, 4.0), surround_ratio=(2.0, 3.0), surround_weight=(0.5, 0.8),
        baseline_hz=(5.0, 8.0), **_TRANSIENT_TIME,
    ),
    CellType.ON_OFF: TypeParameters(
        sigma_centre=(3.0, 3.8), surround_ratio=(2.0, 3.0), surround_weight=(0.4, 0.7),
        baseline_hz=(2.0, 5.0), **_TRANSIENT_TIME,
    ),
    CellType.SUBUNIT: TypeParameters(
        sigma_centre=(3.0, 4.0), surround_ratio=(2.0, 3.0), surround_weight=(0.4, 0.7),
        baseline_hz=(3.0, 6.0), **_TRANSIENT_TIME,
    ),
    CellType.CONTRAST_ADAPTING: TypeParameters(
        sigma_centre=(2.5, 3.5), surround_ratio=(2.0, 3.0), surround_weight=(0.5, 0.8),
        baseline_hz=(4.0, 8.0), tau_fast_s=(0.016, 0.022), slow_over_fast=(1.7, 2.1),
        biphasic_weight=(0.5, 0.8),
    ),
}

OFFSET = -1.0
"""Softplus input at zero drive before calibration (which refines it): softplus(-1) =
0.31, on the expansive part of the nonlinearity, rectifying strong negative drive.
``rate_scale`` is set so ``rate_scale * softplus(OFFSET)`` is the drawn baseline rate."""
SUBUNIT_SIGMA_PX = 1.0
SUBUNIT_SPACING_PX = 2.5
SUBUNIT_POOL_RADIUS_SIGMAS = 1.5
ADAPTATION_TAU_S = (0.3, 0.8)
ADAPTATION_HALF_CONTRAST = (0.15, 0.25)


def filter_length(frame_rate: float) -> int:
    """Frames in a temporal filter: ~0.5 s at the frame rate (at least 2)."""
    return max(2, int(round(FILTER_DURATION_S * frame_rate)))


def type_counts(n_cells: int, type_weights: Mapping[str, float] | None = None) -> dict[CellType, int]:
    """How many cells of each type.

    Without `type_weights`: ~60 % linear (split evenly), the rest split evenly, remainders to the
    types listed first. With them (type name -> relative weight, missing types 0): counts in
    proportion, largest remainders first. At least one linear cell always exists.
    """
    if n_cells < 1:
        raise InputError(f"n_cells must be >= 1, got {n_cells}")
    if type_weights is not None:
        return _weighted_counts(n_cells, type_weights)
    n_linear = max(1, int(round(LINEAR_FRACTION * n_cells)))
    counts: dict[CellType, int] = {}
    for group, total in ((LINEAR_ORDER, n_linear), (NONLINEAR_TYPES, n_cells - n_linear)):
        base, extra = divmod(total, len(group))
        for k, cell_type in enumerate(group):
            counts[cell_type] = base + (1 if k < extra else 0)
    return counts


def _weighted_counts(n_cells: int, type_weights: Mapping[str, float]) -> dict[CellType, int]:
    order = (*LINEAR_ORDER, *NONLINEAR_TYPES)
    unknown = set(type_weights) - {t.value for t in order}
    if unknown:
        raise InputError(f"unknown cell types {sorted(unknown)} in type_weights (known: {[t.value for t in order]})")
    w = np.asarray([max(0.0, float(type_weights.get(t.value, 0.0))) for t in order])
    if not w.sum() > 0:
        raise InputError("type_weights must give at least one type a positive weight")
    share = w / w.sum() * n_cells
    counts = np.floor(share).astype(int)
    for k in np.argsort(-(share - counts), kind="stable")[: n_cells - counts.sum()]:
        counts[k] += 1
    if counts[: len(LINEAR_ORDER)].sum() == 0:
        # Cell 42 is linear whenever a linear cell exists: give the heaviest linear type one.
        counts[int(np.argmax(w[: len(LINEAR_ORDER)]))] += 1
        counts[int(np.argmax(counts))] -= 1
    return {t: int(c) for t, c in zip(order, counts, strict=True)}


def hex_lattice(
    spacing: float, y_range: tuple[float, float], x_range: tuple[float, float], phase: np.ndarray
) -> np.ndarray:
    """Points of a hexagonal lattice (row spacing ``spacing * sqrt(3)/2``) in a rectangle.

    Args:
        phase: ``[2]`` in [0, 1): shifts the lattice by that fraction of a cell.

    Returns:
        ``[P, 2]`` (y, x) points inside the closed rectangle.
    """
    row_step = spacing * math.sqrt(3.0) / 2.0
    y0 = y_range[0] + (phase[0] - 1.0) * row_step
    x0 = x_range[0] + (phase[1] - 1.0) * spacing
    ys = np.arange(y0, y_range[1] + row_step, row_step)
    points = []
    for r, y in enumerate(ys):
        xs = np.arange(x0 + (spacing / 2.0 if r % 2 else 0.0), x_range[1] + spacing, spacing)
        for x in xs:
            if y_range[0] <= y <= y_range[1] and x_range[0] <= x <= x_range[1]:
                points.append((y, x))
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def jittered_mosaic(
    n: int,
    y_range: tuple[float, float],
    x_range: tuple[float, float],
    rng: np.random.Generator,
    jitter: float = 0.15,
) -> np.ndarray:
    """``n`` centres tiling a rectangle: a hexagonal lattice just dense enough, jittered.

    The spacing starts at the ideal hexagonal spacing for ``n`` points and shrinks by 2 %
    steps until the lattice holds at least ``n`` points; the few surplus points are
    dropped at random, then each centre is jittered by ``jitter`` spacings (Gaussian)
    and clipped back into the rectangle.

    Returns:
        ``[n, 2]`` (y, x) centres.
    """
    if n == 0:
        return np.zeros((0, 2))
    height = max(y_range[1] - y_range[0], 1e-6)
    width = max(x_range[1] - x_range[0], 1e-6)
    spacing = math.sqrt(2.0 * height * width / (math.sqrt(3.0) * n)) * 1.1
    phase = rng.random(2)
    while True:
        points = hex_lattice(spacing, y_range, x_range, phase)
        if len(points) >= n:
            break
        spacing *= 0.98
    keep = np.sort(rng.choice(len(points), size=n, replace=False))
    points = points[keep] + rng.normal(0.0, jitter * spacing, size=(n, 2))
    points[:, 0] = np.clip(points[:, 0], *y_range)
    points[:, 1] = np.clip(points[:, 1], *x_range)
    return points


def assign_ids(centres: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Cell ids by the rule in this module's docstring.

    Args:
        centres: ``[N, 2]`` (y, x) RF centres.
        linear: ``[N]`` bool, which cells are linear.

    Returns:
        ``[N]`` int64 ids, unique, containing 42.
    """
    n = len(centres)
    order = np.lexsort((centres[:, 1], centres[:, 0]))  # raster: row first, then column
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.arange(n, dtype=np.int64)
    if n <= DEMO_CELL_ID:
        ids[order[-1]] = DEMO_CELL_ID
    holder_rank = int(np.flatnonzero(ids[order] == DEMO_CELL_ID)[0])
    if not linear[order[holder_rank]] and linear.any():
        linear_ranks = np.flatnonzero(linear[order])
        swap_rank = int(linear_ranks[np.argmin(np.abs(linear_ranks - holder_rank))])
        a, b = order[holder_rank], order[swap_rank]
        ids[a], ids[b] = ids[b], ids[a]
    return ids


def _draw(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _subunit_pool(
    height: int,
    width: int,
    centre: tuple[float, float],
    sigma_centre: float,
    polarity: int,
    rng: np.random.Generator,
) -> SubunitPool:
    """Subunits on a hexagonal lattice over the cell's centre, pooled by a centre Gaussian."""
    radius = SUBUNIT_POOL_RADIUS_SIGMAS * sigma_centre
    lattice = hex_lattice(
        SUBUNIT_SPACING_PX,
        (centre[0] - radius, centre[0] + radius),
        (centre[1] - radius, centre[1] + radius),
        rng.random(2),
    )
    inside = np.hypot(lattice[:, 0] - centre[0], lattice[:, 1] - centre[1]) <= radius
    positions = lattice[inside]
    if len(positions) == 0:
        positions = np.asarray([centre], dtype=np.float64)
    filters = np.stack(
        [
            polarity
            * difference_of_gaussians(
                height, width, (p[0], p[1]), SUBUNIT_SIGMA_PX, 2.0 * SUBUNIT_SIGMA_PX, 0.5
            )
            for p in positions
        ]
    )
    d2 = (positions[:, 0] - centre[0]) ** 2 + (positions[:, 1] - centre[1]) ** 2
    weights = np.exp(-d2 / (2.0 * sigma_centre**2))
    return SubunitPool(
        filters=filters,
        weights=weights / weights.sum(),
        centres=tuple((float(p[0]), float(p[1])) for p in positions),
        sigma=SUBUNIT_SIGMA_PX,
    )


def draw_cells(
    n_cells: int, height: int, width: int, frame_rate: float, seed: int,
    type_weights: Mapping[str, float] | None = None, rf_scale: float = 1.0,
) -> tuple[CellSpec, ...]:
    """The uncalibrated population (gain 1), stored in id order.

    Args:
        n_cells: population size N >= 1.
        height, width: screen size in pixels (>= 8 each).
        frame_rate: frames per second (> 0); sets the filter length and bin width.
        seed: integer seed; the same seed gives the same population.
        type_weights: relative share of each type (see `type_counts`); None: the default mix.
        rf_scale: factor on every type's centre (and so surround and subunit-pool) size.

    Returns:
        ``N`` :class:`CellSpec` sorted by id.
    """
    if height < 8 or width < 8:
        raise InputError(f"screen must be at least 8 x 8 pixels, got {height} x {width}")
    if not frame_rate > 0:
        raise InputError(f"frame_rate must be > 0, got {frame_rate}")
    if not 0.25 <= rf_scale <= 4.0:
        raise InputError(f"rf_scale must be in [0.25, 4], got {rf_scale}")
    rng = np.random.default_rng(seed)
    n_lags = filter_length(frame_rate)
    margin = min(BORDER_SIGMAS * MAX_SIGMA_CENTRE_PX * rf_scale, (min(height, width) - 1) / 4.0)
    y_range = (margin, height - 1 - margin)
    x_range = (margin, width - 1 - margin)

    drafts: list[dict] = []
    for cell_type, count in type_counts(n_cells, type_weights).items():
        centres = jittered_mosaic(count, y_range, x_range, rng)
        params = TYPE_PARAMETERS[cell_type]
        for centre_yx in centres:
            centre = (float(centre_yx[0]), float(centre_yx[1]))
            if cell_type in (CellType.ON_SUSTAINED, CellType.ON_TRANSIENT, CellType.ON_OFF):
                polarity = 1
            elif cell_type in (CellType.OFF_SUSTAINED, CellType.OFF_TRANSIENT):
                polarity = -1
            else:
                polarity = 1 if rng.random() < 0.5 else -1
            sigma_c = _draw(rng, params.sigma_centre) * rf_scale
            sigma_s = sigma_c * _draw(rng, params.surround_ratio)
            surround_weight = _draw(rng, params.surround_weight)
            tau_fast = _draw(rng, params.tau_fast_s)
            temporal = biphasic_temporal_filter(
                n_lags, frame_rate, tau_fast, tau_fast * _draw(rng, params.slow_over_fast),
                _draw(rng, params.biphasic_weight),
            )
            baseline = _draw(rng, params.baseline_hz) / frame_rate
            extra: dict = {}
            if cell_type is CellType.ON_OFF:
                # The OFF pathway is a little slower than the ON pathway, as in the retina.
                slow = tau_fast * _draw(rng, (1.1, 1.3))
                extra["off_temporal_filter"] = biphasic_temporal_filter(
                    n_lags, frame_rate, slow, slow * _draw(rng, params.slow_over_fast),
                    _draw(rng, params.biphasic_weight),
                )
            dog = difference_of_gaussians(height, width, centre, sigma_c, sigma_s, surround_weight)
            if cell_type is CellType.SUBUNIT:
                pool = _subunit_pool(height, width, centre, sigma_c, polarity, rng)
                extra["subunits"] = pool
                # The linear RF of a subunit cell is the pooled sum of its subunits.
                spatial = unit_norm(np.tensordot(pool.weights, pool.filters, axes=1))
            else:
                spatial = unit_norm(polarity * dog)
            if cell_type is CellType.CONTRAST_ADAPTING:
                extra["contrast_gain"] = ContrastGainControl(
                    pool=gaussian_2d(height, width, centre, sigma_s)
                    / gaussian_2d(height, width, centre, sigma_s).sum(),
                    tau_s=_draw(rng, ADAPTATION_TAU_S),
                    half_contrast=_draw(rng, ADAPTATION_HALF_CONTRAST),
                )
            drafts.append(
                dict(
                    cell_type=cell_type, centre=centre, polarity=polarity,
                    sigma_centre=sigma_c, sigma_surround=sigma_s,
                    surround_weight=surround_weight, spatial_filter=spatial,
                    temporal_filter=temporal, offset=OFFSET,
                    rate_scale=baseline / float(np.logaddexp(0.0, OFFSET)), **extra,
                )
            )

    centres = np.asarray([d["centre"] for d in drafts], dtype=np.float64)
    linear = np.asarray([d["cell_type"] in LINEAR_TYPES for d in drafts], dtype=bool)
    ids = assign_ids(centres, linear)
    cells = [CellSpec(cell_id=int(cid), **d) for cid, d in zip(ids, drafts, strict=True)]
    return tuple(sorted(cells, key=lambda c: c.cell_id))

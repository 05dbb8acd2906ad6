"""Cell types, cell specifications and the filters that make up a simulated ganglion cell.

Conventions shared by the whole simulated retina:
    - Stimuli are worked on as contrast ``c = (luminance - 0.5) / 0.5`` in [-1, 1].
    - A spatial filter is ``[H, W]`` over the screen's pixels; its sign carries the
      polarity (an OFF cell's centre is negative), and it has unit L2 norm.
    - A temporal filter is ``[L]`` with lag 0 first: ``k[l]`` weighs the frame shown
      ``l`` frames before the current bin. It is causal by construction and has unit L2
      norm; its first lobe is positive, so the polarity lives in the spatial filter only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum

import numpy as np

from stimuli.errors import InputError


class CellType(StrEnum):
    """The ganglion-cell types of the simulated retina (values are the public names)."""

    ON_SUSTAINED = "on_sustained"
    OFF_SUSTAINED = "off_sustained"
    ON_TRANSIENT = "on_transient"
    OFF_TRANSIENT = "off_transient"
    ON_OFF = "on_off"
    SUBUNIT = "subunit"
    CONTRAST_ADAPTING = "contrast_adapting"


LINEAR_TYPES: frozenset[CellType] = frozenset(
    {
        CellType.ON_SUSTAINED,
        CellType.OFF_SUSTAINED,
        CellType.ON_TRANSIENT,
        CellType.OFF_TRANSIENT,
    }
)
"""Types that are exactly linear filter -> static nonlinearity -> Poisson."""

NONLINEAR_TYPES: tuple[CellType, ...] = (
    CellType.ON_OFF,
    CellType.SUBUNIT,
    CellType.CONTRAST_ADAPTING,
)


def _readonly(array: np.ndarray) -> np.ndarray:
    out = np.array(array, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class SubunitPool:
    """Rectified subunits of a nonlinear (Y-like) cell.

    Attributes:
        filters: ``[S, H, W]`` small difference-of-Gaussians subunit filters, sign = polarity,
            each with unit centre integral so a subunit reports local contrast.
        weights: ``[S]`` pooling weights (a Gaussian over the cell's centre), summing to 1.
        centres: ``S`` subunit centres ``(y, x)`` in pixels.
        sigma: subunit centre sigma in pixels.
    """

    filters: np.ndarray
    weights: np.ndarray
    centres: tuple[tuple[float, float], ...]
    sigma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", _readonly(self.filters))
        object.__setattr__(self, "weights", _readonly(self.weights))

    def __eq__(self, other: object) -> bool:
        return _dataclass_equal(self, other)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class ContrastGainControl:
    """Divisive gain control by a running estimate of local contrast (causal).

    The gain at frame t is ``1 / (half_contrast + sqrt(e_t))`` where ``e_t`` is an
    exponential running mean (time constant ``tau_s``) of the local contrast energy
    ``sum_xy pool[y, x] * c_t[y, x]^2``.

    Attributes:
        pool: ``[H, W]`` non-negative weights summing to 1 (a Gaussian over the surround).
        tau_s: time constant of the running estimate, seconds.
        half_contrast: contrast (std, contrast units) at which the gain has halved
            relative to a grey screen.
    """

    pool: np.ndarray
    tau_s: float
    half_contrast: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", _readonly(self.pool))

    def __eq__(self, other: object) -> bool:
        return _dataclass_equal(self, other)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class CellSpec:
    """Everything that defines one simulated ganglion cell.

    The expected spike count per frame bin is
    ``rate_scale * softplus(gain * generator + offset)``, where the generator is:
        - linear types: the linear drive ``k * (w . c)`` (temporal filter ``k`` of the
          spatial projection on ``w = spatial_filter``);
        - ON-OFF: ``relu(k * (w . c)) + relu(k_off * (-w . c))``;
        - subunit: ``sum_j v_j relu(k * (w_j . c))`` over the rectified subunits;
        - contrast adapting: the linear drive times the causal contrast gain.
    For every type ``spatial_filter`` and ``temporal_filter`` are the cell's linear
    receptive field (for subunit cells, the linear sum of its subunits).

    Attributes:
        cell_id: unique id (int64 range).
        cell_type: the :class:`CellType`.
        centre: RF centre ``(y, x)`` in pixels.
        polarity: +1 ON, -1 OFF (ON-OFF cells: +1, the ON pathway is ``spatial_filter``).
        sigma_centre: centre Gaussian sigma, pixels.
        sigma_surround: surround Gaussian sigma, pixels.
        surround_weight: surround integral relative to the centre integral.
        spatial_filter: ``[H, W]`` unit-L2 DoG, sign = polarity.
        temporal_filter: ``[L]`` unit-L2 causal biphasic filter, lag 0 first.
        gain: generator -> nonlinearity input scale.
        offset: nonlinearity input at zero generator (sets the baseline rate).
        rate_scale: expected spikes per bin per unit softplus.
        off_temporal_filter: ``[L]`` OFF-pathway temporal filter (ON-OFF cells only).
        subunits: the subunit pool (subunit cells only).
        contrast_gain: the gain control (contrast-adapting cells only).
    """

    cell_id: int
    cell_type: CellType
    centre: tuple[float, float]
    polarity: int
    sigma_centre: float
    sigma_surround: float
    surround_weight: float
    spatial_filter: np.ndarray
    temporal_filter: np.ndarray
    gain: float = 1.0
    offset: float = -1.0
    rate_scale: float = 0.5
    off_temporal_filter: np.ndarray | None = None
    subunits: SubunitPool | None = None
    contrast_gain: ContrastGainControl | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cell_type", CellType(self.cell_type))
        object.__setattr__(self, "spatial_filter", _readonly(self.spatial_filter))
        object.__setattr__(self, "temporal_filter", _readonly(self.temporal_filter))
        if self.off_temporal_filter is not None:
            object.__setattr__(self, "off_temporal_filter", _readonly(self.off_temporal_filter))
        if self.spatial_filter.ndim != 2:
            raise InputError(f"spatial_filter must be [H, W], got {self.spatial_filter.shape}")
        if self.temporal_filter.ndim != 1:
            raise InputError(f"temporal_filter must be [L], got {self.temporal_filter.shape}")
        if self.polarity not in (-1, 1):
            raise InputError(f"polarity must be +1 or -1, got {self.polarity}")
        needs = {
            CellType.ON_OFF: self.off_temporal_filter is not None,
            CellType.SUBUNIT: self.subunits is not None,
            CellType.CONTRAST_ADAPTING: self.contrast_gain is not None,
        }
        if not needs.get(self.cell_type, True):
            raise InputError(f"a {self.cell_type} cell needs its pathway parameters")

    @property
    def id(self) -> int:
        """Alias of ``cell_id``."""
        return self.cell_id

    @property
    def type(self) -> CellType:
        """Alias of ``cell_type``."""
        return self.cell_type

    @property
    def is_linear(self) -> bool:
        return self.cell_type in LINEAR_TYPES

    @property
    def baseline(self) -> float:
        """Expected spike count per bin on a steady grey screen."""
        return float(self.rate_scale * np.logaddexp(0.0, self.offset))

    def __eq__(self, other: object) -> bool:
        return _dataclass_equal(self, other)

    __hash__ = None  # type: ignore[assignment]


def _dataclass_equal(a: object, b: object) -> bool:
    """Field-wise equality that compares numpy arrays by value."""
    if type(a) is not type(b):
        return NotImplemented  # type: ignore[return-value]
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
                return False
            if x.shape != y.shape or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


def gaussian_2d(height: int, width: int, centre: tuple[float, float], sigma: float) -> np.ndarray:
    """Isotropic Gaussian with unit analytic integral, sampled at pixel centres.

    Returns:
        ``[H, W]`` float64. Near the border part of the mass falls off screen, as it
        would for a cell whose surround extends past the display.
    """
    if sigma <= 0:
        raise InputError(f"sigma must be > 0, got {sigma}")
    y = np.arange(height, dtype=np.float64)[:, None] - centre[0]
    x = np.arange(width, dtype=np.float64)[None, :] - centre[1]
    return np.exp(-(y * y + x * x) / (2.0 * sigma * sigma)) / (2.0 * math.pi * sigma * sigma)


def difference_of_gaussians(
    height: int,
    width: int,
    centre: tuple[float, float],
    sigma_centre: float,
    sigma_surround: float,
    surround_weight: float,
) -> np.ndarray:
    """Centre Gaussian minus ``surround_weight`` times the surround Gaussian.

    Both Gaussians have unit integral, so ``surround_weight`` is the surround's share of
    the centre's strength (a full-field response of ``1 - surround_weight``).

    Returns:
        ``[H, W]`` float64, positive centre (multiply by -1 for OFF).
    """
    if sigma_surround <= sigma_centre:
        raise InputError(
            f"sigma_surround ({sigma_surround}) must exceed sigma_centre ({sigma_centre})"
        )
    return gaussian_2d(height, width, centre, sigma_centre) - surround_weight * gaussian_2d(
        height, width, centre, sigma_surround
    )


def unit_norm(array: np.ndarray) -> np.ndarray:
    """``array / ||array||_2`` (raises on an all-zero array)."""
    norm = float(np.linalg.norm(array))
    if norm == 0.0:
        raise InputError("cannot normalise an all-zero filter")
    return array / norm


def gamma_kernel(t: np.ndarray, tau: float, order: int) -> np.ndarray:
    """``t^n exp(-t/tau) / (n! tau^(n+1))``: unit-integral gamma kernel, zero for t < 0."""
    t = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
    return (t / tau) ** order * np.exp(-t / tau) / (math.factorial(order) * tau)


def biphasic_temporal_filter(
    n_lags: int,
    frame_rate: float,
    tau_fast_s: float,
    tau_slow_s: float,
    biphasic_weight: float,
    order: int = 3,
    oversample: int = 16,
) -> np.ndarray:
    """Causal biphasic filter: a fast gamma kernel minus ``biphasic_weight`` of a slow one.

    The continuous filter is averaged over each frame's lag interval
    ``[(l - 0.5) / fps, (l + 0.5) / fps]`` (clipped at 0), so the discrete filter does not
    depend on where inside a frame the kernel happens to be sampled. ``biphasic_weight``
    near 1 gives a transient cell (almost no response to a sustained step), near 0.3 a
    sustained one.

    Returns:
        ``[n_lags]`` float64, unit L2 norm, lag 0 first, first lobe positive.
    """
    if n_lags < 1:
        raise InputError(f"n_lags must be >= 1, got {n_lags}")
    if not tau_slow_s > tau_fast_s > 0:
        raise InputError("need tau_slow_s > tau_fast_s > 0")
    dt = 1.0 / frame_rate
    offsets = (np.arange(oversample) + 0.5) / oversample - 0.5
    t = (np.arange(n_lags)[:, None] + offsets[None, :]) * dt
    kernel = gamma_kernel(t, tau_fast_s, order) - biphasic_weight * gamma_kernel(
        t, tau_slow_s, order
    )
    return unit_norm(kernel.mean(axis=1))

"""Readouts of Vi-ST: from the CMST maps `[B, M, T, h, w]` to rates `[B, T, N]`.

`Readout` (published): the maps are flattened per time step in (map, row, column) order, as
the public code's `rearrange(out, "b c t p q -> b t (c p q)")`, and a single Linear maps the
`M * h * w` values to N rates. Every cell can read every map at every position; this layer
holds most of the model's parameters (8 * 8 * 90 * 90 + 90 = 518,490 for N = M = 90).

`FactorizedReadout` (Klindt et al. 2017, "Neural system identification for large populations
separating 'what' and 'where'"): each cell has its own spatial mask over the grid and its own
weights over the maps, `rate_n = sum_m f_nm sum_pq s_npq x_mpq + b_n`. It needs
`N * (h * w + M + 1)` parameters (6,570 for N = 90, M = 8) instead of `N * (M * h * w + 1)`,
and each mask starts as a Gaussian at the cell's recorded receptive-field centre, so the twin
begins local and a few minutes of natural movie do not smear a cell over the screen.

`DoGReadout`: the factorized readout with each mask a difference of Gaussians (Rodieck 1965),
five numbers a cell (centre, centre width, surround width and weight) instead of `h * w`. A
natural movie has little power at fine scales, so a free mask's width and surround are barely
constrained by the data and weight decay leaves them too wide with too much surround; a
parametric mask gets both from the scales the movie does carry. Each Gaussian is integrated
over every grid position (the pixels a position pools), so a centre narrower than a position
is still the right mass in the right place.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stimuli.errors import InputError
from stimuli.recording.rf_geometry import rf_centre_and_size

__all__ = ["START_MASK_SIGMA", "DoGReadout", "FactorizedReadout", "Readout", "grid_centres"]

START_MASK_SIGMA = 0.75
"""Width of each cell's starting mask, in grid positions."""

START_SURROUND_RATIO = 2.5
"""A DoG mask's starting surround width over its centre width (RGC surrounds are 2 to 3 times
the centre, Croner & Kaplan 1995)."""

START_SURROUND_WEIGHT = 0.5
"""A DoG mask's starting surround integral relative to its centre's."""


def _check_sizes(n_cells: int, height: int, width: int, in_channels: int) -> None:
    if min(n_cells, height, width, in_channels) < 1:
        raise InputError(
            f"n_cells, height, width and in_channels must be >= 1, got {n_cells}, {height}, "
            f"{width}, {in_channels}"
        )


def _checked_masks(n_cells: int, height: int, width: int, in_channels: int, centres: Tensor,
                   sigma: float) -> tuple[int, int, int, int]:
    """The sizes of a masked readout, `(N, h, w, M)`, once its arguments are checked."""
    _check_sizes(n_cells, height, width, in_channels)
    if tuple(centres.shape) != (n_cells, 2):
        raise InputError(f"centres must be [{n_cells}, 2], got {tuple(centres.shape)}")
    if not sigma > 0:
        raise InputError(f"sigma must be > 0, got {sigma}")
    return n_cells, height, width, in_channels


class Readout(nn.Module):
    """Linear `M * h * w -> N` per time step. Shapes: `[B, M, T, h, w] -> [B, T, N]`.

    M (`in_channels`) is the number of maps the CMST blocks carry; the published model has
    one map per cell (M = N, the default).
    """

    def __init__(self, n_cells: int, height: int, width: int, in_channels: int | None = None) -> None:
        super().__init__()
        in_channels = n_cells if in_channels is None else in_channels
        _check_sizes(n_cells, height, width, in_channels)
        self.n_cells, self.height, self.width = n_cells, height, width
        self.in_channels = in_channels
        self.linear = nn.Linear(in_channels * height * width, n_cells)

    def forward(self, x: Tensor) -> Tensor:
        b, n, t, h, w = _check_input(x, self.in_channels, self.height, self.width)
        flat = x.permute(0, 2, 1, 3, 4).reshape(b, t, n * h * w)
        return self.linear(flat)


class FactorizedReadout(nn.Module):
    """Per-cell spatial mask times per-cell map weights. Shapes: `[B, M, T, h, w] -> [B, T, N]`.

    Args:
        centres: `[N, 2]` each cell's (row, column) on the readout grid, where its mask starts
            (clamped to the grid: a cell whose receptive field lies beyond the grid's centres
            reads the nearest position, whose receptive field still covers it).
        sigma: width of the initial Gaussian masks, in grid positions.
    """

    def __init__(self, n_cells: int, height: int, width: int, in_channels: int, centres: Tensor,
                 sigma: float = START_MASK_SIGMA) -> None:
        super().__init__()
        self.n_cells, self.height, self.width, self.in_channels = _checked_masks(
            n_cells, height, width, in_channels, centres, sigma)
        self.sigma = sigma
        self.spatial = nn.Parameter(_gaussian_masks(centres, height, width, sigma))
        # Small equal weights: every map starts with the same say, the sign is learned.
        self.features = nn.Parameter(torch.full((n_cells, in_channels), 1.0 / in_channels))
        self.bias = nn.Parameter(torch.zeros(n_cells))

    @torch.no_grad()
    def start_at(self, centres: Tensor) -> None:
        """Restart every mask as the starting Gaussian at `centres` `[N, 2]` (grid row, column)."""
        self.spatial.copy_(_gaussian_masks(centres, self.height, self.width, self.sigma))

    def forward(self, x: Tensor) -> Tensor:
        return _masked_readout(self, x)


class DoGReadout(nn.Module):
    """`FactorizedReadout` whose masks are differences of Gaussians. Shapes: `[B, M, T, h, w] -> [B, T, N]`.

    Each cell's mask is `G(c, sigma) - a * G(c, ratio * sigma)`, with unit-integral Gaussians
    (so `a` in (0, 1) is the surround's share of the centre) integrated over each grid position,
    `c` free on the grid, `sigma > 0` and `ratio > 1`. The shape parameters are in
    `SHAPE_PARAMETERS`: the optimiser leaves them out of weight decay, which would pull a log-width
    to one grid position rather than towards a small mask.

    Args:
        centres: `[N, 2]` each cell's starting (row, column) on the readout grid (clamped to it).
        sigma: the starting centre width, in grid positions.
    """

    SHAPE_PARAMETERS = ("centre", "log_sigma", "log_ratio", "surround_logit")

    def __init__(self, n_cells: int, height: int, width: int, in_channels: int, centres: Tensor,
                 sigma: float = START_MASK_SIGMA) -> None:
        super().__init__()
        self.n_cells, self.height, self.width, self.in_channels = _checked_masks(
            n_cells, height, width, in_channels, centres, sigma)
        self.centre = nn.Parameter(torch.zeros(n_cells, 2))
        self.start_at(centres)
        self.log_sigma = nn.Parameter(torch.full((n_cells,), math.log(sigma)))
        self.log_ratio = nn.Parameter(torch.full((n_cells,), math.log(START_SURROUND_RATIO - 1)))
        self.surround_logit = nn.Parameter(torch.full((n_cells,), _logit(START_SURROUND_WEIGHT)))
        self.features = nn.Parameter(torch.full((n_cells, in_channels), 1.0 / in_channels))
        self.bias = nn.Parameter(torch.zeros(n_cells))

    @torch.no_grad()
    def start_at(self, centres: Tensor) -> None:
        """Move every mask's centre to `centres` `[N, 2]` (grid row, column; clamped to the grid)."""
        limits = torch.tensor([self.height - 1, self.width - 1], dtype=torch.float32)
        self.centre.copy_(torch.minimum(centres.to(torch.float32).clamp(min=0), limits))

    @property
    def spatial(self) -> Tensor:
        """`[N, h, w]` the masks (centre mass minus surround mass at each grid position)."""
        sigma = self.log_sigma.exp()
        surround = sigma * (1.0 + self.log_ratio.exp())
        weight = torch.sigmoid(self.surround_logit)
        return (self._gaussian_mass(sigma)
                - weight[:, None, None] * self._gaussian_mass(surround))

    def _gaussian_mass(self, sigma: Tensor) -> Tensor:
        """`[N, h, w]` the mass of each cell's unit Gaussian of width `sigma` `[N]` on each grid position."""
        rows = _interval_mass(self.centre[:, 0], sigma, self.height)
        cols = _interval_mass(self.centre[:, 1], sigma, self.width)
        return rows[:, :, None] * cols[:, None, :]

    def forward(self, x: Tensor) -> Tensor:
        return _masked_readout(self, x)


def _masked_readout(readout: FactorizedReadout | DoGReadout, x: Tensor) -> Tensor:
    """`[B, T, N]` from maps `x` `[B, M, T, h, w]`: each cell's mask over each map, then its map weights."""
    _check_input(x, readout.in_channels, readout.height, readout.width)
    pooled = torch.einsum("bmthw,nhw->btnm", x, readout.spatial)  # each cell's view of each map
    return (pooled * readout.features).sum(dim=-1) + readout.bias


def _interval_mass(centre: Tensor, sigma: Tensor, n: int) -> Tensor:
    """`[N, n]` the mass a 1-D unit Gaussian `(centre, sigma)` `[N]` puts on `[p - 1/2, p + 1/2]`, p = 0..n-1."""
    edges = torch.arange(n + 1, dtype=centre.dtype, device=centre.device) - 0.5
    cdf = torch.special.ndtr((edges[None, :] - centre[:, None]) / sigma[:, None])
    return cdf[:, 1:] - cdf[:, :-1]


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def grid_centres(rf_maps: Tensor, margin: int) -> Tensor:
    """`[N, 2]` (row, column) on the readout grid of each cell's RF centre.

    `rf_maps` `[N, g, g]` are on the feature grid (magnitudes, as `rf_to_grid` makes them); the
    readout grid is the feature grid less `margin` positions on every side (valid convolutions),
    so feature position p sits at readout position p - margin. The centre is the one of the
    half-maximum region around the peak (`rf_centre_and_size`): a centre of mass over the whole
    map would be pulled towards the middle of the screen by the STA's noise floor.
    """
    if rf_maps.ndim != 3:
        raise InputError(f"rf_maps must be [N, g, g], got shape {tuple(rf_maps.shape)}")
    maps = rf_maps.detach().to(torch.float64).cpu().numpy()
    centres = [rf_centre_and_size(m)[0] for m in maps]
    return (torch.tensor(centres, dtype=torch.float64).reshape(-1, 2) - margin).to(torch.float32)


def _gaussian_masks(centres: Tensor, height: int, width: int, sigma: float) -> Tensor:
    """`[N, h, w]` unit-sum Gaussians at the centres, clamped onto the grid."""
    cy = centres[:, 0].clamp(0, height - 1)[:, None, None]
    cx = centres[:, 1].clamp(0, width - 1)[:, None, None]
    rows = torch.arange(height, dtype=torch.float32)[None, :, None]
    cols = torch.arange(width, dtype=torch.float32)[None, None, :]
    g = torch.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * sigma**2))
    return g / g.flatten(1).sum(dim=1)[:, None, None]


def _check_input(x: Tensor, maps: int, height: int, width: int) -> tuple[int, int, int, int, int]:
    if x.ndim != 5:
        raise InputError(f"readout expects [B, {maps}, T, {height}, {width}], got {tuple(x.shape)}")
    b, n, t, h, w = x.shape
    if (n, h, w) != (maps, height, width):
        raise InputError(f"readout expects [B, {maps}, T, {height}, {width}], got {tuple(x.shape)}")
    return b, n, t, h, w

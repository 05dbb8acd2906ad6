"""Fitting the LN baseline as a lab fits one: a regularised linear filter, then a nonlinearity.

1. **Filter.** Ridge regression of each cell's trial-averaged counts on the past `n_lags`
   frames, area-averaged to `resolution x resolution` and centred on grey (the same inputs as
   `LNModel`). The normal equations are accumulated chunk by chunk, so memory does not grow with
   the recording; one eigendecomposition serves every ridge strength.
2. **Where and how smooth, per cell**: the filter is fitted over the whole screen and, where
   the cells' recorded RFs are given, over discs of `WINDOW_SIGMAS` RF-centre sigmas around each
   cell's RF (a lab crops its STA to the RF); of every window and ridge strength, the one whose
   filter predicts the validation blocks best (Pearson r of the linear drive) is kept.
3. **Output nonlinearity, per cell**: `rate = scale * softplus(gain * drive + offset)`, fitted
   by Poisson maximum likelihood (L-BFGS) on the training frames. The fitted gain is folded
   into the filter and bias, so the result is an ordinary `LNModel`.

On white noise the ridge filter is the regularised STA; on natural movies it removes the
stimulus correlations that bias a plain STA.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from stimuli.errors import InputError
from stimuli.recording.rf_geometry import rf_centre_and_size
from vist_model.baselines import LNModel, lagged_inputs
from vist_model.data import Block

__all__ = ["RIDGE_GRID", "WINDOW_SIGMAS", "fit_ln", "rf_windows"]

RIDGE_GRID = tuple(10.0 ** k for k in range(-3, 6))
"""Ridge strengths tried, relative to the mean eigenvalue of the input covariance."""
WINDOW_SIGMAS = (2.0, 3.0, 5.0)
"""Radii of the filter windows tried around each cell's RF centre, in RF-centre sigmas."""
MIN_WINDOW_CELLS = 1.5
"""The smallest window radius, in cells of the LN's grid (a 3 x 3 neighbourhood at least)."""
CHUNK = 1024  # frames per chunk of lagged inputs


def _design(model: LNModel, block: Block) -> tuple[np.ndarray, np.ndarray]:
    """`([T, L * r * r] lagged centred inputs, [T, N] targets)` of one block, float64."""
    frames = torch.from_numpy(np.asarray(block.inputs, dtype=np.float32))[None]
    x = lagged_inputs(frames, model.config.resolution, model.config.n_lags)[0]  # [T, L*r*r]
    return x.double().numpy(), np.asarray(block.targets, dtype=np.float64)


def _chunks(model: LNModel, blocks: Sequence[Block]):
    for block in blocks:
        for start in range(0, len(block.targets), CHUNK):
            part = Block(block.inputs[max(0, start - model.config.n_lags + 1):start + CHUNK],
                         block.targets[max(0, start - model.config.n_lags + 1):start + CHUNK])
            x, y = _design(model, part)
            skip = min(start, model.config.n_lags - 1)  # history frames that belong to the last chunk
            yield x[skip:], y[skip:]


def _normal_equations(model: LNModel, blocks: Sequence[Block]) -> tuple[np.ndarray, ...]:
    d, n = model.filters.weight[0].numel(), model.config.n_cells
    xtx, xty = np.zeros((d, d)), np.zeros((d, n))
    xs, ys, count = np.zeros(d), np.zeros(n), 0
    for x, y in _chunks(model, blocks):
        xtx += x.T @ x
        xty += x.T @ y
        xs += x.sum(0)
        ys += y.sum(0)
        count += len(x)
    # Centre: the bias takes the means.
    mx, my = xs / count, ys / count
    return xtx - count * np.outer(mx, mx), xty - count * np.outer(mx, my), mx, my


def _drive(model: LNModel, blocks: Sequence[Block], w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    drives, targets = [], []
    for x, y in _chunks(model, blocks):
        drives.append(x @ w + b)
        targets.append(y)
    return np.concatenate(drives), np.concatenate(targets)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.maximum(np.sqrt((a * a).sum(0) * (b * b).sum(0)), 1e-12)


def _fit_nonlinearity(drive: np.ndarray, target: np.ndarray, iterations: int = 200) -> tuple[np.ndarray, ...]:
    """Per-cell `(gain, offset, scale)` of `scale * softplus(gain * drive + offset)`, Poisson ML."""
    g = torch.from_numpy(drive)
    y = torch.from_numpy(target)
    sd = g.std(0).clamp_min(1e-9)
    mean_rate = y.mean(0).clamp_min(1e-6)
    # Start near an exponential around the mean rate: softplus(x) ~ exp(x) for x << 0.
    log_gain = torch.log(1.0 / sd).clone().requires_grad_(True)
    offset = (-g.mean(0) / sd).clone().requires_grad_(True)
    log_scale = torch.log(mean_rate / F.softplus(torch.zeros(()))).clone().requires_grad_(True)
    params = [log_gain, offset, log_scale]
    optimiser = torch.optim.LBFGS(params, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        rate = torch.exp(log_scale) * F.softplus(torch.exp(log_gain) * g + offset) + 1e-9
        loss = (rate - y * torch.log(rate)).mean()
        loss.backward()
        return loss

    optimiser.step(closure)
    return (torch.exp(log_gain).detach().numpy(), offset.detach().numpy(), torch.exp(log_scale).detach().numpy())


def rf_windows(rf_maps: np.ndarray, resolution: int, sigmas: Sequence[float] = WINDOW_SIGMAS) -> np.ndarray:
    """Discs around each cell's RF centre on the LN's grid: `[len(sigmas), N, r, r]` bool.

    Args:
        rf_maps: `[N, H, W]` recorded receptive fields (the STA or contrast-energy maps).
        resolution: the LN's grid side `r` (the screen area-averaged to `r x r`).
    """
    maps = np.asarray(rf_maps, dtype=np.float64)
    _, h, w = maps.shape
    rows, cols = np.indices((resolution, resolution))
    out = np.zeros((len(sigmas), len(maps), resolution, resolution), bool)
    for n, rf in enumerate(maps):
        (y, x), sigma = rf_centre_and_size(rf)
        # Pixel centre -> grid coordinates (grid cell centres at (i + 0.5) * H / r - 0.5).
        gy, gx = (y + 0.5) * resolution / h - 0.5, (x + 0.5) * resolution / w - 0.5
        dist = np.hypot(rows - gy, cols - gx)
        for k, s in enumerate(sigmas):
            out[k, n] = dist <= max(s * sigma * resolution / max(h, w), MIN_WINDOW_CELLS)
    return out


def _ridge_filters(xtx: np.ndarray, xty: np.ndarray) -> np.ndarray:
    """Ridge filters `[d, K, N]` of every strength in `RIDGE_GRID` (one eigendecomposition)."""
    evals, evecs = np.linalg.eigh(xtx)
    evals = np.clip(evals, 0.0, None)
    projected = evecs.T @ xty  # [d, N]
    scale = float(evals.mean()) or 1.0
    return np.stack([evecs @ (projected / (evals + lam * scale)[:, None]) for lam in RIDGE_GRID], axis=1)


@torch.no_grad()
def fit_ln(model: LNModel, train: Sequence[Block], val: Sequence[Block],
           rf_maps: np.ndarray | None = None) -> dict[str, list]:
    """Fit `model` in place on blocks of frames `[t, H, W]` in [0, 1] and counts `[t, N]`.

    `rf_maps` (`[N, H, W]`, the recorded RFs) adds filters cropped to windows around each cell's
    RF to the choice (`rf_windows`). Returns what was chosen per cell (window, ridge strength,
    validation r of the drive), for the record.
    """
    if not train:
        raise InputError("the LN fit needs training blocks")
    xtx, xty, mx, my = _normal_equations(model, train)
    n, k = model.config.n_cells, len(RIDGE_GRID)
    candidates = [_ridge_filters(xtx, xty)]  # each [d, K, N]; first the whole screen
    names = ["screen"]
    if rf_maps is not None:
        if len(rf_maps) != n:
            raise InputError(f"the LN has {n} cells but {len(rf_maps)} receptive-field maps were given")
        r, lags = model.config.resolution, model.config.n_lags
        for sigmas, masks in zip(WINDOW_SIGMAS, rf_windows(rf_maps, r), strict=True):
            filters = np.zeros_like(candidates[0])
            for cell in range(n):
                # The filter's weights are ordered lag-major, then row, then column (lagged_inputs).
                idx = np.flatnonzero(np.tile(masks[cell].ravel(), lags))
                filters[idx, :, cell] = _ridge_filters(xtx[np.ix_(idx, idx)], xty[idx, cell:cell + 1])[:, :, 0]
            candidates.append(filters)
            names.append(f"{sigmas:g} RF sigmas")
    stacked = np.stack(candidates, axis=1)  # [d, W, K, N]
    check = val or train
    # Every candidate's filters at once, so the validation inputs are built in one pass.
    drive, target = _drive(model, check, stacked.reshape(len(stacked), -1), np.zeros(stacked[0].size))
    r = np.nan_to_num(_pearson(drive, np.tile(target, (1, stacked[0].size // n))), nan=-1.0)
    r = r.reshape(len(candidates) * k, n)
    # The first of equal r wins (the whole screen, the weakest ridge), as a loop over the grid
    # that replaces only on a strict gain.
    pick = np.argmax(r, axis=0)
    best_r = r[pick, np.arange(n)]
    best_w = stacked.reshape(len(stacked), -1, n)[:, pick, np.arange(n)]
    best_lam = np.asarray(RIDGE_GRID)[pick % k]
    bias = my - mx @ best_w
    drive, target = _drive(model, train, best_w, bias)
    gain, offset, out_scale = _fit_nonlinearity(drive, target)
    weight = (best_w * gain[None, :]).T.reshape(model.filters.weight.shape)
    model.filters.weight.copy_(torch.from_numpy(weight).to(model.filters.weight.dtype))
    model.filters.bias.copy_(torch.from_numpy(bias * gain + offset).to(model.filters.bias.dtype))
    model.scale.copy_(torch.from_numpy(out_scale).to(model.scale.dtype))
    return {"window": [names[i // k] for i in pick], "ridge": [float(v) for v in best_lam],
            "val_r": [float(v) for v in best_r]}

"""Training losses: the Vi-ST loss and a Poisson loss for the LN baseline.

Vi-ST loss (Wu et al. 2024; public `ViSTLoss`), predictions and targets `[B, T, N]`:

    L = 0.1    * sqrt(mean((y_hat - y)^2))                     RMSE
      + 0.5    * mean(relu(-y_hat))                            negative-rate penalty
      + 0.5e-5 * mean_windows SDTWdiv(y_hat_w, y_w), windows T//20 long, stride T//40
      + 0.5e-5 * mean_windows SDTWdiv(y_hat_w, y_w), windows T//10 long, stride T//20

with the Soft-DTW divergence at gamma = 0.1 and cells as the feature dimension.
Windows start at 0, stride, 2 * stride, ... while the window fits in T (the
public code's `range(0, T - w, w // 2)` also drops the last start when
`T - w` is a multiple of the stride; we keep it).

Scale invariance. The RMSE and the negative penalty are means over all
elements, so neither depends on batch size or on the number of cells N. The
DTW terms are averaged over windows and batch items. Their cost, summed over
cells in tslearn, would grow with N, so we use the per-cell mean squared
difference as the cost, `|y_hat_i - y_j|^2 / N`; equivalently both series are
scaled by `1 / sqrt(N)` before the divergence. Dividing the cost (rather than
the final DTW value) by N is what makes the term exactly invariant: soft-min
at fixed gamma is not homogeneous, `sdtw_gamma(k * D) = k * sdtw_(gamma/k)(D)`,
so scaling only the output would change the effective smoothing with N.
Duplicating every cell (or every batch item) therefore leaves every term
unchanged. Consequence: for the published N = 90, our DTW terms are 90 times
smaller than the public code's at the same weight; `dtw_weight` can be raised
if that term should matter (at 0.5e-5 it is a small regulariser in both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stimuli.errors import InputError
from vist_model.softdtw import soft_dtw_divergence

__all__ = ["LossTerms", "PoissonLoss", "ViSTLoss", "ViSTLossConfig", "sliding_windows"]


@dataclass(frozen=True)
class ViSTLossConfig:
    """Weights and windows of the Vi-ST loss (defaults are the published ones).

    Attributes:
        rmse_weight: weight of the RMSE.
        negative_weight: weight of mean(relu(-prediction)).
        dtw_weight: weight of each Soft-DTW divergence term.
        dtw_gamma: Soft-DTW smoothing.
        window_divisors: window length is `T // divisor` for each DTW term.
    """

    rmse_weight: float = 0.1
    negative_weight: float = 0.5
    dtw_weight: float = 0.5e-5
    dtw_gamma: float = 0.1
    window_divisors: tuple[int, ...] = (20, 10)

    def __post_init__(self) -> None:
        if not self.dtw_gamma > 0:
            raise InputError(f"dtw_gamma must be > 0, got {self.dtw_gamma}")
        if any(d < 1 for d in self.window_divisors):
            raise InputError(f"window_divisors must be >= 1, got {self.window_divisors}")

    def min_frames(self) -> int:
        """Shortest T for which every DTW window has at least 2 frames."""
        return 2 * max(self.window_divisors, default=1)


@dataclass(frozen=True)
class LossTerms:
    """The weighted terms of one loss evaluation (each a scalar tensor)."""

    total: Tensor
    rmse: Tensor
    negative: Tensor
    dtw: tuple[Tensor, ...]

    def to_floats(self) -> dict[str, float]:
        out = {"total": float(self.total), "rmse": float(self.rmse), "negative": float(self.negative)}
        for i, term in enumerate(self.dtw):
            out[f"dtw_{i}"] = float(term)
        return out


def sliding_windows(x: Tensor, length: int, stride: int) -> Tensor:
    """Overlapping windows along time, batch-major.

    Args:
        x: `[B, T, N]`.
        length: window length (<= T).
        stride: step between window starts.

    Returns:
        `[B * W, length, N]` with `W = (T - length) // stride + 1` windows per item.
    """
    if not 1 <= length <= x.shape[1] or stride < 1:
        raise InputError(f"bad window length {length} / stride {stride} for T={x.shape[1]}")
    b, _, n = x.shape
    windows = x.unfold(1, length, stride)  # [B, W, N, length]
    return windows.permute(0, 1, 3, 2).reshape(-1, length, n)


def _check_pair(prediction: Tensor, target: Tensor) -> None:
    if prediction.ndim != 3 or prediction.shape != target.shape:
        raise InputError(
            "prediction and target must both be [B, T, N], got "
            f"{tuple(prediction.shape)} and {tuple(target.shape)}"
        )


def _weighted_mean(x: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of `x` `[B, T, N]`, each element counted `weights` `[B, T, N]` times (None: once)."""
    if weights is None:
        return x.mean()
    if weights.shape != x.shape:
        raise InputError(f"loss weights must be shaped like the target {tuple(x.shape)}, got {tuple(weights.shape)}")
    weights = weights.to(x.dtype)
    return (x * weights).sum() / weights.sum()


class ViSTLoss(nn.Module):
    """The Vi-ST training loss. `forward(prediction [B, T, N], target [B, T, N]) -> scalar`.

    Optional `weights [B, T, N]` weight each element's squared error in the RMSE (fine-tuning
    stresses the cells and frames an experiment asked about); the other terms are unweighted.
    """

    def __init__(self, config: ViSTLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or ViSTLossConfig()

    def terms(self, prediction: Tensor, target: Tensor, weights: Tensor | None = None) -> LossTerms:
        """All weighted terms; `total` is their sum."""
        _check_pair(prediction, target)
        cfg = self.config
        t, n = prediction.shape[1], prediction.shape[2]
        if cfg.window_divisors and t < cfg.min_frames():
            raise InputError(
                f"the Soft-DTW windows need T >= {cfg.min_frames()} frames, got T={t}"
            )
        target = target.to(prediction.dtype)
        rmse = cfg.rmse_weight * torch.sqrt(_weighted_mean((prediction - target) ** 2, weights))
        negative = cfg.negative_weight * torch.relu(-prediction).mean()
        # Per-cell cost: scale both series by 1/sqrt(N) (see module docstring).
        scale = 1.0 / math.sqrt(n)
        dtw_terms = []
        for divisor in cfg.window_divisors:
            length = t // divisor
            stride = max(1, length // 2)
            pred_w = sliding_windows(prediction * scale, length, stride)
            targ_w = sliding_windows(target * scale, length, stride)
            div = soft_dtw_divergence(pred_w, targ_w, cfg.dtw_gamma)
            dtw_terms.append(cfg.dtw_weight * div.mean())
        total = rmse + negative
        for term in dtw_terms:
            total = total + term
        return LossTerms(total=total, rmse=rmse, negative=negative, dtw=tuple(dtw_terms))

    def forward(self, prediction: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        return self.terms(prediction, target, weights).total


class PoissonLoss(nn.Module):
    """Poisson negative log-likelihood of rates, up to the constant log(y!).

    `mean(y_hat - y * log(y_hat + eps))` over all elements, so its scale does not
    depend on batch size or number of cells. Predictions must be >= 0 rates
    (e.g. a softplus output); targets are counts or trial-averaged counts.

    `forward(prediction [B, T, N], target [B, T, N], weights [B, T, N] | None) -> scalar`.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if not eps > 0:
            raise InputError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def forward(self, prediction: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        _check_pair(prediction, target)
        target = target.to(prediction.dtype)
        return _weighted_mean(prediction - target * torch.log(prediction + self.eps), weights)

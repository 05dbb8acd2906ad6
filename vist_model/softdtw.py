"""Soft-DTW (Cuturi & Blondel, ICML 2017) and the Soft-DTW divergence, batched in torch.

The forward pass is the standard dynamic programme

    R[0, 0] = 0,  R[i, 0] = R[0, j] = +inf,
    R[i, j] = D[i-1, j-1] + softmin_gamma(R[i-1, j-1], R[i-1, j], R[i, j-1]),
    softmin_gamma(a) = -gamma * log(sum(exp(-a / gamma))),

and sdtw = R[n, m]. The backward pass is the expected-alignment recursion of
Cuturi & Blondel (Algorithm 2), which gives dsdtw/dD = E exactly; gradients to
the time series then flow through the cost matrix by autograd. Both recursions
sweep anti-diagonals (every cell on one anti-diagonal depends only on the two
before it), so a window of n x m frames costs n + m - 1 vectorised steps rather
than n * m scalar ones.

The divergence D(x, y) = sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2 (Blondel,
Mensch & Vert, AISTATS 2021) is what tslearn's
`SoftDTWLossPyTorch(gamma, normalize=True)` computes; it is 0 for x == y.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stimuli.errors import InputError

__all__ = [
    "pairwise_squared_euclidean",
    "soft_dtw",
    "soft_dtw_divergence",
    "soft_dtw_from_cost",
]


def pairwise_squared_euclidean(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean cost between every pair of time steps.

    Args:
        x: `[B, n, d]`.
        y: `[B, m, d]`.

    Returns:
        `[B, n, m]` with `cost[b, i, j] = sum_k (x[b, i, k] - y[b, j, k]) ** 2`.
    """
    # Expanded form: one matmul instead of a [B, n, m, d] intermediate (which
    # dominates run time and memory for 64-frame windows of 90 cells). Rounding
    # can leave tiny negatives where two steps coincide; a cost is never < 0.
    sq_x = x.pow(2).sum(dim=-1, keepdim=True)
    sq_y = y.pow(2).sum(dim=-1).unsqueeze(1)
    return (sq_x + sq_y - 2.0 * torch.bmm(x, y.transpose(1, 2))).clamp_min(0.0)


def _antidiagonal_indices(n: int, m: int, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """For k = 2 .. n + m, the (i, j) with 1 <= i <= n, 1 <= j <= m, i + j = k."""
    out = []
    for k in range(2, n + m + 1):
        i = torch.arange(max(1, k - m), min(n, k - 1) + 1, device=device)
        out.append((i, k - i))
    return out


def _forward_table(cost: Tensor, gamma: float) -> Tensor:
    """The padded accumulated-cost table R, `[B, n + 2, m + 2]` (row/column n+1, m+1 unused)."""
    b, n, m = cost.shape
    r = torch.full((b, n + 2, m + 2), float("inf"), dtype=cost.dtype, device=cost.device)
    r[:, 0, 0] = 0.0
    for i, j in _antidiagonal_indices(n, m, cost.device):
        prev = torch.stack((r[:, i - 1, j - 1], r[:, i - 1, j], r[:, i, j - 1]), dim=0)
        # At least one predecessor of every interior cell is finite, so the
        # logsumexp never sees an all -inf column.
        softmin = -gamma * torch.logsumexp(-prev / gamma, dim=0)
        r[:, i, j] = cost[:, i - 1, j - 1] + softmin
    return r


def _backward_alignment(cost: Tensor, r: Tensor, gamma: float) -> Tensor:
    """Expected alignment E = dR[n, m]/dD, `[B, n, m]` (Cuturi & Blondel, Algorithm 2)."""
    b, n, m = cost.shape
    d = torch.zeros((b, n + 2, m + 2), dtype=cost.dtype, device=cost.device)
    d[:, 1 : n + 1, 1 : m + 1] = cost
    r = r.clone()
    # -inf outside the table makes exp(...) = 0 for successors that do not exist.
    r[:, n + 1, :] = -float("inf")
    r[:, :, m + 1] = -float("inf")
    r[:, n + 1, m + 1] = r[:, n, m]
    e = torch.zeros_like(d)
    e[:, n + 1, m + 1] = 1.0
    for i, j in reversed(_antidiagonal_indices(n, m, cost.device)):
        here = r[:, i, j]
        a = torch.exp((r[:, i + 1, j] - here - d[:, i + 1, j]) / gamma)
        b_ = torch.exp((r[:, i, j + 1] - here - d[:, i, j + 1]) / gamma)
        c = torch.exp((r[:, i + 1, j + 1] - here - d[:, i + 1, j + 1]) / gamma)
        e[:, i, j] = e[:, i + 1, j] * a + e[:, i, j + 1] * b_ + e[:, i + 1, j + 1] * c
    return e[:, 1 : n + 1, 1 : m + 1]


class _SoftDTWFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost: Tensor, gamma: float) -> Tensor:  # type: ignore[override]
        with torch.no_grad():
            r = _forward_table(cost.detach(), gamma)
        ctx.gamma = gamma
        ctx.save_for_backward(cost, r)
        n, m = cost.shape[1:]
        return r[:, n, m].clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        cost, r = ctx.saved_tensors
        with torch.no_grad():
            e = _backward_alignment(cost.detach(), r, ctx.gamma)
        return grad_output.view(-1, 1, 1) * e, None


def soft_dtw_from_cost(cost: Tensor, gamma: float) -> Tensor:
    """Soft-DTW value of a batch of cost matrices.

    Args:
        cost: `[B, n, m]` pairwise cost (finite, any real values).
        gamma: smoothing, > 0 (smaller is closer to hard DTW).

    Returns:
        `[B]` soft-DTW values; differentiable w.r.t. `cost` (exact gradient).
    """
    if cost.ndim != 3:
        raise InputError(f"cost must be [B, n, m], got shape {tuple(cost.shape)}")
    if cost.shape[1] == 0 or cost.shape[2] == 0:
        raise InputError(f"cost has an empty time axis: shape {tuple(cost.shape)}")
    if not gamma > 0:
        raise InputError(f"gamma must be > 0, got {gamma}")
    return _SoftDTWFunction.apply(cost, float(gamma))


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.ndim != 3 or y.ndim != 3:
        raise InputError(
            f"x and y must be [B, T, d], got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise InputError(
            f"x and y must share batch and feature sizes, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def soft_dtw(x: Tensor, y: Tensor, gamma: float) -> Tensor:
    """Soft-DTW between two batches of multivariate series, squared Euclidean cost.

    Args:
        x: `[B, n, d]`.
        y: `[B, m, d]`.
        gamma: smoothing, > 0.

    Returns:
        `[B]`; equals `tslearn.metrics.soft_dtw(x[b], y[b], gamma)`.
    """
    _check_pair(x, y)
    return soft_dtw_from_cost(pairwise_squared_euclidean(x, y), gamma)


def soft_dtw_divergence(x: Tensor, y: Tensor, gamma: float) -> Tensor:
    """Soft-DTW divergence `sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2`.

    Args:
        x: `[B, n, d]`.
        y: `[B, m, d]`.
        gamma: smoothing, > 0.

    Returns:
        `[B]`, >= 0 and exactly 0 where x == y; equals
        `tslearn.metrics.SoftDTWLossPyTorch(gamma, normalize=True)(x, y)`.
    """
    _check_pair(x, y)
    # One batched call for the three terms: the anti-diagonal sweep costs the
    # same for 3B series as for B when n == m.
    if x.shape[1] == y.shape[1]:
        costs = torch.cat(
            (
                pairwise_squared_euclidean(x, y),
                pairwise_squared_euclidean(x, x),
                pairwise_squared_euclidean(y, y),
            ),
            dim=0,
        )
        xy, xx, yy = soft_dtw_from_cost(costs, gamma).chunk(3, dim=0)
    else:
        xy = soft_dtw(x, y, gamma)
        xx = soft_dtw(x, x, gamma)
        yy = soft_dtw(y, y, gamma)
    return xy - 0.5 * (xx + yy)

"""Soft-DTW and its divergence against tslearn (values and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tslearn.metrics import SoftDTWLossPyTorch
from tslearn.metrics import soft_dtw as tslearn_soft_dtw

from vist_model.softdtw import soft_dtw, soft_dtw_divergence, soft_dtw_from_cost


@pytest.mark.parametrize(("n", "m", "d", "gamma"), [(6, 6, 3, 0.1), (7, 11, 5, 1.0), (1, 4, 2, 0.5)])
def test_soft_dtw_matches_tslearn_values(n: int, m: int, d: int, gamma: float) -> None:
    gen = torch.Generator().manual_seed(n * 100 + m)
    x = torch.randn(4, n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(4, m, d, generator=gen, dtype=torch.float64)
    ours = soft_dtw(x, y, gamma).numpy()
    ref = np.array([tslearn_soft_dtw(x[b].numpy(), y[b].numpy(), gamma=gamma) for b in range(4)])
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("length", "d", "gamma"), [(6, 90, 0.1), (12, 8, 0.1), (9, 4, 1.0)])
def test_divergence_matches_tslearn_loss_values_and_gradients(length: int, d: int, gamma: float) -> None:
    gen = torch.Generator().manual_seed(length * 7 + d)
    x = torch.randn(5, length, d, generator=gen, dtype=torch.float64)
    y = torch.randn(5, length, d, generator=gen, dtype=torch.float64)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    ours = soft_dtw_divergence(xa, ya, gamma)
    (ours * torch.arange(1, 6)).sum().backward()

    xb, yb = x.clone().requires_grad_(), y.clone().requires_grad_()
    ref = SoftDTWLossPyTorch(gamma=gamma, normalize=True)(xb, yb)
    (ref * torch.arange(1, 6)).sum().backward()
    # tslearn round-trips its DP table through float32: with gamma = 0.1 and
    # costs in the hundreds, exp((R' - R - D) / gamma) carries ~1e-3 relative
    # error there, hence the tolerance (our float64 gradient is checked exactly
    # in test_divergence_gradient_matches_finite_differences).
    scale = ref.abs().max().item()
    np.testing.assert_allclose(ours.detach().numpy(), ref.detach().numpy(), atol=1e-5 * scale)
    gscale = xb.grad.abs().max().item()
    np.testing.assert_allclose(xa.grad.numpy(), xb.grad.numpy(), atol=2e-3 * gscale)
    np.testing.assert_allclose(ya.grad.numpy(), yb.grad.numpy(), atol=2e-3 * gscale)
    assert not np.allclose(xa.grad.numpy(), 0.0)


def test_divergence_gradient_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 90, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 6, 90, generator=gen, dtype=torch.float64)
    v = torch.randn(3, 6, 90, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(soft_dtw_divergence(x, y, 0.1).sum(), x)
    eps = 1e-6
    with torch.no_grad():
        plus = soft_dtw_divergence(x + eps * v, y, 0.1).sum()
        minus = soft_dtw_divergence(x - eps * v, y, 0.1).sum()
    numeric = ((plus - minus) / (2 * eps)).item()
    assert numeric == pytest.approx((grad * v).sum().item(), rel=1e-6)


def test_divergence_is_zero_on_identical_series_and_positive_otherwise() -> None:
    x = torch.randn(3, 8, 4, dtype=torch.float64)
    assert torch.allclose(soft_dtw_divergence(x, x.clone(), 0.1), torch.zeros(3, dtype=torch.float64))
    assert (soft_dtw_divergence(x, x + 0.3, 0.1) > 0).all()


def test_cost_gradient_passes_gradcheck() -> None:
    cost = torch.rand(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: soft_dtw_from_cost(c, 0.3), (cost,))


def test_small_gamma_approaches_hard_dtw() -> None:
    x = torch.tensor([[[0.0], [1.0], [2.0]]], dtype=torch.float64)
    y = torch.tensor([[[0.0], [0.0], [1.0], [2.0]]], dtype=torch.float64)
    # The hard DTW path aligns both zeros to 0 and costs nothing.
    assert abs(soft_dtw(x, y, 1e-4).item()) < 1e-3


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="feature"):
        soft_dtw(torch.zeros(2, 4, 3), torch.zeros(2, 4, 2), 0.1)
    with pytest.raises(ValueError, match="gamma"):
        soft_dtw_from_cost(torch.zeros(1, 3, 3), 0.0)

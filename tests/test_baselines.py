"""LN and McIntosh CNN baselines: shapes, causality, positivity, learnability."""

from __future__ import annotations

import pytest
import torch

from vist_model.baselines import CNNConfig, LNConfig, LNModel, McIntoshCNN
from vist_model.loss import PoissonLoss


def _models(n_cells: int = 4) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    ln = LNModel(LNConfig(n_cells, resolution=8, n_lags=6))
    # Random LN init is tiny on purpose; make the step visible in the output.
    torch.nn.init.normal_(ln.filters.weight, 0.0, 0.1)
    cnn = McIntoshCNN(CNNConfig(n_cells, resolution=16, n_lags=8, kernels=(5, 3)))
    return [ln, cnn]


@pytest.mark.parametrize("index", [0, 1])
def test_shapes_and_positive_rates(index: int) -> None:
    model = _models()[index]
    rates = model(torch.rand(2, 12, 64, 64))
    assert rates.shape == (2, 12, 4)
    assert (rates > 0).all()


@pytest.mark.parametrize("index", [0, 1])
def test_step_input_is_causal(index: int) -> None:
    model = _models()[index]
    t, step = 20, 9
    grey = torch.full((1, t, 64, 64), 0.5)
    stepped = grey.clone()
    stepped[:, step:, :, :32] = 1.0  # left half brightens at the step
    with torch.no_grad():
        base, moved = model(grey), model(stepped)
    torch.testing.assert_close(moved[:, :step], base[:, :step], rtol=0, atol=0)
    assert (moved[:, step:] - base[:, step:]).abs().amax(dim=-1).min() > 1e-5


@pytest.mark.parametrize("index", [0, 1])
def test_history_is_limited_to_n_lags(index: int) -> None:
    model = _models()[index]
    lags = model.receptive_field
    frames = torch.rand(1, lags + 5, 32, 32, requires_grad=True)
    model(frames)[0, -1].sum().backward()
    per_frame = frames.grad.abs().sum(dim=(0, 2, 3))
    assert per_frame[: -lags].sum() == 0 and per_frame[-lags:].min() > 0


def test_default_sizes_for_a_64_pixel_screen() -> None:
    ln = LNModel(LNConfig(90))
    cnn = McIntoshCNN(CNNConfig(90))
    assert sum(p.numel() for p in ln.parameters()) == 90 * 20 * 16 * 16 + 90
    assert CNNConfig(90).feature_side == 32 - 8 - 6
    assert cnn(torch.rand(1, 3, 64, 64)).shape == (1, 3, 90)
    with pytest.raises(ValueError, match="too large"):
        CNNConfig(3, resolution=10)


def test_ln_learns_a_linear_filter_with_poisson_loss() -> None:
    torch.manual_seed(1)
    teacher = LNModel(LNConfig(2, resolution=4, n_lags=3))
    torch.nn.init.normal_(teacher.filters.weight, 0.0, 1.0)
    frames = torch.rand(4, 60, 8, 8)
    with torch.no_grad():
        target = teacher(frames)
    student = LNModel(LNConfig(2, resolution=4, n_lags=3))
    optimiser = torch.optim.Adam(student.parameters(), lr=0.05)
    loss_fn = PoissonLoss()
    first = loss_fn(student(frames), target).item()
    for _ in range(150):
        optimiser.zero_grad()
        loss = loss_fn(student(frames), target)
        loss.backward()
        optimiser.step()
    assert loss.item() < first
    corr = torch.corrcoef(torch.stack([student(frames).detach().flatten(), target.flatten()]))[0, 1]
    assert corr > 0.95


def test_bad_frames_are_rejected() -> None:
    model = _models()[0]
    with pytest.raises(ValueError, match="B, T, H, W"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))

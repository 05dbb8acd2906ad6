"""Gradient design through the tiny Vi-ST twin: seeds reproduce, a short run raises the objective."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from insilico.design.envelope import rf_envelope
from insilico.design.gradient import optimize_gradient
from insilico.design.objectives import Window, increase
from insilico.design.postprocess import ContrastBudget
from insilico.design.response import TwinResponse, lead_in_for
from insilico.design.settings import GradientConfig
from vist_model.twin import Twin

T = 8
WINDOW = Window(2)


@pytest.fixture(scope="module")
def twin(tiny_twin_dir: Path) -> Twin:
    return Twin.load(tiny_twin_dir)


@pytest.fixture(scope="module")
def response(twin: Twin) -> TwinResponse:
    # No grey lead-in: the network then runs on the clip's frames only, which keeps this fast.
    return TwinResponse(twin, lead_in=0)


def _run(response: TwinResponse, seeds: tuple[int, ...], steps: int) -> object:
    h, w = response.metadata.frame_shape
    config = GradientConfig(steps=steps, lr=0.2, jitter_px=1, time_shift=1)
    return optimize_gradient(response, increase(0, WINDOW), (T, h, w), ContrastBudget(0.2), seeds, config)


@pytest.mark.slow
def test_same_seed_gives_the_same_stimulus(response: TwinResponse) -> None:
    a = _run(response, (5,), steps=1)
    b = _run(response, (5,), steps=1)
    c = _run(response, (6,), steps=1)
    assert np.array_equal(a.stimuli, b.stimuli)
    assert not np.array_equal(a.stimuli, c.stimuli)


@pytest.mark.slow
def test_a_short_run_raises_the_objective_within_the_budget(response: TwinResponse, tmp_path: Path) -> None:
    run = _run(response, (0, 1), steps=3)
    curves = run.curves()
    assert curves["objective"].shape == (4, 2)
    # Step 0's objective is the grey start's, below the budget; from step 1 on, clips are at it.
    assert (curves["objective"][-1] > curves["objective"][1]).all()
    np.testing.assert_allclose(curves["contrast"][:-1], 0.2, atol=1e-4)
    assert (curves["grad_norm"][:-1] > 0).all()
    assert run.stimuli.shape == (2, T, *response.metadata.frame_shape)
    np.testing.assert_allclose(run.stimuli.mean(axis=(1, 2, 3)), 0.5, atol=1e-4)
    assert run.plot(tmp_path / "steps.png").stat().st_size > 1000


def test_grey_lead_in_makes_window_rates_exact(twin: Twin) -> None:
    # With the lead-in the window rates equal those of the full receptive field of grey.
    h, w = twin.metadata.frame_shape
    clip = torch.rand(1, T, h, w, generator=torch.Generator().manual_seed(0))
    full = TwinResponse(twin).rates(clip)
    short = TwinResponse(twin, lead_in=lead_in_for(twin, T - 2)).rates(clip)
    np.testing.assert_allclose(short[:, -2:], full[:, -2:], rtol=1e-4, atol=1e-5)


def test_the_cached_grey_screen_equals_grey_frames_played_first(twin: Twin) -> None:
    h, w = twin.metadata.frame_shape
    lead = twin.receptive_field - 1
    clip = torch.rand(2, T, h, w, generator=torch.Generator().manual_seed(2), requires_grad=True)
    streamed = TwinResponse(twin)(clip)
    with torch.no_grad():
        twin.network.eval()
        grey = torch.full((2, lead, h, w), 0.5)
        played = twin.network(twin.backbone(torch.cat((grey, clip.detach()), dim=1)))[:, lead:]
    np.testing.assert_allclose(streamed.detach().numpy(), played.numpy(), rtol=1e-4, atol=1e-5)
    streamed[:, -1, 0].sum().backward()
    assert clip.grad is not None and clip.grad.abs().sum() > 0
    assert all(p.grad is None for p in twin.network.parameters())  # input gradients only


def test_an_ensemble_averages_its_twins(twin: Twin) -> None:
    h, w = twin.metadata.frame_shape
    clip = torch.rand(1, 4, h, w, generator=torch.Generator().manual_seed(1))
    one = TwinResponse(twin, lead_in=0).rates(clip)
    pair = TwinResponse([twin, twin], lead_in=0).rates(clip)
    np.testing.assert_allclose(pair, one, rtol=1e-5, atol=1e-6)


def test_an_envelope_keeps_the_design_inside_the_receptive_field(response: TwinResponse) -> None:
    h, w = response.metadata.frame_shape
    rows, cols = np.indices((h, w))
    rf = np.exp(-((rows - h / 3) ** 2 + (cols - w / 3) ** 2) / (2 * 1.5**2))
    envelope = rf_envelope(rf, 1.5)
    config = GradientConfig(steps=2, lr=0.2, jitter_px=0, time_shift=0)
    run = optimize_gradient(response, increase(0, WINDOW), (T, h, w), ContrastBudget(0.2), (0,), config,
                            envelope=envelope)
    clip = run.stimuli[0]
    # Outside the envelope the screen is one uniform level (it balances the clip's mean grey).
    outside = clip[:, envelope == 0]
    assert np.ptp(outside) < 0.01
    inside = np.abs(clip[:, envelope > 0.5] - outside.mean())
    assert inside.max() > 0.3
    start = run.history[0]
    assert start.contrast[0] <= 0.2 + 1e-6
    with pytest.raises(ValueError, match="envelope"):
        optimize_gradient(response, increase(0, WINDOW), (T, h, w), ContrastBudget(0.2), (0,), config,
                          envelope=envelope[:-1])


def test_a_run_can_refine_a_given_clip(response: TwinResponse) -> None:
    h, w = response.metadata.frame_shape
    budget = ContrastBudget(0.2)
    start = budget(torch.rand(1, T, h, w, generator=torch.Generator().manual_seed(3)))[0].numpy()
    still = GradientConfig(steps=0)
    # No step: the first member is the given clip itself, the next ones lie around it.
    run = optimize_gradient(response, increase(0, WINDOW), (T, h, w), budget, (0, 1), still, start=start)
    np.testing.assert_allclose(run.stimuli[0], start, atol=1e-6)
    spread = np.abs(run.stimuli[1] - start)
    assert 0 < spread.mean() < 0.05
    # A step moves it, towards a higher objective than where it started.
    moved = optimize_gradient(response, increase(0, WINDOW), (T, h, w), budget, (0,),
                              GradientConfig(steps=2, lr=0.2, jitter_px=0, time_shift=0), start=start)
    assert not np.allclose(moved.stimuli[0], start)
    assert moved.objective[0] > run.objective[0]
    with pytest.raises(ValueError, match="start clip"):
        optimize_gradient(response, increase(0, WINDOW), (T, h, w), budget, (0,), still, start=start[:-1])


# --- the optimiser on a toy response, in milliseconds (no twin) ----------------------------------
TOY_SHAPE = (6, 8, 8)


def _toy_response(frames: torch.Tensor) -> torch.Tensor:
    """Rates `[B, T, 1]`: a fixed centre-minus-surround weighting of each frame (a linear toy cell)."""
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    r2 = (yy - 3.5) ** 2 + (xx - 3.5) ** 2
    weights = torch.exp(-r2 / 2.0) - 0.5 * torch.exp(-r2 / 8.0)
    return (frames * weights).sum(dim=(2, 3))[..., None]


def _toy_run(seeds: tuple[int, ...], steps: int = 6) -> object:
    config = GradientConfig(steps=steps, lr=0.3, jitter_px=1, time_shift=1, blur_sigma=(1.0, 0.5))
    return optimize_gradient(_toy_response, increase(0, WINDOW), TOY_SHAPE, ContrastBudget(0.2), seeds, config)


def test_toy_ascent_raises_the_objective_within_the_budget() -> None:
    run = _toy_run((0, 1))
    objective = run.curves()["objective"]
    assert objective.shape == (7, 2) and (objective[-1] > objective[0] + 0.1).all()
    # Every step ends on the budget: mean grey, RMS contrast 0.2, pixels in [0, 1].
    np.testing.assert_allclose(run.curves()["contrast"][1:], 0.2, atol=1e-4)
    np.testing.assert_allclose(run.stimuli.mean(axis=(1, 2, 3)), 0.5, atol=1e-4)
    assert run.stimuli.min() >= 0.0 and run.stimuli.max() <= 1.0


def test_toy_ascent_same_seed_same_clip() -> None:
    a, b, c = _toy_run((5,)), _toy_run((5,)), _toy_run((6,))
    assert np.array_equal(a.stimuli, b.stimuli) and np.array_equal(a.objective, b.objective)
    assert not np.array_equal(a.stimuli, c.stimuli)
    # A batch member is its seed's clip whatever else is in the batch.
    np.testing.assert_allclose(_toy_run((6, 5)).stimuli[1], a.stimuli[0], atol=1e-6)


def _surround_cell(frames: torch.Tensor) -> torch.Tensor:
    """Rates `[B, T, 1]`: a small centre and a surround five times wider (a linear toy cell)."""
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    r2 = (yy - 11.5) ** 2 + (xx - 11.5) ** 2
    weights = torch.exp(-r2 / (2 * 1.5**2)) - 0.04 * torch.exp(-r2 / (2 * 7.5**2))
    return ((frames - 0.5) * weights).sum(dim=(2, 3))[..., None]


def test_the_default_envelope_leaves_a_linear_cell_its_surround() -> None:
    """At a whole-clip budget a linear cell's optimum is its filter's sign at full contrast over the
    filter's whole extent, surround included: the default envelope must not cut it off."""
    shape = (4, 24, 24)
    yy, xx = np.indices(shape[1:])
    rf = np.exp(-((yy - 11.5) ** 2 + (xx - 11.5) ** 2) / (2 * 1.5**2))
    surround = np.hypot(yy - 11.5, xx - 11.5) > 3 * 1.5
    reached, in_surround = {}, {}
    for width in (1.0, GradientConfig().rf_envelope):
        env = rf_envelope(rf, width)
        config = GradientConfig(steps=12, jitter_px=0, time_shift=0, rf_envelope=width)
        run = optimize_gradient(_surround_cell, increase(0, WINDOW), shape, ContrastBudget(0.2, support=env > 0),
                                (0,), config, envelope=env)
        reached[width] = float(run.objective[0])
        energy = ((run.stimuli[0] - 0.5) ** 2).sum(axis=0)
        in_surround[width] = float(energy[surround].sum() / energy.sum())
    assert in_surround[1.0] == 0.0 and in_surround[GradientConfig().rf_envelope] > 0.4
    assert reached[GradientConfig().rf_envelope] > 1.1 * reached[1.0]

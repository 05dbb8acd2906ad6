"""Gradient design through the tiny Vi-ST twin: seeds reproduce, a short run raises the objective."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from insilico.design.gradient import GradientConfig, optimise_gradient
from insilico.design.objectives import Window, increase
from insilico.design.postprocess import ContrastBudget
from insilico.design.response import TwinResponse, lead_in_for
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
    return optimise_gradient(response, increase(0, WINDOW), (T, h, w), ContrastBudget(0.2), seeds, config)


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
    assert (curves["objective"][-1] > curves["objective"][0]).all()
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


def test_an_ensemble_averages_its_twins(twin: Twin) -> None:
    h, w = twin.metadata.frame_shape
    clip = torch.rand(1, 4, h, w, generator=torch.Generator().manual_seed(1))
    one = TwinResponse(twin, lead_in=0).rates(clip)
    pair = TwinResponse([twin, twin], lead_in=0).rates(clip)
    np.testing.assert_allclose(pair, one, rtol=1e-5, atol=1e-6)

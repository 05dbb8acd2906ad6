"""The attribution prior, the envelope for every start, the per-frame budget, the auto start, CMA-ES's x0.

A toy linear twin: the LN model (`vist_model.baselines.LNModel`) with one known filter, a
Gaussian spot at `SPOT` followed in time by `LAG_PROFILE`, so where and when the cell looks is
known exactly. Everything runs on the tiny recording's 32 x 32 screen in seconds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from scipy.ndimage import gaussian_filter

from insilico.design.envelope import rf_envelope
from insilico.design.gradient import optimize_gradient
from insilico.design.objectives import Window, increase
from insilico.design.parametric import (
    Screen,
    fit_parametric,
    render,
    search_parametric,
    storage_for,
)
from insilico.design.postprocess import ContrastBudget, frame_contrast
from insilico.design.prior import attribution_prior, attribution_start
from insilico.design.response import TwinResponse
from insilico.design.settings import GradientConfig, design_settings
from stimuli.recording import open_recording
from stimuli.recording.rf_geometry import rf_centre_and_size
from vist_model.baselines import LNConfig, LNModel
from vist_model.twin import Twin

H = W = 32
T = 12
N_LAGS = 20  # as the LN twin of a 32-px screen (`vist_model.twin.baseline_config`)
WINDOW = Window(2)
SPOT = (9.0, 22.0)  # (row, col) on the 32-px screen, away from the centre
LAG_PROFILE = np.array([0.0, 0.3, 1.0, 0.6, -0.2], dtype=np.float32)  # lag 0 = the current frame


def _filter(resolution: int, n_lags: int) -> np.ndarray:
    """`[n_lags, r, r]` (oldest lag first, as `LNModel` holds it): the spot times the lag profile."""
    scale = H / resolution
    rows, cols = np.indices((resolution, resolution))
    cy, cx = (SPOT[0] + 0.5) / scale - 0.5, (SPOT[1] + 0.5) / scale - 0.5  # area-pooled coordinates
    space = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * 1.2**2))
    lags = np.zeros(n_lags, dtype=np.float32)
    lags[-len(LAG_PROFILE):] = LAG_PROFILE[::-1]
    return (lags[:, None, None] * space[None]).astype(np.float32)


def _toy_ln(n_cells: int) -> LNModel:
    model = LNModel(LNConfig(n_cells, resolution=16, n_lags=N_LAGS))
    with torch.no_grad():
        model.filters.weight.zero_()
        model.filters.weight[0, 0] = torch.from_numpy(3.0 * _filter(16, N_LAGS))
        model.filters.bias.fill_(-1.0)
    return model.eval()


def _smooth_clips(k: int, seed: int = 0) -> np.ndarray:
    """`[k, T, H, W]` smooth random clips around grey (stand-ins for natural clips)."""
    rng = np.random.default_rng(seed)
    x = np.stack([gaussian_filter(rng.standard_normal((T, H, W)), (0.5, 2.0, 2.0)) for _ in range(k)])
    return np.clip(0.5 + 0.2 * x / x.std(), 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("method", ["saliency", "ig"])
def test_the_attribution_start_of_a_linear_cell_points_where_its_filter_is(method: str) -> None:
    model = _toy_ln(1)
    objective = increase(0, WINDOW)
    prior = attribution_prior(model, objective, _smooth_clips(6), method=method, ig_steps=8)
    (cy, cx), _ = rf_centre_and_size(prior.spatial)
    assert abs(cy - SPOT[0]) < 1.5 and abs(cx - SPOT[1]) < 1.5, (cy, cx)
    # When: the window's middle frame is T - 2 (first of the 2-frame window, the closest to
    # the second's lags); the filter's peak lag 2 lands 2 frames before the window.
    assert int(np.argmax(prior.temporal)) in (T - 2 - 2, T - 1 - 2)
    if method == "ig":
        assert prior.completeness_gap is not None and prior.completeness_gap < 0.05  # Captum's completeness
    start = attribution_start(prior, model, objective, ContrastBudget(0.2))
    # The start drives the cell: the filter's own sign, well above grey and a random clip.
    with torch.no_grad():
        rates = model(torch.from_numpy(np.stack([start, np.full_like(start, 0.5), _smooth_clips(1, 9)[0]])))
    value = objective(rates).numpy()
    assert value[0] > 2 * value[1] and value[0] > value[2]
    # And the direction is the filter: at its peak lag (2 before the window's last frame) the spot.
    spot = gaussian_filter(np.kron(_filter(16, N_LAGS)[-3], np.ones((2, 2))), 1.0).ravel()
    # (IG weights the gradient by each clip's contrast, a little less clean than the gradient itself.)
    assert np.corrcoef(spot, prior.direction[T - 1 - 2].ravel())[0, 1] > (0.95 if method == "saliency" else 0.85)


def _envelope() -> np.ndarray:
    rf = np.zeros((H, W))
    rf[int(SPOT[0]), int(SPOT[1])] = 1.0
    return rf_envelope(gaussian_filter(rf, 2.0), 1.0)


@pytest.mark.parametrize("start", ["given", "natural", "grey"])
def test_the_envelope_holds_for_every_start(start: str) -> None:
    """No pixel outside the envelope leaves grey, whatever the start (the STA start used to keep
    its whole-screen contrast to the last frame)."""
    model = _toy_ln(1)
    env = _envelope()
    budget = ContrastBudget(0.2, support=env > 0)
    full_screen = _smooth_clips(1, 3)[0]  # a start with contrast everywhere
    starts = {"given": full_screen, "natural": full_screen, "grey": None}[start]
    anchors = [full_screen] if start == "natural" else None
    run = optimize_gradient(model, increase(0, WINDOW), (T, H, W), budget, (0,), GradientConfig(steps=3),
                            envelope=env, start=starts, anchors=anchors, max_distance=0.2)
    outside = run.stimuli[0][:, env == 0]
    assert np.abs(outside - 0.5).max() < 1e-6
    assert np.abs(run.stimuli[0] - 0.5).max() > 0.1  # the design is not grey inside


def test_the_per_frame_budget_holds() -> None:
    rng = np.random.default_rng(1)
    clip = np.full((T, H, W), 0.5)
    clip[-3:] += 0.3 * rng.standard_normal((3, H, W))  # all its contrast in the last frames
    whole = ContrastBudget(0.2).apply(clip)
    assert frame_contrast(whole).max() > 0.3  # a whole-clip budget alone piles contrast into few frames
    capped = ContrastBudget(0.2, frame_rms=0.15).apply(clip)
    assert frame_contrast(capped).max() <= 0.15 + 1e-9
    assert capped.std() <= 0.2 + 1e-6 and capped.min() >= 0.0 and capped.max() <= 1.0
    # Through a gradient design too, every step ends inside the cap.
    run = optimize_gradient(_toy_ln(1), increase(0, WINDOW), (T, H, W), ContrastBudget(0.2, frame_rms=0.12), (0,),
                            GradientConfig(steps=3))
    assert frame_contrast(run.stimuli[0]).max() <= 0.12 + 1e-6


@pytest.fixture(scope="module")
def toy_twin(tiny_recording: Path) -> Twin:
    """An LN twin of the tiny recording whose cell 0 has the known filter (no training)."""
    from vist_model.fit_twin import TwinSpec, new_twin
    from vist_model.provenance import data_record

    with open_recording(tiny_recording) as rec:
        n, rf = rec.n_cells, rec.rf
        twin = new_twin(rec, TwinSpec(kind="ln"), rf, "test")
    model = _toy_ln(n)
    twin.network.load_state_dict(model.state_dict())
    twin.metadata = replace(twin.metadata, training={**data_record(tiny_recording), "train_segments": ["mov1"]})
    return twin


def test_auto_start_is_chosen_per_cell_and_recorded(toy_twin: Twin, tmp_path: Path) -> None:
    from insilico.design.run import optimize_cells

    cell = toy_twin.metadata.cell_ids[0]
    settings = design_settings(n_frames=T, window_frames=2, seeds=1, steps=2, comparison_trials=2,
                               natural_top_k=3, cmaes_trials=0, parametric_fit_trials=4, envelope_source="attribution",
                               frame_rms="training")
    (result,) = optimize_cells([toy_twin], [cell], tmp_path, settings)
    summary = json.loads((tmp_path / f"cell{cell}.json").read_text())
    record = summary["start"]
    assert record["setting"] == "auto" and record["chosen"] in record["objective_after_steps"]
    # The recording has white noise: every start is a candidate; the kept one is the best after the steps.
    assert set(record["objective_after_steps"]) == {"sta", "attribution", "natural", "grey"}
    assert record["objective_after_steps"][record["chosen"]] == max(record["objective_after_steps"].values())
    assert summary["rf_envelope"]["source"] == "attribution map" and summary["rf_envelope"]["used"]
    centre = summary["attribution_prior"]["centre_yx"]
    assert abs(centre[0] - SPOT[0]) < 1.5 and abs(centre[1] - SPOT[1]) < 1.5
    # Per-frame contrast of the design and its controls, and the per-frame ceiling over all of them.
    cap = summary["budget"]["frame_rms"]
    for name in ("design", "natural", "parametric"):
        per_frame = summary["frame_contrast"][name]
        assert len(per_frame) == T and max(per_frame) <= cap + 2 / 255


def test_cmaes_starts_from_the_gradient_designs_parametric_fit(toy_twin: Twin, tmp_path: Path) -> None:
    screen = Screen(T, H, W, toy_twin.metadata.frame_rate)
    truth = {"center_y": SPOT[0], "center_x": SPOT[1], "radius_px": 3.0, "polarity": 1, "onset_frame": 4,
             "duration_frames": 6}
    target = render("spot", {"center_yx": SPOT, **{k: v for k, v in truth.items() if not k.startswith("center")}},
                    screen)
    fit = fit_parametric(target, screen, n_trials=24, names=("spot",))
    assert fit.family == "spot" and fit.correlation > 0.5
    (cy, cx), radius = (fit.params["center_y"], fit.params["center_x"]), fit.params["radius_px"]
    assert abs(cy - SPOT[0]) < 1.5 and abs(cx - SPOT[1]) < 1.5 and 1.5 < radius < 6
    storage = storage_for(None, tmp_path / "j.journal")
    result = search_parametric(TwinResponse(toy_twin), increase(0, WINDOW), ContrastBudget(0.2), screen, "x0",
                               storage, n_trials=2, cmaes_trials=3, x0=fit)
    assert result.cmaes_start["from"] == "the gradient design's parametric fit"
    assert result.cmaes_start["params"] == fit.params and result.cmaes_start["family"] == "spot"
    cma = optuna.load_study(study_name="x0-cmaes-spot", storage=storage)
    assert cma.sampler is not None and cma.trials[0].params == pytest.approx(fit.params)  # the fit, scored
    tpe = optuna.load_study(study_name="x0-tpe", storage=storage)
    assert tpe.trials[0].params == pytest.approx({"family": "spot", **fit.params})


def test_a_flat_map_does_not_locate_a_cell() -> None:
    """A twin trained without white noise and without /cells/rf holds flat maps: no peak
    (it read as infinitely clear before, and the envelope went to the screen's corner)."""
    from insilico.design.envelope import rf_peak_snr
    from insilico.design.run import design_envelope

    assert rf_peak_snr(np.ones((H, W))) == 0.0
    envelope, record = design_envelope(np.ones((H, W), dtype=np.float32), 1.0)
    assert envelope is None and not record["rf_locates_cell"]

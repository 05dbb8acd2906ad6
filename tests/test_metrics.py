"""Metrics against hand-computed cases and scipy oracles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import pearsonr

from vist_model.metrics import (
    SD_KL_MISSING,
    evaluate,
    explainable_variance,
    feve,
    noise_ceiling,
    noise_variance,
    pearson_per_cell,
    sd_kl,
    spike_durations,
)


def _bumps(t: int, centres: list[int], width: float) -> np.ndarray:
    """Gaussian bumps cut to 0 below 1e-3, like rate traces that go silent between events."""
    x = np.arange(t)
    trace = sum(np.exp(-0.5 * ((x - c) / width) ** 2) for c in centres)
    return np.where(trace > 1e-3, trace, 0.0)


def test_pearson_matches_scipy_and_handles_constants() -> None:
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    pred[:, 1] = target[:, 1] * 2.0 + 3.0  # affine -> 1
    pred[:, 2] = 7.0  # constant -> 0 by convention
    cc = pearson_per_cell(pred, target)
    assert cc[0] == pytest.approx(pearsonr(pred[:, 0], target[:, 0]).statistic)
    assert cc[3] == pytest.approx(pearsonr(pred[:, 3], target[:, 3]).statistic)
    assert cc[1] == pytest.approx(1.0) and cc[2] == 0.0


def test_noise_free_perfect_prediction_scores_one() -> None:
    rng = np.random.default_rng(1)
    signal = rng.random((40, 3))
    responses = np.repeat(signal[None], 4, axis=0)
    result = evaluate(signal, responses)
    np.testing.assert_allclose(result.cc, 1.0)
    np.testing.assert_allclose(result.feve, 1.0)
    np.testing.assert_allclose(result.noise_ceiling, 1.0)
    # A constant offset keeps CC at 1 but costs FEVE exactly offset^2 / var.
    shifted = evaluate(signal + 0.2, responses)
    np.testing.assert_allclose(shifted.cc, 1.0)
    np.testing.assert_allclose(shifted.feve, 1.0 - 0.04 / signal.var(axis=0))


def test_feve_by_hand_on_two_repeats() -> None:
    responses = np.array([[[1.0], [3.0], [2.0]], [[3.0], [5.0], [2.0]]])  # R=2, T=3, N=1
    prediction = np.array([[2.0], [4.0], [3.0]])
    # noise var (ddof 1): ((1-3)^2/2 + (3-5)^2/2 + 0) / 3 = 4/3
    assert noise_variance(responses)[0] == pytest.approx(4.0 / 3.0)
    # total var (ddof 0) of [1,3,2,3,5,2] = 14/9 + ... computed directly
    total = np.var([1, 3, 2, 3, 5, 2])
    assert explainable_variance(responses)[0] == pytest.approx(total - 4.0 / 3.0)
    mse = np.mean([(1 - 2) ** 2, (3 - 4) ** 2, (2 - 3) ** 2, (3 - 2) ** 2, (5 - 4) ** 2, (2 - 3) ** 2])
    expected = 1.0 - (mse - 4.0 / 3.0) / (total - 4.0 / 3.0)
    assert feve(prediction, responses)[0] == pytest.approx(expected)
    # Equivalent trial-mean form: var_t(ybar) - s2 / R.
    ybar = responses.mean(axis=0)[:, 0]
    ev_mean = ybar.var() - (4.0 / 3.0) / 2
    alt = 1.0 - (np.mean((ybar - prediction[:, 0]) ** 2) - (4.0 / 3.0) / 2) / ev_mean
    assert feve(prediction, responses)[0] == pytest.approx(alt)


def test_true_signal_scores_one_in_expectation_with_noise() -> None:
    rng = np.random.default_rng(2)
    signal = rng.normal(size=(400, 2))
    responses = signal[None] + rng.normal(scale=1.0, size=(20, 400, 2))
    assert np.all(np.abs(feve(signal, responses) - 1.0) < 0.05)
    # Expected noise ceiling sqrt(var_s / (var_s + 1/R)).
    expected = np.sqrt(signal.var(axis=0) / (signal.var(axis=0) + 1.0 / 20))
    np.testing.assert_allclose(noise_ceiling(responses), expected, atol=0.02)


def test_pure_noise_cell_has_undefined_feve() -> None:
    responses = np.zeros((3, 10, 1))
    assert np.isnan(feve(np.zeros((10, 1)), responses)[0])
    assert np.isnan(evaluate(np.zeros((10, 1)), responses[0]).mean_feve)


def test_spike_durations_of_separated_bumps() -> None:
    trace = _bumps(100, [20, 60], 2.0)
    widths = spike_durations(trace)
    assert len(widths) == 2 and widths[0] == pytest.approx(widths[1], rel=1e-3)
    # rel_height=1 measures the base: the support of a sigma-2 bump cut at 1e-3
    # is 2 * 3.72 * 2 ~ 15 frames (+ up to 2 frames of interpolation to 0).
    assert 14 < widths[0] < 18


def test_sd_kl_identical_traces_and_missing_peaks() -> None:
    trace = _bumps(200, [20, 60, 100, 150], 2.0) + _bumps(200, [180], 4.0)
    assert sd_kl(trace, trace) == pytest.approx(0.0, abs=1e-12)
    assert sd_kl(np.zeros(200), trace) == SD_KL_MISSING
    assert sd_kl(_bumps(200, [50], 2.0), trace) == SD_KL_MISSING
    different = _bumps(200, [20, 60, 100, 150, 180], 5.0)
    assert 0 < sd_kl(different, trace)


def test_sd_kl_uses_an_absolute_bandwidth_in_frames() -> None:
    trace = _bumps(300, [30, 90, 150], 2.0) + _bumps(300, [220], 3.0)
    narrow = _bumps(300, [30, 90, 150], 2.0) + _bumps(300, [220], 3.5)
    # One duration differs by 4 frames: a 0.3-frame kernel separates the densities,
    # a 5-frame kernel blurs them together.
    assert sd_kl(narrow, trace, bandwidth=0.3) > 10 * sd_kl(narrow, trace, bandwidth=5.0)


def test_evaluate_summaries_and_json() -> None:
    rng = np.random.default_rng(3)
    t = 120
    signal = np.stack([_bumps(t, list(range(10, t, 25)), 2.0), rng.random(t), -rng.random(t)], axis=1)
    responses = signal[None] + rng.normal(scale=0.05, size=(3, t, 3))
    prediction = signal.copy()
    prediction[:, 2] = -prediction[:, 2]  # anti-correlated cell
    result = evaluate(prediction, responses)
    assert result.n_cells == 3 and result.n_repeats == 3 and result.n_frames == t
    assert result.cc[2] < 0 < result.cc[0]
    assert result.mean_abs_cc == pytest.approx(np.abs(result.cc).mean())
    assert result.mean_positive_cc == pytest.approx(result.cc[result.cc > 0].mean())
    assert result.n_positive_cc == 2
    payload = json.loads(json.dumps(result.to_json_dict()))
    assert payload["cc"] == pytest.approx(result.cc.tolist())
    assert set(payload) >= {"feve", "noise_ceiling", "sd_kl", "mean_sd_kl"}


def test_trial_means_only_give_nan_noise_metrics() -> None:
    signal = np.random.default_rng(4).random((30, 2))
    result = evaluate(signal, signal)
    assert result.n_repeats == 1 and np.isnan(result.feve).all()
    assert result.to_json_dict()["mean_feve"] is None


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="T, N"):
        pearson_per_cell(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="does not match"):
        evaluate(np.zeros((5, 2)), np.zeros((2, 5, 3)))

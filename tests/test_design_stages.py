"""Each stage of a design step on its own: budget, preconditioners, objectives, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from insilico.design.envelope import MIN_RF_PEAK_SNR, rf_envelope, rf_peak_snr
from insilico.design.objectives import Window, decrease, discriminative, increase, others
from insilico.design.postprocess import ContrastBudget
from insilico.design.preconditioners import FourierScaling, GaussianBlur, blur
from insilico.design.regularizers import TemporalSmoothness, TotalVariation
from insilico.design.run import design_envelope
from insilico.design.sta_start import rank_one, sta_start
from insilico.design.transforms import Compose, Jitter, TimeShift
from stimuli.recording.rf_geometry import rf_centre_and_size


def _clips(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if kind == "gaussian":
        return torch.randn(3, 10, 16, 16, generator=g)
    if kind == "heavy_tailed":
        return torch.randn(3, 10, 16, 16, generator=g) ** 3
    if kind == "skewed":
        return torch.rand(3, 10, 16, 16, generator=g) ** 4 * 7 - 2
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["gaussian", "heavy_tailed", "skewed"])
@pytest.mark.parametrize("rms", [0.1, 0.2, 0.35])
def test_post_processor_holds_the_budget_exactly(kind: str, rms: float) -> None:
    y = ContrastBudget(rms)(_clips(kind)).double()
    assert y.min() >= 0.0 and y.max() <= 1.0
    np.testing.assert_allclose(y.mean(dim=(1, 2, 3)), 0.5, atol=1e-4)
    np.testing.assert_allclose(y.std(dim=(1, 2, 3), correction=0), rms, atol=1e-4)


def test_post_processor_gives_the_most_contrast_an_infeasible_clip_can_take() -> None:
    # A 3x3 spot on a 16x16 field: a two-level clip at mean 0.5 reaches at most
    # 0.5 * sqrt(p / (1 - p)) with p the spot's share of the pixels.
    x = torch.zeros(1, 4, 16, 16)
    x[..., 6:9, 6:9] = 1.0
    y = ContrastBudget(0.3)(x).double()
    p = 9 / 256
    assert abs(float(y.mean()) - 0.5) < 1e-4
    assert float(y.std(correction=0)) <= 0.3
    assert float(y.std(correction=0)) == pytest.approx(0.5 * np.sqrt(p / (1 - p)), abs=1e-3)


def test_post_processor_refuses_an_impossible_budget_and_greys_a_constant_clip() -> None:
    with pytest.raises(ValueError, match="cannot reach"):
        ContrastBudget(0.6)
    y = ContrastBudget(0.2)(torch.full((1, 3, 4, 4), 0.9))
    assert torch.allclose(y, torch.full_like(y, 0.5))


def _high_frequency_power(x: torch.Tensor) -> float:
    power = torch.fft.rfft2(x).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[-2])[:, None]
    fx = torch.fft.rfftfreq(x.shape[-1])[None, :]
    return float(power[..., torch.sqrt(fy**2 + fx**2) > 0.25].sum() / power.sum())


@pytest.mark.parametrize("precondition", [GaussianBlur(2.0, 2.0), FourierScaling(1.0)])
def test_preconditioners_smooth_the_gradient(precondition) -> None:
    grad = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    smoothed = precondition(grad, 0, 10)
    assert smoothed.shape == grad.shape
    assert _high_frequency_power(smoothed) < 0.5 * _high_frequency_power(grad)


def test_blur_sigma_anneals_and_keeps_a_constant() -> None:
    b = GaussianBlur(3.0, 0.5)
    assert b.sigma(0, 10) == pytest.approx(3.0) and b.sigma(9, 10) == pytest.approx(0.5)
    assert b.sigma(0, 10) > b.sigma(5, 10) > b.sigma(9, 10)
    flat = torch.full((1, 2, 8, 8), 0.3)
    assert torch.allclose(blur(flat, 2.0), flat)


def test_objectives_compose_like_their_values() -> None:
    rates = torch.rand(4, 12, 6, generator=torch.Generator().manual_seed(1))
    w = Window(3)
    a, b, c = increase(1, w), increase(others(6, 1), w), discriminative(2, w, temperature=0.5)
    combo = a - 0.1 * b + 2 * c / 4
    expected = a(rates) - 0.1 * b(rates) + 0.5 * c(rates)
    torch.testing.assert_close(combo(rates), expected)
    torch.testing.assert_close(decrease(1, w)(rates), -a(rates))
    torch.testing.assert_close(a(rates), rates[:, -3:, 1].mean(dim=1))
    assert "increase(1)" in combo.describe() and "discriminative(2" in combo.describe()


def test_discriminative_is_on_over_temperature_minus_logsumexp() -> None:
    rates = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(2))
    r = rates[:, -2:].mean(dim=1)
    expected = r[:, 0] / 0.3 - torch.logsumexp(r / 0.3, dim=1)
    torch.testing.assert_close(discriminative(0, Window(2), 0.3)(rates), expected)
    # The on cell firing more while the others stay put raises it.
    louder = rates.clone()
    louder[:, :, 0] += 1.0
    assert (discriminative(0, Window(2), 0.3)(louder) > expected).all()


def test_windows_and_cells_are_checked() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Window(5).slice(3)
    with pytest.raises(ValueError, match="out of range"):
        increase(7)(torch.zeros(1, 4, 3))


def test_transforms_follow_their_seeds() -> None:
    x = torch.rand(2, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    t = Compose((Jitter(2), TimeShift(2)))

    def gens(*seeds: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    assert torch.equal(t(x, gens(1, 2)), t(x, gens(1, 2)))
    moved = [not torch.equal(t(x, gens(s, s + 1)), x) for s in range(5)]
    assert any(moved)
    assert t(x, gens(1, 2)).shape == x.shape
    # A time shift repeats the edge frame and keeps the clip's length.
    shifted = TimeShift(3)(x, gens(4, 5))
    assert shifted.shape == x.shape


def test_regularizers_penalize_noise_more_than_smooth_clips() -> None:
    noise = torch.rand(1, 6, 16, 16, generator=torch.Generator().manual_seed(0))
    smooth = blur(noise, 3.0)
    assert TotalVariation(1.0)(noise) > TotalVariation(1.0)(smooth)
    flicker = noise.clone()
    steady = noise[:, :1].expand_as(noise).clone()
    assert TemporalSmoothness(1.0)(flicker) > TemporalSmoothness(1.0)(steady) == 0


@pytest.mark.parametrize("sigma", [1.5, 2.5, 4.0])
def test_rf_centre_and_size_of_a_noisy_gaussian(sigma: float) -> None:
    rows, cols = np.indices((48, 64))
    rf = np.exp(-((rows - 20.0) ** 2 + (cols - 41.0) ** 2) / (2 * sigma**2))
    rf = -rf + np.random.default_rng(0).normal(0.0, 0.1, rf.shape)  # an OFF cell's STA
    (cy, cx), size = rf_centre_and_size(rf)
    assert abs(cy - 20.0) < 0.5 and abs(cx - 41.0) < 0.5
    assert size == pytest.approx(sigma, rel=0.2)
    env = rf_envelope(rf, 3.0)
    assert env.shape == rf.shape and env.max() == pytest.approx(1.0, abs=0.02)
    assert np.unravel_index(np.argmax(env), env.shape) == (20, 41)
    d = round(3 * size)
    assert env[20, 41 + d] == pytest.approx(np.exp(-0.5 * (d / (3 * size)) ** 2), abs=0.05)
    assert env[20, max(0, 41 - round(6 * size) - 1)] == 0.0  # cut beyond two envelope sigmas
    with pytest.raises(ValueError, match="width"):
        rf_envelope(rf, 0.0)


def test_a_map_of_noise_gets_no_envelope() -> None:
    rows, cols = np.indices((32, 32))
    noise = np.random.default_rng(1).normal(0.0, 0.1, (32, 32))
    spot = -np.exp(-((rows - 9.0) ** 2 + (cols - 20.0) ** 2) / (2 * 2.5**2))
    # An ON-OFF cell whose ON and OFF halves cancelled leaves noise: its peak is no cell.
    assert rf_peak_snr(noise) < MIN_RF_PEAK_SNR < rf_peak_snr(spot * 0.5 + noise)
    envelope, record = design_envelope(noise, 1.0)
    assert envelope is None and not record["used"] and "does not locate the cell" in record["note"]
    assert not record["rf_locates_cell"]
    envelope, record = design_envelope(spot * 0.5 + noise, 1.0)
    assert record["used"] and record["rf_locates_cell"] and np.unravel_index(np.argmax(envelope), envelope.shape) == (9, 20)
    assert design_envelope(spot, 0.0)[0] is None  # width 0: off


def test_sta_start_plays_the_denoised_filter_before_the_window() -> None:
    rng = np.random.default_rng(2)
    rows, cols = np.indices((16, 16))
    space = np.exp(-((rows - 5.0) ** 2 + (cols - 9.0) ** 2) / (2 * 2.0**2))
    time = np.array([1.0, 0.6, -0.3, -0.1])  # lag 0 .. 3
    sta = time[:, None, None] * space + rng.normal(0.0, 0.05, (4, 16, 16))
    clean = rank_one(sta)
    truth = time[:, None, None] * space
    assert np.corrcoef(clean.ravel(), truth.ravel())[0, 1] > np.corrcoef(sta.ravel(), truth.ravel())[0, 1] > 0.8
    clip = sta_start(sta, n_frames=10, window=(7, 10))  # middle frame 8: lag l at frame 8 - l
    assert clip.shape == (10, 16, 16)
    np.testing.assert_allclose(clip[0:5], 0.5)
    np.testing.assert_allclose(clip[8], 0.5 + clean[0], atol=1e-6)
    np.testing.assert_allclose(clip[5], 0.5 + clean[3], atol=1e-6)
    np.testing.assert_allclose(clip[9], 0.5)  # after the window's middle: nothing to drive it

"""The ground-truth simulated retina: population, responses, RF recovery, true optimum."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rig_bridge.retina import (
    DEMO_CELL_ID,
    CellSpec,
    CellType,
    SimulatedRetina,
    drive,
    response_at_end,
    smooth_random_movie,
    true_optimal_stimulus,
)
from rig_bridge.retina.optimum import end_filter
from stimuli.contrast import set_mean_and_contrast
from stimuli.recording.reliability import split_half_reliability
from stimuli.recording.sta import spike_triggered_average, sta_by_lag

SIZE = 64


@pytest.fixture(scope="module")
def retina() -> SimulatedRetina:
    return SimulatedRetina.create(n_cells=90, height=SIZE, width=SIZE, frame_rate=30.0, seed=0)


def _types(retina: SimulatedRetina) -> np.ndarray:
    return np.asarray(retina.cell_types)


def _grey(n_frames: int, size: int = SIZE) -> np.ndarray:
    return np.full((n_frames, size, size), 0.5)


# --- population -------------------------------------------------------------------------


def test_same_seed_same_population_and_spikes_other_seed_differs() -> None:
    a = SimulatedRetina.create(n_cells=30, height=32, width=32, seed=3)
    b = SimulatedRetina.create(n_cells=30, height=32, width=32, seed=3)
    c = SimulatedRetina.create(n_cells=30, height=32, width=32, seed=4)
    assert a.cells == b.cells
    assert a.cells != c.cells
    assert not np.allclose([x.centre for x in a.cells], [x.centre for x in c.cells])
    video = np.random.default_rng(0).random((40, 32, 32))
    np.testing.assert_array_equal(
        a.spikes(video, np.random.default_rng(9)), b.spikes(video, np.random.default_rng(9))
    )
    assert not np.array_equal(a.rate(video), c.rate(video))


def test_population_shapes_types_and_ids(retina: SimulatedRetina) -> None:
    n = retina.n_cells
    assert n == 90 and len(retina.cells) == n
    assert all(isinstance(c, CellSpec) for c in retina.cells)
    ids = retina.cell_ids
    assert ids.dtype == np.int64 and ids.shape == (n,)
    assert np.unique(ids).size == n
    # N > 42: ids are 0..N-1 in population order, and cell 42 is linear.
    np.testing.assert_array_equal(ids, np.arange(n))
    assert retina.index_of(DEMO_CELL_ID) == DEMO_CELL_ID
    assert retina.is_linear(retina.index_of(42))
    types = _types(retina)
    assert set(types) == {t.value for t in CellType}
    linear = np.array([retina.is_linear(i) for i in range(n)])
    assert 0.5 <= linear.mean() <= 0.7
    assert retina.filter_length == 15
    for i in (0, 42, n - 1):
        assert retina.spatial_filter(i).shape == (SIZE, SIZE)
        assert retina.temporal_filter(i).shape == (15,)
        assert np.isclose(np.linalg.norm(retina.spatial_filter(i)), 1.0)
    with pytest.raises(ValueError, match="no cell with id"):
        retina.index_of(10_000)


def test_centres_tile_the_screen_inside_the_border(retina: SimulatedRetina) -> None:
    centres = np.array([c.centre for c in retina.cells])
    sigmas = np.array([c.sigma_centre for c in retina.cells])
    assert (sigmas >= 2.0).all() and (sigmas <= 4.0).all()
    ratio = np.array([c.sigma_surround / c.sigma_centre for c in retina.cells])
    assert (ratio >= 2.0).all() and (ratio <= 3.0).all()
    assert centres.min() >= 1.5 * 4.0 - 1e-9 and centres.max() <= SIZE - 1 - 6.0 + 1e-9
    # Every type covers the screen: its cells reach all four quadrants.
    types = _types(retina)
    for t in set(types):
        c = centres[types == t]
        quadrants = {(y > SIZE / 2, x > SIZE / 2) for y, x in c}
        assert len(quadrants) == 4, t


def test_small_population_still_has_linear_cell_42() -> None:
    small = SimulatedRetina.create(n_cells=7, height=24, width=24, seed=1)
    assert DEMO_CELL_ID in small.cell_ids
    assert small.is_linear(small.index_of(DEMO_CELL_ID))
    assert np.unique(small.cell_ids).size == 7


def test_temporal_filters_are_biphasic_and_transient_more_so(retina: SimulatedRetina) -> None:
    types = _types(retina)
    dc = np.array([retina.temporal_filter(i).sum() for i in range(retina.n_cells)])
    for i in range(retina.n_cells):
        k = retina.temporal_filter(i)
        assert k[np.argmax(np.abs(k))] > 0 and k.min() < 0
    assert dc[types == "on_transient"].max() < dc[types == "on_sustained"].min()


# --- responses --------------------------------------------------------------------------


def test_rate_and_spikes_shapes_dtypes_and_input_checks(retina: SimulatedRetina) -> None:
    video = np.random.default_rng(1).random((25, SIZE, SIZE))
    rate = retina.rate(video)
    assert rate.shape == (25, 90) and rate.dtype == np.float64 and (rate > 0).all()
    counts = retina.spikes(video, np.random.default_rng(2))
    assert counts.shape == (25, 90) and counts.dtype == np.uint16
    with pytest.raises(ValueError, match="divide uint8"):
        retina.rate((video * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="screen"):
        retina.rate(video[:, :32])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        retina.rate(video * 2.0)


def test_grey_screen_gives_each_cells_baseline(retina: SimulatedRetina) -> None:
    rate = retina.rate(_grey(5))
    np.testing.assert_allclose(rate, np.tile([c.baseline for c in retina.cells], (5, 1)))


def test_causality_a_step_changes_nothing_before_it(retina: SimulatedRetina) -> None:
    step = 20
    video = _grey(40)
    video[step:] = np.random.default_rng(3).random((40 - step, SIZE, SIZE))
    rate = retina.rate(video)
    np.testing.assert_array_equal(rate[:step], retina.rate(_grey(step)))
    assert np.abs(rate[step:step + 4] - rate[0]).max() > 0.01


def test_chunked_and_streamed_equal_one_shot(retina: SimulatedRetina) -> None:
    video = smooth_random_movie(70, SIZE, SIZE, np.random.default_rng(4))
    whole = retina.rate(video)
    chunked = SimulatedRetina(retina.cells, SIZE, SIZE, 30.0, chunk_frames=7).rate(video)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)
    stream = retina.stream()
    pieces = [stream.push(video[a:b]) for a, b in ((0, 1), (1, 13), (13, 13), (13, 70))]
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=1e-12, atol=1e-12)
    assert stream.frames_seen == 70
    stream.reset()
    np.testing.assert_allclose(stream.push(video[:10]), whole[:10], rtol=1e-12, atol=1e-12)


def test_on_cells_fire_to_bright_flash_off_cells_to_dark(retina: SimulatedRetina) -> None:
    types = _types(retina)
    on = np.isin(types, ["on_sustained", "on_transient"])
    off = np.isin(types, ["off_sustained", "off_transient"])
    onset = slice(10, 18)  # the flash's onset response only, before it ends at frame 25
    responses = {}
    for lum in (1.0, 0.0):
        video = _grey(30)
        video[10:25] = lum
        rate = retina.rate(video)
        responses[lum] = rate[onset].max(axis=0) / rate[5]
    assert (responses[1.0][on] > 3.0).all() and (responses[0.0][off] > 3.0).all()
    assert (responses[1.0][off] < 1.0 + 1e-9).all() and (responses[0.0][on] < 1.0 + 1e-9).all()
    on_off = types == "on_off"
    assert (responses[1.0][on_off] > 3.0).all() and (responses[0.0][on_off] > 3.0).all()


def test_contrast_adapting_cells_lower_their_gain_at_high_contrast(
    retina: SimulatedRetina,
) -> None:
    types = _types(retina)
    linear = [i for i in range(retina.n_cells) if retina.is_linear(i)]
    cells = np.concatenate([np.flatnonzero(types == "contrast_adapting"), linear[:3]])
    rng = np.random.default_rng(5)
    slopes = {}
    for rms in (0.05, 0.35):
        movie = smooth_random_movie(300, SIZE, SIZE, rng, rms_contrast=rms, temporal_corner_hz=8.0)
        generator = retina.generator(movie)[60:]  # after the gain has settled
        row = []
        for i in cells:
            d = drive(retina, i, movie)[60:]
            row.append(generator[:, i] @ d / (d @ d))
        slopes[rms] = np.array(row)
    adapting = types[cells] == "contrast_adapting"
    assert (slopes[0.35][adapting] < 0.6 * slopes[0.05][adapting]).all()
    # A linear cell's generator is its drive at any contrast.
    np.testing.assert_allclose(slopes[0.35][~adapting], 1.0, rtol=1e-9)
    np.testing.assert_allclose(slopes[0.05][~adapting], 1.0, rtol=1e-9)


def test_subunit_cells_frequency_double_to_fine_reversing_gratings(
    retina: SimulatedRetina,
) -> None:
    types = _types(retina)
    x = np.arange(SIZE)
    reversal = np.where((np.arange(96) // 6) % 2 == 0, 1.0, -1.0)  # period 12 frames
    f1 = np.zeros(retina.n_cells)
    f2 = np.zeros(retina.n_cells)
    for phase in np.linspace(0.0, 2 * np.pi, 8, endpoint=False):
        bars = np.sign(np.sin(2 * np.pi * x / 4.0 + phase + 1e-9))
        video = 0.5 + 0.4 * reversal[:, None, None] * bars[None, None, :] * np.ones((1, SIZE, 1))
        rate = retina.rate(video)[48:]  # 4 full periods after the onset
        spectrum = np.abs(np.fft.rfft(rate - rate.mean(axis=0), axis=0))
        f1 = np.maximum(f1, spectrum[4])
        f2 = np.maximum(f2, spectrum[8])
    linear = np.array([retina.is_linear(i) for i in range(retina.n_cells)])
    assert (f2[types == "subunit"] > 2.0 * f1[types == "subunit"]).all()
    assert (f2[linear] < 0.2 * f1[linear]).all()


def test_refractory_counts_are_capped_and_sub_poisson(retina: SimulatedRetina) -> None:
    rates = np.full((20_000, 3), [0.2, 3.0, 12.0])
    rng = np.random.default_rng(6)
    plain = retina.sample(rates, rng)
    dead = retina.sample(rates, rng, refractory=True)
    slots = int(1.0 / (retina.frame_rate * retina.dead_time_s))
    assert dead.dtype == np.uint16 and dead.max() <= slots < plain.max()
    assert (np.abs(plain.mean(axis=0) - rates[0]) < 5 * np.sqrt(rates[0] / 20_000)).all()
    fano = dead.var(axis=0) / dead.mean(axis=0)
    assert fano[2] < 0.6 and abs(fano[0] - 1.0) < 0.15


def test_natural_movie_responses_are_reliable(retina: SimulatedRetina) -> None:
    # One minute of natural-like movie at RMS 0.2, five repeats.
    movie = smooth_random_movie(1800, SIZE, SIZE, np.random.default_rng(7), rms_contrast=0.2)
    rate = retina.rate(movie)
    rng = np.random.default_rng(8)
    counts = np.stack([retina.sample(rate, rng) for _ in range(5)])
    reliability = split_half_reliability(counts)
    linear = np.array([retina.is_linear(i) for i in range(retina.n_cells)])
    assert np.mean(reliability[linear] > 0.5) >= 0.75
    mean_hz = rate.mean(axis=0) * retina.frame_rate
    assert (mean_hz > 2.0).all() and (mean_hz < 30.0).all()


def test_split_half_reliability_bounds() -> None:
    rng = np.random.default_rng(0)
    signal = rng.random((1, 500, 3))
    np.testing.assert_allclose(split_half_reliability(np.repeat(signal, 4, axis=0)), 1.0)
    noise = rng.random((6, 500, 3))
    assert np.abs(split_half_reliability(noise)).max() < 0.2


def test_rate_is_fast(retina: SimulatedRetina) -> None:
    video = np.random.default_rng(9).random((3000, SIZE, SIZE))
    start = time.perf_counter()
    retina.rate(video)
    assert time.perf_counter() - start < 6.0


# --- spike-triggered average ----------------------------------------------------------------


def test_sta_finds_the_pixel_and_lag_that_drive_spikes() -> None:
    rng = np.random.default_rng(10)
    frames = rng.random((2000, 6, 5))
    counts = np.zeros((2000, 2))
    counts[3:, 0] = frames[:-3, 2, 4] > 0.7  # cell 0 fires 3 frames after pixel (2, 4) is bright
    counts[1:, 1] = frames[:-1, 0, 0] < 0.2  # cell 1 fires 1 frame after pixel (0, 0) is dark
    estimate = sta_by_lag(frames, counts, range(0, 5))
    np.testing.assert_array_equal(estimate.peak_lag, [3, 1])
    assert np.unravel_index(np.argmax(estimate.spatial[0]), (6, 5)) == (2, 4)
    assert np.unravel_index(np.argmin(estimate.spatial[1]), (6, 5)) == (0, 0)
    at_lag_3 = spike_triggered_average(frames, counts, 3)
    np.testing.assert_array_equal(at_lag_3[0], estimate.by_lag[0, 3])
    with pytest.raises(ValueError, match=r"counts must be \[T, N\]"):
        spike_triggered_average(frames, counts[:10])


def test_sta_of_white_noise_recovers_linear_spatial_filters(retina: SimulatedRetina) -> None:
    check, n_frames = 4, 5000
    rng = np.random.default_rng(11)
    checks = rng.integers(0, 2, (n_frames, SIZE // check, SIZE // check)).astype(np.float64)
    noise = np.repeat(np.repeat(checks, check, axis=1), check, axis=2)
    linear = np.flatnonzero([retina.is_linear(i) for i in range(retina.n_cells)])
    counts = retina.spikes(noise, rng)[:, linear]
    sta = spike_triggered_average(checks, counts, range(0, 6))
    correlations = []
    for k, i in enumerate(linear):
        # The best a 4-pixel check can show: the true filter averaged over each check.
        truth = retina.spatial_filter(i).reshape(16, check, 16, check).mean(axis=(1, 3))
        correlations.append(np.corrcoef(truth.ravel(), sta[k].ravel())[0, 1])
    assert np.mean(np.asarray(correlations) > 0.8) >= 0.8


# --- true optimum ------------------------------------------------------------------------


def _binary_at_budget(rng: np.random.Generator, shape: tuple[int, ...], rms: float) -> np.ndarray:
    signs = np.resize([1.0, -1.0], int(np.prod(shape)))
    return (0.5 + rms * rng.permutation(signs)).reshape(shape)


@pytest.mark.parametrize("n_frames", [15, 30])
def test_true_optimum_beats_other_stimuli_at_the_same_budget(
    retina: SimulatedRetina, n_frames: int
) -> None:
    i, rms = retina.index_of(42), 0.2
    best = true_optimal_stimulus(retina, i, n_frames, rms)
    assert best.shape == (n_frames, SIZE, SIZE)
    assert abs(best.mean() - 0.5) < 1e-3 and abs(best.std() - rms) < 1e-3
    assert best.min() >= 0.0 and best.max() <= 1.0
    top = drive(retina, i, best)[-1]
    rng = np.random.default_rng(12)
    for _ in range(5):
        assert drive(retina, i, _binary_at_budget(rng, best.shape, rms))[-1] < top
    smooth = smooth_random_movie(n_frames, SIZE, SIZE, rng, rms_contrast=rms)
    assert drive(retina, i, smooth)[-1] < top
    # A strong competitor: the filter itself, scaled and clipped to the budget.
    scaled = set_mean_and_contrast(end_filter(retina, i, n_frames), mean=0.5, rms=rms)
    assert drive(retina, i, scaled)[-1] < top
    assert response_at_end(retina, i, best) > response_at_end(retina, i, scaled)


def test_a_window_optimum_drives_the_window_more_than_the_last_frame_optimum(retina: SimulatedRetina) -> None:
    from insilico.design.verify import true_optimum, true_response

    i, n_frames, rms, window = retina.index_of(42), 30, 0.2, 3
    last = true_optimal_stimulus(retina, i, n_frames, rms)
    spread = true_optimal_stimulus(retina, i, n_frames, rms, window=window)
    assert abs(spread.mean() - 0.5) < 1e-3 and abs(spread.std() - rms) < 1e-3
    assert drive(retina, i, spread)[-window:].mean() > drive(retina, i, last)[-window:].mean()
    assert drive(retina, i, spread)[-1] < drive(retina, i, last)[-1]  # each optimum wins on its own objective
    frames = (n_frames - window, n_frames)
    assert true_optimum(retina, i, n_frames, rms, frames) == max(
        true_response(retina, i, last, frames), true_response(retina, i, spread, frames))
    with pytest.raises(ValueError, match="window"):
        true_optimal_stimulus(retina, i, n_frames, rms, window=n_frames + 1)


def test_true_optimum_is_the_scaled_filter_when_nothing_clips(retina: SimulatedRetina) -> None:
    i, n_frames = retina.index_of(42), 15
    weights = end_filter(retina, i, n_frames)
    centred = weights - weights.mean()
    # Largest budget at which the scaled filter still fits inside [0, 1].
    fits = 0.5 / np.abs(centred).max() * np.linalg.norm(centred) / np.sqrt(centred.size)
    best = true_optimal_stimulus(retina, i, n_frames, 0.5 * fits)
    expected = 0.5 + centred * (0.5 * fits * np.sqrt(centred.size) / np.linalg.norm(centred))
    np.testing.assert_allclose(best, expected, atol=1e-9)


def test_true_optimum_spends_the_budget_on_long_clips(retina: SimulatedRetina) -> None:
    best = true_optimal_stimulus(retina, retina.index_of(42), 60, 0.3)
    assert abs(best.mean() - 0.5) < 1e-3 and abs(best.std() - 0.3) < 1e-3
    assert best.min() >= 0.0 and best.max() <= 1.0


def test_true_optimum_rejects_nonlinear_cells_and_bad_budgets(retina: SimulatedRetina) -> None:
    nonlinear = next(i for i in range(retina.n_cells) if not retina.is_linear(i))
    with pytest.raises(ValueError, match="only defined for linear"):
        true_optimal_stimulus(retina, nonlinear, 15, 0.2)
    with pytest.raises(ValueError, match="rms_contrast"):
        true_optimal_stimulus(retina, 42, 15, 0.6)

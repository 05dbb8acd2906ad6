"""Stimulus container, contrast helpers and the parametric stimulus families."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from stimuli.chirp import CHIRP_DURATION_S, CHIRP_SEGMENTS
from stimuli.contrast import rms_contrast, set_mean_and_contrast, to_uint8
from stimuli.families import (
    FAMILIES,
    checkerboard_noise,
    chirp,
    drifting_grating,
    full_field_flash,
    moving_bar,
    spot,
)
from stimuli.stimulus import Stimulus

# --------------------------------------------------------------------------- Stimulus


def _frames(t: int = 3, h: int = 4, w: int = 5) -> np.ndarray:
    return np.arange(t * h * w, dtype=np.uint8).reshape(t, h, w)


def test_stimulus_helpers_and_readonly_frames() -> None:
    stim = Stimulus(_frames(), frame_rate=60, name="test", params={"a": np.float32(1.5)})
    assert stim.n_frames == 3
    assert stim.shape == (3, 4, 5)
    assert stim.duration_s == pytest.approx(3 / 60)
    as_float = stim.as_float()
    assert as_float.dtype == np.float32
    assert as_float.shape == (3, 4, 5)
    assert as_float.min() >= 0.0 and as_float.max() <= 1.0
    assert as_float[0, 0, 1] == pytest.approx(1 / 255)
    with pytest.raises(ValueError):
        stim.frames[0, 0, 0] = 7
    with pytest.raises(TypeError):
        stim.params["a"] = 2.0  # type: ignore[index]
    assert type(stim.params["a"]) is float
    assert "Stimulus(name='test'" in repr(stim) and len(repr(stim)) < 300


def test_stimulus_params_are_json_serialisable() -> None:
    params = {"n": np.int64(3), "xs": [np.float64(1.0), 2], "nested": ((1, "a"),), "none": None}
    stim = Stimulus(_frames(), 30.0, "test", params)
    decoded = json.loads(json.dumps(dict(stim.params)))
    assert decoded == {"n": 3, "xs": [1.0, 2], "nested": [[1, "a"]], "none": None}


def test_stimulus_equality_compares_content() -> None:
    a = Stimulus(_frames(), 30.0, "x", {"k": 1})
    b = Stimulus(_frames().copy(), 30.0, "x", {"k": 1})
    other = _frames().copy()
    other[0, 0, 0] += 1
    assert a == b
    assert a != Stimulus(other, 30.0, "x", {"k": 1})
    assert a != Stimulus(_frames(), 30.0, "x", {"k": 2})


@pytest.mark.parametrize(
    ("frames", "frame_rate", "params", "message"),
    [
        (np.zeros((4, 5), np.uint8), 30.0, {}, "ndim 3"),
        (np.zeros((2, 4, 5), np.float32), 30.0, {}, "uint8"),
        (np.zeros((2, 4, 5), np.uint8), 0.0, {}, "frame_rate"),
        (np.zeros((2, 4, 5), np.uint8), -5.0, {}, "frame_rate"),
        (np.zeros((2, 4, 5), np.uint8), float("nan"), {}, "frame_rate"),
        (np.zeros((0, 4, 5), np.uint8), 30.0, {}, "non-empty"),
        (np.zeros((2, 4, 5), np.uint8), 30.0, {"bad": object()}, "params"),
        (np.zeros((2, 4, 5), np.uint8), 30.0, {"bad": float("inf")}, "finite"),
    ],
)
def test_stimulus_rejects_bad_input(frames, frame_rate, params, message) -> None:
    with pytest.raises(ValueError, match=message):
        Stimulus(frames, frame_rate, "test", params)


# --------------------------------------------------------------------------- contrast


def test_rms_contrast_same_for_uint8_and_float() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    assert rms_contrast(frames) == pytest.approx(rms_contrast(frames / 255.0))
    assert rms_contrast(np.array([[[0, 255]]], np.uint8)) == pytest.approx(0.5)
    assert rms_contrast(np.full((2, 3, 3), 128, np.uint8)) == 0.0


def test_to_uint8_rounds_and_clips() -> None:
    out = to_uint8(np.array([-0.2, 0.0, 0.5, 1.0 / 255 * 0.49, 1.0 / 255 * 0.51, 1.0, 1.7]))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 0, 1, 255, 255]
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([0.5, np.nan]))


@pytest.mark.parametrize("distribution", ["normal", "exponential", "lognormal", "uniform"])
@pytest.mark.parametrize(("mean", "rms"), [(0.5, 0.2), (0.5, 0.4), (0.3, 0.25), (0.6, 0.05)])
def test_set_mean_and_contrast_hits_targets_despite_clipping(distribution, mean, rms) -> None:
    rng = np.random.default_rng(1)
    x = {
        "normal": lambda: rng.normal(size=(8, 24, 24)),
        "exponential": lambda: rng.exponential(size=(8, 24, 24)),
        "lognormal": lambda: rng.lognormal(0.0, 1.5, size=(8, 24, 24)),
        "uniform": lambda: rng.uniform(size=(8, 24, 24)),
    }[distribution]()
    y = set_mean_and_contrast(x, mean=mean, rms=rms)
    assert y.shape == x.shape
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert abs(y.mean() - mean) < 1e-3
    assert abs(y.std() - rms) < 1e-3
    # Monotone intensity map: the pixel ranking survives (ties appear only where clipped).
    inside = (y > 0) & (y < 1)
    order = np.argsort(x[inside])
    assert np.all(np.diff(y[inside][order]) >= -1e-12)


def test_set_mean_and_contrast_infeasible_requests() -> None:
    x = np.random.default_rng(0).normal(size=(2, 8, 8))
    with pytest.raises(ValueError, match="infeasible"):
        set_mean_and_contrast(x, mean=0.5, rms=0.51)
    with pytest.raises(ValueError, match="infeasible"):
        set_mean_and_contrast(x, mean=0.1, rms=0.31)
    with pytest.raises(ValueError, match="constant"):
        set_mean_and_contrast(np.ones((2, 3, 3)), mean=0.5, rms=0.1)
    with pytest.raises(ValueError, match="mean"):
        set_mean_and_contrast(x, mean=1.0, rms=0.1)
    with pytest.raises(ValueError, match="rms"):
        set_mean_and_contrast(x, mean=0.5, rms=-0.1)
    assert np.all(set_mean_and_contrast(x, mean=0.3, rms=0.0) == 0.3)


def test_set_mean_and_contrast_warns_when_clip_cannot_reach_target() -> None:
    # Two grey values in a 1:3 ratio cannot reach rms 0.35 at mean 0.5 inside [0, 1].
    x = np.random.default_rng(0).choice([0.0, 1.0, 1.0, 1.0], size=(4, 16, 16))
    with pytest.warns(RuntimeWarning, match="saturates"):
        y = set_mean_and_contrast(x, mean=0.5, rms=0.35)
    assert y.min() >= 0.0 and y.max() <= 1.0


# --------------------------------------------------------------------------- all families

SMALL = {"n_frames": 6, "height": 12, "width": 16}


def _make(name: str) -> Stimulus:
    if name == "chirp":
        return chirp(height=4, width=6, frame_rate=10.0)
    return FAMILIES[name](**SMALL)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_basic_contract(name: str) -> None:
    stim = _make(name)
    assert isinstance(stim, Stimulus)
    assert stim.name == name
    assert stim.frames.dtype == np.uint8
    if name != "chirp":
        assert stim.shape == (6, 12, 16)
    json.dumps(dict(stim.params))
    # Deterministic: the same call gives the same clip.
    assert _make(name) == stim


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"chirp"}))
def test_family_regenerates_from_params(name: str) -> None:
    stim = FAMILIES[name](**SMALL)
    accepted = inspect.signature(FAMILIES[name]).parameters
    recipe = {key: value for key, value in stim.params.items() if key in accepted}
    assert FAMILIES[name](**recipe) == stim


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"chirp", "full_field_flash"}))
def test_zero_contrast_is_mean_grey(name: str) -> None:
    stim = FAMILIES[name](**SMALL, contrast=0.0)
    assert np.all(stim.frames == 128)


# --------------------------------------------------------------------------- checkerboard


def test_checkerboard_deterministic_from_seed() -> None:
    a = checkerboard_noise(5, 16, 16, seed=3)
    assert a == checkerboard_noise(5, 16, 16, seed=3)
    assert not np.array_equal(a.frames, checkerboard_noise(5, 16, 16, seed=4).frames)


@pytest.mark.parametrize(("contrast", "levels"), [(1.0, {0, 255}), (0.5, {64, 191})])
def test_binary_checkerboard_levels_and_checks(contrast: float, levels: set[int]) -> None:
    stim = checkerboard_noise(40, 10, 13, check_size=4, contrast=contrast, seed=1)
    assert set(np.unique(stim.frames).tolist()) == levels
    frames = stim.frames.astype(int)
    # Each 4x4 check (cut at the border) is uniform ...
    for r0 in range(0, 10, 4):
        for c0 in range(0, 13, 4):
            block = frames[:, r0 : r0 + 4, c0 : c0 + 4]
            assert np.all(block == block[:, :1, :1])
    # ... and checks are balanced, fresh every frame, and independent of each other.
    checks = (frames[:, ::4, ::4] > 128).astype(float)  # [T, 3, 4]
    assert abs(checks.mean() - 0.5) < 0.08
    assert abs(np.corrcoef(checks[1:].ravel(), checks[:-1].ravel())[0, 1]) < 0.15


def test_gaussian_checkerboard_statistics() -> None:
    stim = checkerboard_noise(50, 32, 32, check_size=1, contrast=1.0, binary=False, seed=2)
    values = stim.frames.astype(float)
    assert len(np.unique(stim.frames)) > 100
    assert abs(values.mean() - 127.5) < 1.0
    assert abs(values.std() - 255 / 6) < 1.5


# --------------------------------------------------------------------------- flashes


def test_full_field_flash_cycles() -> None:
    stim = full_field_flash(10, 3, 4, on_frames=3, off_frames=2, contrast=0.5)
    trace = stim.frames[:, 1, 2].tolist()
    assert trace == [191, 191, 191, 64, 64, 191, 191, 191, 64, 64]
    assert np.all(stim.frames == stim.frames[:, :1, :1])
    balanced = full_field_flash(40, 2, 2, on_frames=5, off_frames=5)
    assert balanced.frames.mean() == pytest.approx(127.5)


# --------------------------------------------------------------------------- chirp


def _zero_crossing_rate(trace: np.ndarray, frame_rate: float) -> float:
    """Dominant frequency (Hz) of a zero-mean trace from its zero crossings."""
    crossings = np.count_nonzero(np.diff(np.sign(trace)) != 0)
    return crossings / 2 / (len(trace) / frame_rate)


@pytest.mark.parametrize("frame_rate", [30.0, 60.0, 7.8125])
def test_chirp_duration_and_segments(frame_rate: float) -> None:
    stim = chirp(height=2, width=3, frame_rate=frame_rate)
    assert CHIRP_DURATION_S == 32.0
    assert stim.n_frames == round(32 * frame_rate)
    segments = stim.params["segments"]
    assert [s[0] for s in segments] == [name for name, _ in CHIRP_SEGMENTS]
    assert segments[0][1] == 0 and segments[-1][2] == stim.n_frames
    for (_, _, stop), (_, start, _) in zip(segments[:-1], segments[1:], strict=True):
        assert stop == start
    assert stim.params["segment_starts_s"] == (0.0, 2.0, 5.0, 8.0, 10.0, 18.0, 20.0, 28.0, 30.0)


def test_chirp_waveform() -> None:
    frame_rate = 60.0
    stim = chirp(height=2, width=2, frame_rate=frame_rate)
    trace = stim.frames[:, 0, 0].astype(float)
    seg = {name: (start, stop) for name, start, stop in stim.params["segments"]}

    def part(name: str) -> np.ndarray:
        start, stop = seg[name]
        return trace[start:stop]

    assert np.all(part("dark") == 0) and np.all(part("dark_end") == 0)
    assert np.all(part("on_step") == 255) and np.all(part("off_step") == 0)
    for grey in ("grey_1", "grey_2", "grey_3"):
        assert np.all(part(grey) == 128)
    fm = part("frequency_sweep") - 127.5
    assert fm.min() < 3 and fm.max() > 124  # full contrast
    one_s = int(frame_rate)
    assert _zero_crossing_rate(fm[: 2 * one_s], frame_rate) == pytest.approx(0.5 + 7.5 / 8, abs=0.3)
    assert _zero_crossing_rate(fm[-one_s:], frame_rate) == pytest.approx(7.5 + 7.5 / 16, abs=0.6)
    am = part("amplitude_sweep") - 127.5
    assert _zero_crossing_rate(am[one_s:], frame_rate) == pytest.approx(2.0, abs=0.15)
    envelope = [np.abs(am[i : i + one_s]).max() for i in range(0, len(am), one_s)]
    assert np.all(np.diff(envelope) > 0)
    assert envelope[0] < 20 and envelope[-1] > 115


# --------------------------------------------------------------------------- gratings


@pytest.mark.parametrize("orientation_deg", [0.0, 30.0, 90.0, 135.0, 200.0])
@pytest.mark.parametrize("period", [8.0, 12.5])
def test_grating_orientation_and_period_from_fft(orientation_deg: float, period: float) -> None:
    size = 96
    stim = drifting_grating(
        1, size, size, orientation_deg=orientation_deg, spatial_period_px=period
    )
    image = stim.as_float()[0] - 0.5
    spectrum = np.abs(np.fft.fft2(image * np.outer(np.hanning(size), np.hanning(size))))
    row, col = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    fy, fx = np.fft.fftfreq(size)[row], np.fft.fftfreq(size)[col]
    # Wave vector (cycles/px) along orientation; "up" on screen is -row.
    theta = math.radians(orientation_deg)
    expected = np.array([-math.sin(theta), math.cos(theta)]) / period
    found = np.array([fy, fx])
    # The spectrum is symmetric: the peak is at +k or -k.
    error = min(np.linalg.norm(found - expected), np.linalg.norm(found + expected))
    assert error <= 1.0 / size


@pytest.mark.parametrize(
    ("orientation_deg", "shift_yx"), [(0.0, (0, 1)), (90.0, (-1, 0)), (180.0, (0, -1))]
)
def test_grating_drifts_along_orientation(
    orientation_deg: float, shift_yx: tuple[int, int]
) -> None:
    # Speed = f * P / frame_rate = 1.875 * 16 / 30 = 1 px per frame.
    stim = drifting_grating(
        4,
        32,
        32,
        orientation_deg=orientation_deg,
        spatial_period_px=16.0,
        temporal_freq_hz=1.875,
        frame_rate=30.0,
    )
    frames = stim.frames.astype(int)
    moved = np.roll(frames[0], shift_yx, axis=(0, 1))
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(moved[inner] - frames[1][inner]).max() <= 1
    assert np.abs(frames[0][inner] - frames[1][inner]).max() > 20


def test_grating_temporal_frequency() -> None:
    stim = drifting_grating(60, 8, 8, temporal_freq_hz=2.0, frame_rate=30.0, spatial_period_px=8)
    trace = stim.as_float()[:, 3, 5] - 0.5
    assert np.argmax(np.abs(np.fft.rfft(trace))) == 4  # 2 Hz over 2 s


def test_grating_aperture_and_square_wave() -> None:
    stim = drifting_grating(
        3, 41, 41, size_px=20.0, center_yx=(15.0, 25.0), square=True, spatial_period_px=10
    )
    frames = stim.frames.astype(int)
    rows, cols = np.mgrid[:41, :41]
    distance = np.hypot(rows - 15, cols - 25)
    assert np.all(frames[:, distance > 10.5] == 128)
    inside = frames[:, distance < 9.5]
    assert np.mean((inside == 0) | (inside == 255)) > 0.75  # square wave: mostly saturated
    assert np.mean(inside == 255) == pytest.approx(0.5, abs=0.15)


# --------------------------------------------------------------------------- moving bar


def _weighted_centroid(weights: np.ndarray) -> tuple[float, float]:
    rows, cols = np.mgrid[: weights.shape[0], : weights.shape[1]]
    total = weights.sum()
    return float((rows * weights).sum() / total), float((cols * weights).sum() / total)


@pytest.mark.parametrize("orientation_deg", [0.0, 45.0, 90.0, 180.0, 250.0])
@pytest.mark.parametrize("speed", [0.7, 2.0])
@pytest.mark.parametrize("polarity", [1, -1])
def test_moving_bar_moves_at_speed(orientation_deg: float, speed: float, polarity: int) -> None:
    size = 64
    stim = moving_bar(
        120,
        size,
        size,
        orientation_deg=orientation_deg,
        bar_width_px=4.0,
        bar_length_px=10.0,
        speed_px_per_frame=speed,
        polarity=polarity,
        contrast=0.8,
    )
    deviation = stim.frames.astype(float) - 128.0
    assert np.all(polarity * deviation >= -0.5)  # bright bars only brighten, dark only darken
    # Frames where the bar crosses the centre, fully on screen.
    start = stim.params["start_px"]
    crossing = [t for t in range(stim.n_frames) if abs(start + speed * t) < 12]
    theta = math.radians(orientation_deg)
    direction = np.array([-math.sin(theta), math.cos(theta)])  # (row, col) step of +u
    positions = []
    for t in crossing:
        cy, cx = _weighted_centroid(np.abs(deviation[t]))
        positions.append(float(np.dot([cy - 31.5, cx - 31.5], direction)))
    slope = np.polyfit(crossing, positions, 1)[0]
    assert slope == pytest.approx(speed, rel=0.02)
    # Before it enters, the screen is grey.
    assert np.all(stim.frames[0] == 128)


def test_moving_bar_dimensions() -> None:
    stim = moving_bar(
        80,
        64,
        64,
        orientation_deg=0.0,
        bar_width_px=6.0,
        bar_length_px=20.0,
        speed_px_per_frame=1.0,
    )
    start = stim.params["start_px"]
    t = round(-start)  # bar centred on the frame centre
    lit = stim.frames[t].astype(float) - 128.0
    rows_lit = np.flatnonzero(lit.max(axis=1) > 64)
    cols_lit = np.flatnonzero(lit.max(axis=0) > 64)
    assert len(rows_lit) == 20  # length runs across the motion (vertical for 0 deg)
    assert len(cols_lit) == 6
    assert lit.sum() / 127.0 == pytest.approx(6 * 20, rel=0.03)


# --------------------------------------------------------------------------- spot


@pytest.mark.parametrize(("center", "polarity"), [((10.0, 20.0), 1), ((22.3, 9.6), -1)])
def test_spot_location_polarity_and_timing(center: tuple[float, float], polarity: int) -> None:
    stim = spot(
        10,
        32,
        32,
        center_yx=center,
        radius_px=4.5,
        polarity=polarity,
        contrast=1.0,
        onset_frame=3,
        duration_frames=4,
    )
    deviation = stim.frames.astype(float) - 128.0
    on = [t for t in range(10) if np.any(deviation[t] != 0)]
    assert on == [3, 4, 5, 6]
    frame = deviation[4]
    assert np.all(polarity * frame >= 0)
    cy, cx = _weighted_centroid(np.abs(frame))
    assert cy == pytest.approx(center[0], abs=0.05) and cx == pytest.approx(center[1], abs=0.05)
    assert np.abs(frame).sum() / 127.5 == pytest.approx(math.pi * 4.5**2, rel=0.02)
    assert stim.frames[4][round(center[0]), round(center[1])] == (255 if polarity > 0 else 0)


# --------------------------------------------------------------------------- smoothness


@pytest.mark.parametrize(
    ("make", "param", "value", "step"),
    [
        (lambda v: spot(1, 24, 24, radius_px=v), "radius_px", 5.3, 0.05),
        (lambda v: spot(1, 24, 24, center_yx=(v, 11.0)), "center_yx", 10.2, 0.05),
        (
            lambda v: moving_bar(30, 24, 24, bar_width_px=v, orientation_deg=20),
            "bar_width_px",
            3.3,
            0.05,
        ),
        # Over 30 frames a speed nudge of 0.002 px/frame moves the bar by <= 0.06 px.
        (
            lambda v: moving_bar(30, 24, 24, speed_px_per_frame=v, orientation_deg=20),
            "speed",
            1.3,
            0.002,
        ),
        (
            lambda v: moving_bar(30, 24, 24, orientation_deg=v, bar_length_px=9.0),
            "orientation",
            33.0,
            0.05,
        ),
        (lambda v: drifting_grating(3, 24, 24, size_px=v), "size_px", 13.1, 0.05),
        (
            lambda v: drifting_grating(3, 24, 24, orientation_deg=v, square=True),
            "orientation",
            17.0,
            0.05,
        ),
        (
            lambda v: drifting_grating(3, 24, 24, spatial_period_px=v),
            "spatial_period_px",
            7.3,
            0.05,
        ),
        (lambda v: drifting_grating(3, 24, 24, contrast=v), "contrast", 0.5, 0.01),
    ],
)
def test_continuous_parameters_change_output_smoothly(
    make, param: str, value: float, step: float
) -> None:
    base = make(value).frames.astype(int)
    nudged = make(value + step).frames.astype(int)
    change = np.abs(nudged - base).max()
    # Small nudges move anti-aliased edges by a fraction of a pixel: a few grey levels,
    # far from the 128+ jumps hard edges would make.
    assert 0 < change <= 16, f"{param}: max change {change}"


# --------------------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda: checkerboard_noise(0, 8, 8), "n_frames"),
        (lambda: checkerboard_noise(4, -1, 8), "height"),
        (lambda: checkerboard_noise(4, 8, 8, check_size=0), "check_size"),
        (lambda: checkerboard_noise(4, 8, 8, contrast=1.5), "contrast"),
        (lambda: checkerboard_noise(4, 8, 8, seed=-1), "seed"),
        (lambda: checkerboard_noise(4, 8, 8, frame_rate=0), "frame_rate"),
        (lambda: checkerboard_noise(4.5, 8, 8), "n_frames"),
        (lambda: full_field_flash(4, 8, 8, on_frames=0), "on_frames"),
        (lambda: full_field_flash(4, 8, 8, off_frames=-2), "off_frames"),
        (lambda: full_field_flash(4, 8, 8, contrast=-0.1), "contrast"),
        (lambda: chirp(0, 8), "height"),
        (lambda: chirp(8, 8, frame_rate=-30), "frame_rate"),
        (lambda: drifting_grating(4, 8, 8, spatial_period_px=1.0), "spatial_period_px"),
        (lambda: drifting_grating(4, 8, 8, temporal_freq_hz=-1.0), "temporal_freq_hz"),
        (lambda: drifting_grating(4, 8, 8, size_px=-3.0), "size_px"),
        (lambda: drifting_grating(4, 8, 8, contrast=2.0), "contrast"),
        (lambda: drifting_grating(4, 8, 8, orientation_deg=float("nan")), "orientation_deg"),
        (lambda: drifting_grating(4, 8, 8, center_yx=(1.0,)), "center_yx"),
        (lambda: moving_bar(4, 8, 8, bar_width_px=0.0), "bar_width_px"),
        (lambda: moving_bar(4, 8, 8, bar_length_px=-1.0), "bar_length_px"),
        (lambda: moving_bar(4, 8, 8, speed_px_per_frame=-1.0), "speed_px_per_frame"),
        (lambda: moving_bar(4, 8, 8, polarity=0), "polarity"),
        (lambda: spot(4, 8, 8, radius_px=-2.0), "radius_px"),
        (lambda: spot(4, 8, 8, polarity=2), "polarity"),
        (lambda: spot(4, 8, 8, onset_frame=4), "onset_frame"),
        (lambda: spot(4, 8, 8, duration_frames=0), "duration_frames"),
        (lambda: spot(4, 8, 8, center_yx=(1.0, float("inf"))), "center_yx"),
    ],
)
def test_bad_parameters_raise_naming_the_parameter(make, param: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=param):
            make()


# --------------------------------------------------------------------------- import rules


def test_stimulus_modules_do_not_import_torch() -> None:
    # The rig PC has no torch: importing and using the library must not pull it in.
    code = (
        "import sys\n"
        "import stimuli.families, stimuli.natural, stimuli.video_file, stimuli.contrast\n"
        "stimuli.families.spot(2, 8, 8)\n"
        "stimuli.natural.natural_movie(2, 8, 8, photos=['camera'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'psychopy', 'vist_model', 'insilico', 'rig_bridge'})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr

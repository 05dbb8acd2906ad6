"""Natural movies from bundled photos, and stimuli read from video files."""

from __future__ import annotations

import socket
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from stimuli.contrast import rms_contrast
from stimuli.natural import (
    PHOTOS,
    disjoint_photo_sets,
    eye_movement_path,
    load_photo,
    natural_movie,
)
from stimuli.video_file import VideoFileError, load_video

# --------------------------------------------------------------------------- photos


def test_every_photo_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a photo tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    load_photo.cache_clear()
    for name in PHOTOS:
        photo = load_photo(name)
        assert photo.ndim == 2 and photo.dtype == np.float32, name
        assert min(photo.shape) >= 150, name
        assert 0.0 <= photo.min() and photo.max() <= 1.0, name
        assert photo.std() > 0.03, name
        assert not photo.flags.writeable
    assert len(set(PHOTOS)) == len(PHOTOS) >= 12


def test_unknown_photo_is_rejected() -> None:
    with pytest.raises(ValueError, match="'lena'"):
        load_photo("lena")
    with pytest.raises(ValueError, match="'cat'"):
        natural_movie(4, 8, 8, photos=["camera", "cat"])
    with pytest.raises(ValueError, match="photos"):
        natural_movie(4, 8, 8, photos=[])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_disjoint_photo_sets(seed: int) -> None:
    train, test = disjoint_photo_sets(seed)
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(PHOTOS)
    assert len(train) == len(PHOTOS) // 2
    assert disjoint_photo_sets(seed) == (train, test)
    assert disjoint_photo_sets(seed + 100) != (train, test)


# --------------------------------------------------------------------------- movies


@pytest.mark.parametrize(("mean", "rms"), [(0.5, 0.2), (0.5, 0.3), (0.4, 0.12)])
def test_natural_movie_mean_and_contrast(mean: float, rms: float) -> None:
    stim = natural_movie(60, 24, 32, photos=PHOTOS[:4], mean=mean, rms_contrast=rms, seed=2)
    assert stim.shape == (60, 24, 32)
    assert stim.frames.dtype == np.uint8
    assert stim.name == "natural_movie"
    assert abs(stim.frames.mean() / 255.0 - mean) < 2e-3
    assert abs(rms_contrast(stim.frames) - rms) < 2e-3
    if mean == 0.5:
        assert abs(stim.frames.mean() - 127.5) < 0.6


def test_natural_movie_deterministic_from_seed() -> None:
    kwargs = {"photos": ["camera", "grass"], "saccade_prob": 0.3, "photo_switch_prob": 0.5}
    a = natural_movie(40, 16, 16, seed=5, **kwargs)
    assert a == natural_movie(40, 16, 16, seed=5, **kwargs)
    assert not np.array_equal(a.frames, natural_movie(40, 16, 16, seed=6, **kwargs).frames)


def test_natural_movie_fixations_are_smooth_and_saccades_jump() -> None:
    stim = natural_movie(
        150,
        32,
        32,
        photos=["astronaut", "coffee", "chelsea"],
        seed=3,
        fixation_frames=8,
        saccade_prob=0.15,
        drift_px_per_frame=0.3,
        zoom_rate=0.002,
    )
    rng = np.random.default_rng(3)
    path = eye_movement_path(
        150,
        [load_photo(n).shape for n in ("astronaut", "coffee", "chelsea")],
        32,
        32,
        rng,
        fixation_frames=8,
        saccade_prob=0.15,
        drift_px_per_frame=0.3,
        zoom_rate=0.002,
    )  # same generator state as inside natural_movie, so the same path
    assert stim.params["n_saccades"] == int(path.saccade.sum()) >= 3
    frames = stim.as_float().reshape(150, -1)
    correlation = np.array([np.corrcoef(frames[t - 1], frames[t])[0, 1] for t in range(1, 150)])
    jumps = path.saccade[1:]
    assert np.median(correlation[~jumps]) > 0.95
    assert np.median(correlation[jumps]) < 0.6


def test_eye_movement_path_statistics() -> None:
    shapes = [(300, 400), (512, 512)]
    rng = np.random.default_rng(0)
    path = eye_movement_path(
        2000,
        shapes,
        20,
        30,
        rng,
        fixation_frames=5,
        saccade_prob=0.2,
        photo_switch_prob=1.0,
        drift_px_per_frame=0.4,
        zoom_range=(1.0, 3.0),
        zoom_rate=0.01,
    )
    saccade_frames = np.flatnonzero(path.saccade)
    assert len(saccade_frames) > 100
    assert np.diff(saccade_frames).min() >= 5  # fixations last at least fixation_frames
    # photo_switch_prob=1: every saccade lands on the other photo.
    assert np.all(path.photo_index[saccade_frames] != path.photo_index[saccade_frames - 1])
    assert np.all(np.diff(path.photo_index)[~path.saccade[1:]] == 0)
    # Zoom stays in range and the window stays inside its photo.
    assert path.scale.min() >= 1.0 - 1e-9 and path.scale.max() <= 3.0 + 1e-9
    for photo, (h, w) in enumerate(shapes):
        on = path.photo_index == photo
        half_y, half_x = 9.5 * path.scale[on], 14.5 * path.scale[on]
        assert np.all(path.center_yx[on, 0] - half_y >= -1e-9)
        assert np.all(path.center_yx[on, 0] + half_y <= h - 1 + 1e-9)
        assert np.all(path.center_yx[on, 1] - half_x >= -1e-9)
        assert np.all(path.center_yx[on, 1] + half_x <= w - 1 + 1e-9)
    # Drift: per-axis steps during fixation have std ~ drift * scale (in photo pixels).
    steps = (
        np.diff(path.center_yx, axis=0)[~path.saccade[1:]] / path.scale[1:, None][~path.saccade[1:]]
    )
    assert np.median(np.abs(steps)) == pytest.approx(0.4 * 0.6745, rel=0.15)
    # Slow zoom: log scale changes by at most zoom_rate per fixation frame.
    log_steps = np.abs(np.diff(np.log(path.scale)))[~path.saccade[1:]]
    assert log_steps.max() <= 0.01 + 1e-9


def test_movies_from_disjoint_sets_use_only_their_photos() -> None:
    train, test = disjoint_photo_sets(0)
    mov1 = natural_movie(60, 16, 16, photos=train, seed=0, saccade_prob=0.3, photo_switch_prob=1.0)
    mov2 = natural_movie(60, 16, 16, photos=test, seed=1, saccade_prob=0.3, photo_switch_prob=1.0)
    assert len(mov1.params["photo_sequence"]) > 2
    assert set(mov1.params["photo_sequence"]) <= set(train)
    assert set(mov2.params["photo_sequence"]) <= set(test)
    assert mov1.params["photos"] == tuple(train)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"rms_contrast": 0.6}, "rms"),
        ({"mean": 1.2}, "mean"),
        ({"saccade_prob": 1.5}, "saccade_prob"),
        ({"drift_px_per_frame": -1.0}, "drift_px_per_frame"),
        ({"zoom_range": (2.0, 1.0)}, "zoom_range"),
        ({"zoom_range": (0.0, 1.0)}, "zoom_range"),
        ({"fixation_frames": 0}, "fixation_frames"),
        ({"seed": -3}, "seed"),
        ({"frame_rate": 0.0}, "frame_rate"),
    ],
)
def test_natural_movie_bad_parameters(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        natural_movie(10, 8, 8, photos=["camera"], **kwargs)


# --------------------------------------------------------------------------- video files

SOURCE_FPS = 20.0
N_SOURCE = 20


def _level(index: int) -> int:
    return 20 + 10 * index


@pytest.fixture(scope="module")
def synthetic_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48x64 RGB mp4 at 20 fps: frame i has a left half at grey 20 + 10 i, right half inverted."""
    frames = np.empty((N_SOURCE, 48, 64, 3), dtype=np.uint8)
    for i in range(N_SOURCE):
        frames[i, :, :32] = _level(i)
        frames[i, :, 32:] = 255 - _level(i)
    path = tmp_path_factory.mktemp("video") / "synthetic.mp4"
    iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=SOURCE_FPS)
    return path


def _source_index(frame: np.ndarray) -> float:
    """Which source frame an output frame shows, from its left-half grey level."""
    return (float(frame[:, 1:3].mean()) - 20.0) / 10.0


def test_video_round_trip_same_rate(synthetic_mp4: Path) -> None:
    stim = load_video(synthetic_mp4, height=12, width=16)
    assert stim.shape == (N_SOURCE, 12, 16)
    assert stim.name == "video_file"
    assert stim.frame_rate == pytest.approx(SOURCE_FPS)
    assert stim.params["source_fps"] == pytest.approx(SOURCE_FPS)
    assert stim.params["source_shape"] == (48, 64)
    assert stim.params["path"] == str(synthetic_mp4)
    for i, frame in enumerate(stim.frames.astype(float)):
        assert np.abs(frame[:, 1:6] - _level(i)).max() <= 4
        assert np.abs(frame[:, 10:15] - (255 - _level(i))).max() <= 4


def test_video_frame_rate_down_conversion(synthetic_mp4: Path) -> None:
    stim = load_video(synthetic_mp4, height=6, width=8, frame_rate=10.0)
    assert stim.shape == (10, 6, 8)  # 1 s of video at 10 Hz
    assert stim.frame_rate == 10.0
    shown = [_source_index(f.astype(float)) for f in stim.frames]
    assert np.allclose(shown, np.arange(0, 20, 2), atol=0.4)


def test_video_frame_rate_up_conversion_and_length(synthetic_mp4: Path) -> None:
    stim = load_video(synthetic_mp4, height=6, width=8, frame_rate=50.0, n_frames=30)
    assert stim.shape == (30, 6, 8)
    shown = np.array([_source_index(f.astype(float)) for f in stim.frames])
    wanted = np.arange(30) * SOURCE_FPS / 50.0
    assert np.all(np.abs(shown - wanted) <= 0.5 + 0.4)  # nearest source frame (+ codec noise)
    assert np.all(np.diff(np.rint(shown)) >= 0)
    assert stim.params["source_frames_read"] <= N_SOURCE
    with pytest.raises(VideoFileError, match="too short"):
        load_video(synthetic_mp4, height=6, width=8, frame_rate=50.0, n_frames=60)


def test_video_mean_and_contrast(synthetic_mp4: Path) -> None:
    stim = load_video(synthetic_mp4, height=6, width=8, mean=0.5, rms_contrast=0.1)
    assert abs(stim.frames.mean() / 255 - 0.5) < 2e-3
    assert abs(rms_contrast(stim.frames) - 0.1) < 2e-3
    assert stim.params["mean"] == 0.5 and stim.params["rms_contrast"] == 0.1


def test_video_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        load_video(missing, 8, 8)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video")
    with pytest.raises(VideoFileError, match="garbage.mp4"):
        load_video(garbage, 8, 8)
    with pytest.raises(ValueError, match="height"):
        load_video(garbage, 0, 8)

"""Natural movies: scikit-image's bundled photographs seen through simulated eye movements.

A movie is a window sliding over greyscale photographs: fixational drift (a Gaussian
random walk), saccades (jumps to a new random spot, sometimes onto the next photo) and
slow zooms. Frames are sampled with bilinear interpolation after a Gaussian
anti-aliasing blur matched to the zoom, then the whole clip is set to a requested mean
and RMS contrast. Only photos shipped inside the scikit-image wheel are used, so
nothing is downloaded.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from stimuli._checks import (
    require_float,
    require_frame_rate,
    require_frame_size,
    require_int,
)
from stimuli.contrast import set_mean_and_contrast, to_uint8
from stimuli.errors import InputError
from stimuli.stimulus import Stimulus

PHOTOS: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
"""``skimage.data`` photographs bundled in the wheel (checked loading with the network
blocked and without pooch, scikit-image 0.26). Left out: ``cat`` (the same photo as
``chelsea``, which would break train/test disjointness), synthetic images (colorwheel,
logo, horse, shepp_logan_phantom, checkerboard), the 102 px ``microaneurysms``, and
datasets that need a download (eagle, lily, brain, ...)."""

ANTI_ALIAS_SIGMA_STEP = 0.25
"""Blur widths are rounded to this many photo pixels so blurred photos can be reused."""


@functools.lru_cache(maxsize=len(PHOTOS))
def load_photo(name: str) -> np.ndarray:
    """A bundled photo as greyscale luma.

    Args:
        name: one of ``PHOTOS``.

    Returns:
        Read-only float32 ``[h, w]`` in [0, 1].
    """
    if name not in PHOTOS:
        raise InputError(f"photo {name!r} is not one of the bundled PHOTOS: {', '.join(PHOTOS)}")
    from skimage import color, data, util  # skimage import is slow; only pay for it here

    image = getattr(data, name)()
    if image.ndim == 3:
        if image.shape[-1] == 4:
            image = color.rgba2rgb(image)
        grey = color.rgb2gray(image)
    else:
        grey = util.img_as_float(image)
    grey = np.asarray(grey, dtype=np.float32)
    grey.flags.writeable = False
    return grey


def disjoint_photo_sets(seed: int = 0) -> tuple[list[str], list[str]]:
    """Split ``PHOTOS`` at random into two disjoint halves (training movie, test movie).

    Args:
        seed: seed of the numpy generator; the same seed gives the same split.

    Returns:
        ``(train_photos, test_photos)``: together they are ``PHOTOS``; the first has
        ``len(PHOTOS) // 2`` names.
    """
    seed = require_int("seed", seed, minimum=0)
    order = np.random.default_rng(seed).permutation(len(PHOTOS))
    half = len(PHOTOS) // 2
    return [PHOTOS[i] for i in order[:half]], [PHOTOS[i] for i in order[half:]]


@dataclass(frozen=True, eq=False)
class EyePath:
    """Where the simulated eye looks on each frame.

    Attributes:
        photo_index: int ``[T]``, index into the photo sequence given to the path.
        center_yx: float ``[T, 2]``, window centre in that photo's pixel coordinates.
        scale: float ``[T]``, photo pixels per screen pixel (> 1 zooms out).
        saccade: bool ``[T]``, True on frames where a saccade landed.
    """

    photo_index: np.ndarray
    center_yx: np.ndarray
    scale: np.ndarray
    saccade: np.ndarray


def _max_scale(photo_shape: tuple[int, int], height: int, width: int) -> float:
    """Largest scale at which an ``H x W`` window still fits inside the photo."""
    limits = [
        (photo_len - 1) / (screen_len - 1)
        for photo_len, screen_len in zip(photo_shape, (height, width), strict=True)
        if screen_len > 1
    ]
    return min(limits) if limits else math.inf


def _clamp_center(
    center: np.ndarray, photo_shape: tuple[int, int], height: int, width: int, scale: float
) -> np.ndarray:
    half = np.array([(height - 1) / 2.0, (width - 1) / 2.0]) * scale
    low = half
    high = np.array(photo_shape, dtype=np.float64) - 1.0 - half
    return np.clip(center, low, np.maximum(low, high))


def eye_movement_path(
    n_frames: int,
    photo_shapes: Sequence[tuple[int, int]],
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    fixation_frames: int = 10,
    saccade_prob: float = 0.1,
    photo_switch_prob: float = 0.25,
    drift_px_per_frame: float = 0.5,
    zoom_range: tuple[float, float] = (1.0, 2.0),
    zoom_rate: float = 0.005,
) -> EyePath:
    """Simulate fixational drift, saccades and slow zooms over a sequence of photos.

    The eye starts on photo 0 at a random spot. After at least ``fixation_frames``
    frames of fixation, each frame saccades with probability ``saccade_prob`` to a
    uniformly random spot; a saccade moves on to the next photo (cyclically) with
    probability ``photo_switch_prob``. Each fixation draws a zoom log-uniformly in
    ``zoom_range`` and lets it creep by ``zoom_rate`` (log units per frame) in a random
    direction, bouncing at the range ends. The window never leaves the photo: the scale
    is capped for small photos and the centre is clamped.

    Args:
        n_frames: number of frames ``T``.
        photo_shapes: ``(h, w)`` of each photo, in the order they are visited.
        height, width: screen size in pixels.
        rng: numpy random generator (the only source of randomness).
        fixation_frames: minimum frames between saccades (>= 1).
        saccade_prob: per-frame saccade probability once the minimum has passed, in [0, 1].
        photo_switch_prob: probability that a saccade lands on the next photo, in [0, 1].
        drift_px_per_frame: standard deviation of the drift step per axis, in screen
            pixels per frame (>= 0).
        zoom_range: ``(min, max)`` photo pixels per screen pixel, 0 < min <= max.
        zoom_rate: zoom speed in natural-log units per frame (>= 0).

    Returns:
        The per-frame ``EyePath``.
    """
    n_frames = require_int("n_frames", n_frames, minimum=1)
    fixation_frames = require_int("fixation_frames", fixation_frames, minimum=1)
    saccade_prob = require_float("saccade_prob", saccade_prob, minimum=0.0, maximum=1.0)
    photo_switch_prob = require_float(
        "photo_switch_prob", photo_switch_prob, minimum=0.0, maximum=1.0
    )
    drift_px_per_frame = require_float("drift_px_per_frame", drift_px_per_frame, minimum=0.0)
    zoom_rate = require_float("zoom_rate", zoom_rate, minimum=0.0)
    if not isinstance(zoom_range, tuple | list) or len(zoom_range) != 2:
        raise InputError(f"zoom_range must be a (min, max) pair, got {zoom_range!r}")
    zoom_min = require_float("zoom_range[0]", zoom_range[0], minimum=0.0, strict_minimum=True)
    zoom_max = require_float("zoom_range[1]", zoom_range[1], minimum=zoom_min)
    if not photo_shapes:
        raise InputError("photo_shapes must name at least one photo")
    log_min, log_max = math.log(zoom_min), math.log(zoom_max)

    photo_index = np.empty(n_frames, dtype=np.int64)
    centers = np.empty((n_frames, 2), dtype=np.float64)
    scales = np.empty(n_frames, dtype=np.float64)
    saccades = np.zeros(n_frames, dtype=bool)

    def new_fixation(photo: int) -> tuple[np.ndarray, float, float]:
        log_scale = rng.uniform(log_min, log_max)
        direction = rng.choice((-1.0, 1.0))
        scale = min(math.exp(log_scale), _max_scale(photo_shapes[photo], height, width))
        half = np.array([(height - 1) / 2.0, (width - 1) / 2.0]) * scale
        high = np.maximum(half, np.array(photo_shapes[photo], dtype=np.float64) - 1.0 - half)
        return rng.uniform(half, high), log_scale, direction

    photo = 0
    center, log_scale, zoom_direction = new_fixation(photo)
    since_saccade = 0
    for frame in range(n_frames):
        if frame > 0:
            since_saccade += 1
            if since_saccade >= fixation_frames and rng.random() < saccade_prob:
                if rng.random() < photo_switch_prob:
                    photo = (photo + 1) % len(photo_shapes)
                center, log_scale, zoom_direction = new_fixation(photo)
                since_saccade = 0
                saccades[frame] = True
            else:
                log_scale += zoom_direction * zoom_rate
                # Bounce off the ends of the zoom range rather than sticking to them.
                if log_scale > log_max or log_scale < log_min:
                    zoom_direction = -zoom_direction
                    log_scale = float(np.clip(log_scale, log_min, log_max))
                scale_now = min(math.exp(log_scale), _max_scale(photo_shapes[photo], height, width))
                center = center + rng.normal(0.0, drift_px_per_frame * scale_now, size=2)
        scale = min(math.exp(log_scale), _max_scale(photo_shapes[photo], height, width))
        center = _clamp_center(center, photo_shapes[photo], height, width, scale)
        photo_index[frame] = photo
        centers[frame] = center
        scales[frame] = scale
    return EyePath(photo_index=photo_index, center_yx=centers, scale=scales, saccade=saccades)


def _render_path(
    photos: Sequence[np.ndarray], path: EyePath, height: int, width: int
) -> np.ndarray:
    """Sample each frame's window from its photo.

    Args:
        photos: float ``[h, w]`` images indexed by ``path.photo_index``.

    Returns:
        float64 ``[T, H, W]``.
    """
    rows = np.arange(height, dtype=np.float64)[:, None] - (height - 1) / 2.0  # [H, 1]
    cols = np.arange(width, dtype=np.float64)[None, :] - (width - 1) / 2.0  # [1, W]
    blurred: dict[tuple[int, float], np.ndarray] = {}
    movie = np.empty((len(path.scale), height, width), dtype=np.float64)
    for frame, (photo, (cy, cx), scale) in enumerate(
        zip(path.photo_index, path.center_yx, path.scale, strict=True)
    ):
        # Shrinking by `scale` needs a low-pass of about (scale - 1) / 2 photo pixels
        # (skimage.transform.resize's rule) or fine textures alias into moire.
        sigma = round(max(0.0, (scale - 1.0) / 2.0) / ANTI_ALIAS_SIGMA_STEP) * ANTI_ALIAS_SIGMA_STEP
        key = (int(photo), sigma)
        if key not in blurred:
            source = photos[photo].astype(np.float64)
            blurred[key] = ndimage.gaussian_filter(source, sigma) if sigma > 0 else source
        coords = np.stack(np.broadcast_arrays(cy + rows * scale, cx + cols * scale))  # [2, H, W]
        movie[frame] = ndimage.map_coordinates(blurred[key], coords, order=1, mode="nearest")
    return movie


def natural_movie(
    n_frames: int,
    height: int,
    width: int,
    photos: Sequence[str] = PHOTOS,
    frame_rate: float = 30.0,
    mean: float = 0.5,
    rms_contrast: float = 0.2,
    seed: int = 0,
    fixation_frames: int = 10,
    saccade_prob: float = 0.1,
    photo_switch_prob: float = 0.25,
    drift_px_per_frame: float = 0.5,
    zoom_range: tuple[float, float] = (1.0, 2.0),
    zoom_rate: float = 0.005,
) -> Stimulus:
    """A natural movie: bundled photos viewed through simulated eye movements.

    Each photo is standardised (zero mean, unit std) so photos of different exposure
    contribute comparable contrast; the finished clip is then set to ``mean`` and
    ``rms_contrast`` over all its frames (see ``stimuli.contrast.set_mean_and_contrast``).

    Args:
        n_frames: number of frames ``T``.
        height: frame height ``H`` in pixels.
        width: frame width ``W`` in pixels.
        photos: names from ``PHOTOS``, visited in this order (cyclically); use
            ``disjoint_photo_sets`` to keep training and test movies apart.
        frame_rate: Hz.
        mean: mean intensity of the clip in (0, 1).
        rms_contrast: RMS contrast of the clip (pixel std in units of the full range).
        seed: seed of the numpy generator; the same seed gives the same clip.
        fixation_frames, saccade_prob, photo_switch_prob, drift_px_per_frame,
        zoom_range, zoom_rate: the eye-movement model, see ``eye_movement_path``
            (times in frames, distances in screen pixels).

    Returns:
        ``Stimulus`` named ``"natural_movie"`` with frames uint8 ``[T, H, W]``; params
        record the settings, ``photo_sequence`` (photos in the order shown) and
        ``n_saccades``.
    """
    n_frames, height, width = require_frame_size(n_frames, height, width)
    frame_rate = require_frame_rate(frame_rate)
    seed = require_int("seed", seed, minimum=0)
    if isinstance(photos, str) or not isinstance(photos, Sequence) or len(photos) == 0:
        raise InputError(
            f"photos must be a non-empty sequence of names from PHOTOS, got {photos!r}"
        )
    images = [load_photo(name) for name in photos]
    standardised = [(image - image.mean()) / image.std() for image in images]

    rng = np.random.default_rng(seed)
    path = eye_movement_path(
        n_frames,
        [image.shape for image in images],
        height,
        width,
        rng,
        fixation_frames=fixation_frames,
        saccade_prob=saccade_prob,
        photo_switch_prob=photo_switch_prob,
        drift_px_per_frame=drift_px_per_frame,
        zoom_range=zoom_range,
        zoom_rate=zoom_rate,
    )
    movie = _render_path(standardised, path, height, width)
    frames = to_uint8(set_mean_and_contrast(movie, mean=mean, rms=rms_contrast))

    shown = [int(path.photo_index[0])]
    for index in path.photo_index[1:]:
        if index != shown[-1]:
            shown.append(int(index))
    return Stimulus(
        frames=frames,
        frame_rate=frame_rate,
        name="natural_movie",
        params={
            "n_frames": n_frames,
            "height": height,
            "width": width,
            "photos": tuple(photos),
            "frame_rate": frame_rate,
            "mean": float(mean),
            "rms_contrast": float(rms_contrast),
            "seed": seed,
            "fixation_frames": fixation_frames,
            "saccade_prob": saccade_prob,
            "photo_switch_prob": photo_switch_prob,
            "drift_px_per_frame": drift_px_per_frame,
            "zoom_range": tuple(zoom_range),
            "zoom_rate": zoom_rate,
            "photo_sequence": tuple(photos[i] for i in shown),
            "n_saccades": int(path.saccade.sum()),
        },
    )

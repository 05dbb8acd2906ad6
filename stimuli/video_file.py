"""Stimuli from video files (mp4 and anything else PyAV/FFmpeg decodes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stimuli._checks import require_float, require_frame_rate, require_int
from stimuli.contrast import rms_contrast as measure_rms_contrast
from stimuli.contrast import set_mean_and_contrast, to_uint8
from stimuli.errors import InputError
from stimuli.stimulus import Stimulus


class VideoFileError(InputError):
    """A video file exists but cannot be decoded, or lacks what the request needs."""


def _to_luma(frame: np.ndarray) -> np.ndarray:
    """Decoded frame ``[h, w]``, ``[h, w, 3]`` or ``[h, w, 4]`` -> float64 luma ``[h, w]`` in [0, 1]."""
    from skimage import color, util

    image = util.img_as_float(frame)
    if image.ndim == 2:
        return image
    if image.shape[-1] == 4:
        image = image[..., :3]  # video alpha is not shown on a stimulus screen
    return color.rgb2gray(image)


def load_video(
    path: str | Path,
    height: int,
    width: int,
    frame_rate: float | None = None,
    n_frames: int | None = None,
    mean: float | None = None,
    rms_contrast: float | None = None,
) -> Stimulus:
    """Read a video as a greyscale stimulus, resized and frame-rate converted.

    Frames are converted to luma (Rec. 709 weights, ``skimage.color.rgb2gray``) and
    resized to ``H x W`` with anti-aliasing (the aspect ratio follows the request; crop
    the file beforehand to keep it). Output frame ``k`` shows the source frame nearest
    to time ``k / frame_rate``, so frames are repeated or dropped, never blended.

    Args:
        path: video file (mp4, mov, avi, ...), decoded with imageio's pyav plugin.
        height: output frame height ``H`` in pixels.
        width: output frame width ``W`` in pixels.
        frame_rate: output rate in Hz; None keeps the file's rate.
        n_frames: output frames ``T``; None converts the whole file. Asking for more
            frames than the file lasts raises ``VideoFileError``.
        mean: if given (or if ``rms_contrast`` is), the clip is rescaled to this mean
            intensity in (0, 1); None keeps the file's own mean.
        rms_contrast: if given (or if ``mean`` is), the clip is rescaled to this RMS
            contrast; None keeps the file's own contrast.

    Returns:
        ``Stimulus`` named ``"video_file"``, frames uint8 ``[T, H, W]``; params record
        the path, ``source_fps``, ``source_shape`` and the arguments.

    Raises:
        FileNotFoundError: no file at ``path``.
        VideoFileError: the file cannot be decoded, has no frame rate, or is too short.
    """
    import imageio.v3 as iio

    path = Path(path)
    height = require_int("height", height, minimum=1)
    width = require_int("width", width, minimum=1)
    if frame_rate is not None:
        frame_rate = require_frame_rate(frame_rate)
    if n_frames is not None:
        n_frames = require_int("n_frames", n_frames, minimum=1)
    if mean is not None:
        mean = require_float("mean", mean, minimum=0.0, maximum=1.0)
    if rms_contrast is not None:
        rms_contrast = require_float("rms_contrast", rms_contrast, minimum=0.0)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")

    try:
        metadata = iio.immeta(path, plugin="pyav")
    except Exception as error:  # imageio/PyAV raise a zoo of types for undecodable files
        raise VideoFileError(f"cannot read video {path}: {error}") from error
    source_fps = metadata.get("fps")
    if not source_fps or not math.isfinite(float(source_fps)) or float(source_fps) <= 0:
        raise VideoFileError(f"video {path} does not report a usable frame rate ({source_fps!r})")
    source_fps = float(source_fps)
    out_fps = source_fps if frame_rate is None else frame_rate

    # With a fixed output length we know the last source frame needed and can stop early.
    last_needed = None if n_frames is None else round((n_frames - 1) / out_fps * source_fps)

    from skimage.transform import resize

    source: list[np.ndarray] = []  # resized luma, one [H, W] per decoded frame
    source_shape: tuple[int, int] | None = None
    try:
        for index, frame in enumerate(iio.imiter(path, plugin="pyav")):
            luma = _to_luma(np.asarray(frame))
            source_shape = (int(luma.shape[0]), int(luma.shape[1]))
            source.append(resize(luma, (height, width), order=1, anti_aliasing=True))
            if last_needed is not None and index >= last_needed:
                break
    except Exception as error:
        raise VideoFileError(f"cannot decode video {path}: {error}") from error
    if not source:
        raise VideoFileError(f"video {path} contains no frames")

    available = math.floor(len(source) / source_fps * out_fps + 1e-9)
    if n_frames is None:
        n_frames = max(1, available)
    elif last_needed is not None and last_needed >= len(source):
        raise VideoFileError(
            f"video {path} has {len(source)} frames at {source_fps:g} Hz, too short for "
            f"{n_frames} frames at {out_fps:g} Hz"
        )
    times = np.arange(n_frames, dtype=np.float64) / out_fps
    indices = np.clip(np.rint(times * source_fps).astype(np.int64), 0, len(source) - 1)
    clip = np.stack([source[i] for i in indices])  # [T, H, W]

    if mean is not None or rms_contrast is not None:
        clip = set_mean_and_contrast(
            clip,
            mean=float(clip.mean()) if mean is None else mean,
            rms=measure_rms_contrast(clip) if rms_contrast is None else rms_contrast,
        )
    return Stimulus(
        frames=to_uint8(clip),
        frame_rate=out_fps,
        name="video_file",
        params={
            "path": str(path),
            "height": height,
            "width": width,
            "frame_rate": out_fps,
            "n_frames": n_frames,
            "mean": mean,
            "rms_contrast": rms_contrast,
            "source_fps": source_fps,
            "source_shape": source_shape,
            "source_frames_read": len(source),
        },
    )

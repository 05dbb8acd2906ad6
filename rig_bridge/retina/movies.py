"""Natural-like random movies: 1/f spatial spectrum, low-pass temporal spectrum.

Used to calibrate cell gains (so natural movies at RMS 0.2 drive the cells well) and to
measure response reliability. Real natural movies have a roughly 1/f amplitude spectrum
in space and little power above a few Hz in time; this generator has both, and an exact
mean and RMS contrast.
"""

from __future__ import annotations

import numpy as np

from stimuli.contrast import set_mean_and_contrast
from stimuli.errors import InputError


def smooth_random_movie(
    n_frames: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    rms_contrast: float = 0.2,
    mean: float = 0.5,
    frame_rate: float = 30.0,
    temporal_corner_hz: float = 3.0,
    spatial_exponent: float = 1.0,
) -> np.ndarray:
    """Gaussian noise shaped to ``|A(k, f)| = |k|^-spatial_exponent / sqrt(1 + (f/f_c)^2)``.

    The spectrum is shaped with one 3-D FFT (so the movie wraps around in time and
    space), then mapped to the requested mean and RMS contrast within [0, 1] by
    :func:`stimuli.contrast.set_mean_and_contrast` (same budget definition as the
    toolkit: std of the intensities over the whole clip).

    Args:
        n_frames, height, width: output size.
        rng: source of randomness.
        rms_contrast: std of the intensities (fraction of full range).
        mean: mean intensity.
        frame_rate: frames per second (sets what ``temporal_corner_hz`` means).
        temporal_corner_hz: temporal frequency where the amplitude has dropped by sqrt 2.
        spatial_exponent: 1 for natural-image statistics, larger for smoother movies.

    Returns:
        ``[n_frames, height, width]`` float64 in [0, 1].
    """
    if n_frames < 1 or height < 1 or width < 1:
        raise InputError(f"movie size must be positive, got {(n_frames, height, width)}")
    if temporal_corner_hz <= 0:
        raise InputError(f"temporal_corner_hz must be > 0, got {temporal_corner_hz}")
    noise = rng.standard_normal((n_frames, height, width))
    ft = np.fft.fftfreq(n_frames, d=1.0 / frame_rate)[:, None, None]
    ky = np.fft.fftfreq(height)[None, :, None]
    kx = np.fft.rfftfreq(width)[None, None, :]
    k = np.sqrt(ky * ky + kx * kx)
    k[0, 0, 0] = 1.0  # keep the DC term finite; it is removed by the rescaling anyway
    amplitude = k ** (-spatial_exponent) / np.sqrt(1.0 + (ft / temporal_corner_hz) ** 2)
    shaped = np.fft.irfftn(np.fft.rfftn(noise) * amplitude, s=noise.shape, axes=(0, 1, 2))
    return set_mean_and_contrast(shaped, mean=mean, rms=rms_contrast)

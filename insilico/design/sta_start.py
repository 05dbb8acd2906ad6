"""A design's start from the cell's measured spike-triggered average (design setting `start = "sta"`).

For a linear cell the most exciting clip at a contrast budget is its space-time filter, played
so that the filter's lags end in the response window. The white-noise STA estimates that
filter, but its pixel noise spends the budget where the cell does not look: played as a clip
it reached 0.65 to 0.93 of the true optimum on the default simulation (6 linear cells, median
0.70). Its rank-1 space-time part (the leading SVD term of `[lags, pixels]`), blurred by
`BLUR_PX`, keeps the filter and drops most of the noise: 0.85 to 1.17. The gradient design
then refines that start through the twin (`optimize_gradient(start=...)`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from stimuli.errors import InsilicoError
from stimuli.recording import open_recording
from stimuli.recording.sta import sta_by_lag
from vist_model.receptive_fields import NOISE_SEGMENT_NAMES, noise_segment_names

BLUR_PX = 1.0


def has_noise_segment(recording: str | Path) -> bool:
    with open_recording(recording) as rec:
        return bool(noise_segment_names(rec))


def noise_stas(recording: str | Path) -> dict[int, np.ndarray]:
    """STA `[lags, H, W]` of every cell (by id) from the recording's white-noise segment."""
    with open_recording(recording) as rec:
        names = noise_segment_names(rec)
        if not names:
            raise InsilicoError(f"{recording}: design setting start = \"sta\" needs a white-noise segment (one of "
                                f"{', '.join(NOISE_SEGMENT_NAMES)}); it has none")
        frames = rec.frames(names[0]).astype(np.float32) / 255.0
        counts = np.nanmean(rec.counts(names[0]), axis=0)
        ids = [int(c) for c in rec.cell_ids]
    return dict(zip(ids, sta_by_lag(frames, counts).by_lag, strict=True))


def rank_one(sta: np.ndarray) -> np.ndarray:
    """The leading space-time SVD term of one STA `[lags, H, W]`, blurred by `BLUR_PX`."""
    k, h, w = sta.shape
    u, s, vt = np.linalg.svd(sta.reshape(k, h * w), full_matrices=False)
    part = (s[0] * np.outer(u[:, 0], vt[0])).reshape(k, h, w)
    return np.stack([gaussian_filter(frame, BLUR_PX) for frame in part])


def sta_start(sta: np.ndarray, n_frames: int, window: tuple[int, int]) -> np.ndarray:
    """A clip `[T, H, W]` around grey 0.5 whose lag-`l` frame sits `l` frames before the
    window's middle frame (the post-processor then scales it to the budget)."""
    filt = rank_one(sta)
    clip = np.zeros((n_frames, *filt.shape[1:]), dtype=np.float32)
    middle = (window[0] + window[1] - 1) // 2
    for lag, frame in enumerate(filt):
        if 0 <= middle - lag < n_frames:
            clip[middle - lag] = frame
    return 0.5 + clip

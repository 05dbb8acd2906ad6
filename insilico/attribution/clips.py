"""Which clips of the test movie a cell's attributions are computed on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stimuli.errors import InputError


@dataclass(frozen=True)
class Clip:
    """Frames `[end - window, end)` of the test segment (indices within the segment).

    `kind` is `top` (the cell fired most here) or `random`.
    """

    end: int
    window: int
    kind: str

    @property
    def start(self) -> int:
        return self.end - self.window


def clip_scores(response: np.ndarray, window: int, response_frames: int) -> np.ndarray:
    """Recorded response in each clip's time window, for every possible clip end.

    Args:
        response: `[T]` trial-averaged counts of one cell on the test segment.

    Returns:
        `[T + 1]`, entry `e` is the response summed over frames `[e - k, e)`; NaN where
        `e < window` (the clip would start before the segment).
    """
    response = np.asarray(response, dtype=np.float64)
    if response.ndim != 1:
        raise InputError(f"response must be [T], got shape {response.shape}")
    cumulative = np.concatenate([[0.0], np.cumsum(response)])
    scores = np.full(len(response) + 1, np.nan)
    ends = np.arange(window, len(response) + 1)
    scores[ends] = cumulative[ends] - cumulative[ends - response_frames]
    return scores


def random_clips(n_frames: int, window: int, n: int, seed: int) -> list[Clip]:
    """`n` clips at random positions (the same for every cell of a run)."""
    if n_frames < window:
        raise InputError(f"the test segment has {n_frames} frames, fewer than a {window}-frame clip")
    rng = np.random.default_rng(seed)
    ends = rng.choice(np.arange(window, n_frames + 1), size=min(n, n_frames - window + 1), replace=False)
    return [Clip(int(e), window, "random") for e in sorted(ends)]


def select_clips(response: np.ndarray, window: int, response_frames: int, n_top: int,
                 random: list[Clip]) -> list[Clip]:
    """The `n_top` clips where the cell fired most, then the random clips.

    Top clips are picked greedily by recorded response; their response windows are kept at
    least `window // 2` frames apart so that they are not one event counted several times.
    """
    if len(response) < window:
        raise InputError(f"the test segment has {len(response)} frames, fewer than a {window}-frame clip")
    scores = clip_scores(response, window, response_frames)
    order = np.argsort(np.where(np.isnan(scores), -np.inf, scores))[::-1]
    gap = max(1, window // 2)
    chosen: list[int] = []
    for end in order:
        if len(chosen) == n_top or np.isnan(scores[end]):
            break
        if all(abs(int(end) - c) >= gap for c in chosen):
            chosen.append(int(end))
    return [Clip(e, window, "top") for e in chosen] + list(random)

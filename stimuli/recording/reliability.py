"""Split-half reliability of repeated responses (how much of a response is repeatable)."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from stimuli.errors import InputError


def split_half_reliability(
    counts: np.ndarray, *, spearman_brown: bool = False, max_splits: int = 64
) -> np.ndarray:
    """Correlation across time between the mean responses of two halves of the repeats.

    Every split of the ``R`` repeats into ``R // 2`` and ``R - R // 2`` is used (a fixed random
    sample of ``max_splits`` of them when there are more) and the correlations averaged, so the
    answer does not depend on which repeats were grouped.

    Args:
        counts: ``[R, T, N]`` responses (spike counts or rates) to ``R >= 2`` repeats.
        spearman_brown: step the half-vs-half correlation up to the reliability of the
            mean over all repeats, ``2 r / (1 + r)``.

    Returns:
        ``[N]`` float64; NaN for a cell whose half-means do not vary in time.
    """
    array = np.asarray(counts, dtype=np.float64)
    if array.ndim != 3:
        raise InputError(f"counts must be [R, T, N], got shape {array.shape}")
    n_repeats, n_frames, n_cells = array.shape
    if n_repeats < 2 or n_frames < 2:
        raise InputError(f"need at least 2 repeats and 2 frames, got {n_repeats} and {n_frames}")
    total = array.sum(axis=0)
    splits = list(combinations(range(n_repeats), n_repeats // 2))
    if len(splits) > max_splits:
        pick = np.random.default_rng(0).choice(len(splits), size=max_splits, replace=False)
        splits = [splits[i] for i in sorted(pick)]
    correlations = np.zeros((len(splits), n_cells))
    with np.errstate(invalid="ignore", divide="ignore"):
        for s, first in enumerate(splits):
            a = array[list(first)].mean(axis=0)
            b = (total - array[list(first)].sum(axis=0)) / (n_repeats - len(first))
            a = a - a.mean(axis=0)
            b = b - b.mean(axis=0)
            norms = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
            correlations[s] = (a * b).sum(axis=0) / norms
        r = correlations.mean(axis=0)
        if spearman_brown:
            r = 2.0 * r / (1.0 + r)
    return r

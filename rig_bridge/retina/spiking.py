"""Spike counts from expected counts: Poisson, or Poisson with a dead time per bin."""

from __future__ import annotations

import numpy as np

from stimuli.errors import InputError

MAX_COUNT = np.iinfo(np.uint16).max


def poisson_counts(rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Independent Poisson counts with means ``rates`` (any shape, e.g. ``[T, N]``) -> uint16."""
    rates = _check_rates(rates)
    return np.minimum(rng.poisson(rates), MAX_COUNT).astype(np.uint16)


def dead_time_counts(rates: np.ndarray, rng: np.random.Generator, slots: int) -> np.ndarray:
    """Counts from a Poisson process with an absolute dead time, approximated per bin.

    Each bin is split into ``slots`` dead-time slots that hold at most one spike each:
    a slot fires with probability ``1 - exp(-rate / slots)``, so the count is
    ``Binomial(slots, 1 - exp(-rate / slots))``. That caps the count at ``slots``, makes
    it sub-Poisson (Fano factor < 1) at high rates, and approaches Poisson at low rates.

    Args:
        rates: expected counts per bin of the underlying Poisson drive, any shape.
        slots: bin width / dead time (>= 1).

    Returns:
        uint16 counts, the shape of ``rates``.
    """
    rates = _check_rates(rates)
    if slots < 1:
        raise InputError(f"slots must be >= 1, got {slots}")
    p = -np.expm1(-rates / slots)
    return rng.binomial(slots, p).astype(np.uint16)


def _check_rates(rates: np.ndarray) -> np.ndarray:
    array = np.asarray(rates, dtype=np.float64)
    if array.size and not (np.isfinite(array).all() and array.min() >= 0.0):
        raise InputError("rates must be finite and >= 0")
    return array

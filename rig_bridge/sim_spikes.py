"""Deterministic simulated spikes for one presentation, placed on the rig sample clock.

Counts come from the simulated retina with a generator seeded by (rig seed, request id,
repeat), so a presentation that is re-run after a crash yields the very same spikes, and a test
can recompute them independently. Within a frame bin, spike times are uniform.
"""

from __future__ import annotations

import hashlib

import numpy as np


def presentation_seed(rig_seed: int, request_id: str) -> int:
    """A 63-bit seed for one presentation, stable across processes (unlike hash())."""
    digest = hashlib.blake2b(f"{int(rig_seed)}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def repeat_rng(seed: int, repeat: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(repeat)])


def repeat_counts(retina: object, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spike counts `[T, N]` uint16 of one repeat of uint8 frames `[T, H, W]`."""
    video = frames.astype(np.float32) / np.float32(255.0)
    return retina.spikes(video, rng)  # type: ignore[attr-defined]


def spike_times(counts: np.ndarray, edges: np.ndarray, cell_ids: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spread counts `[T, N]` uniformly over bins `[edges[t], edges[t+1])` (`edges` `[T+1]`).

    Returns cell ids `[k]` and sample times `[k]` (int64), sorted by time.
    """
    t_idx, n_idx = np.nonzero(counts)
    reps = counts[t_idx, n_idx].astype(np.int64)
    t_all = np.repeat(t_idx, reps)
    cells = np.repeat(np.asarray(cell_ids, dtype=np.int64)[n_idx], reps)
    start = edges[t_all]
    width = edges[t_all + 1] - start
    samples = start + np.floor(rng.random(len(t_all)) * width).astype(np.int64)
    order = np.argsort(samples, kind="stable")
    return cells[order], samples[order]


def repeat_edges(first_sample: int, n_frames: int, frame_rate: float, sample_rate: float) -> np.ndarray:
    """Ideal flip sample times `[T+1]` of T frames at `frame_rate` starting at `first_sample`."""
    return first_sample + np.rint(np.arange(n_frames + 1) * (sample_rate / frame_rate)).astype(np.int64)

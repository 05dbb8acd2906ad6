"""Spike times on the rig clock -> spike counts per stimulus frame, using the flip events."""

from __future__ import annotations

import numpy as np

from stimuli.errors import InputError


def frame_edges(flips: np.ndarray, n_frames: int) -> np.ndarray:
    """Bin edges `[T + 1]` of one repeat from its flip events `[k, 2]` (frame index, sample).

    Every frame 0..T-1 and the end flip T must appear exactly once, in non-decreasing time.
    """
    flips = np.asarray(flips, dtype=np.int64).reshape(-1, 2)
    idx = flips[:, 0]
    if len(idx) != n_frames + 1 or not np.array_equal(np.sort(idx), np.arange(n_frames + 1)):
        have = len(np.unique(idx))
        raise InputError(f"flip events cover {have} of the {n_frames + 1} frame edges (0..{n_frames}) "
                         f"with {len(idx)} events")
    edges = np.empty(n_frames + 1, dtype=np.int64)
    edges[idx] = flips[:, 1]
    if (np.diff(edges) < 0).any():
        bad = int(np.flatnonzero(np.diff(edges) < 0)[0])
        raise InputError(f"flip times run backwards between frame {bad} and {bad + 1}")
    return edges


def bin_spikes(edges: np.ndarray, cell_ids: np.ndarray, spike_cells: np.ndarray,
               spike_samples: np.ndarray) -> np.ndarray:
    """Counts `[T, N]` of spikes (`spike_cells` `[k]`, `spike_samples` `[k]`) in bins `[edges[t], edges[t+1])`.

    Spikes outside the repeat (e.g. during inter-stimulus grey) are not counted; a spike of a
    cell id not in `cell_ids` raises ValueError.
    """
    ids = np.asarray(cell_ids, dtype=np.int64)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    spike_cells = np.asarray(spike_cells, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, spike_cells)
    pos_c = np.minimum(pos, len(ids) - 1)
    if len(spike_cells) and not np.array_equal(sorted_ids[pos_c], spike_cells):
        unknown = spike_cells[sorted_ids[pos_c] != spike_cells][:5]
        raise InputError(f"spikes from cell ids {unknown.tolist()} that the rig did not announce")
    col = order[pos_c]
    t = np.searchsorted(edges, np.asarray(spike_samples, dtype=np.int64), side="right") - 1
    inside = (t >= 0) & (t < len(edges) - 1)
    counts = np.zeros((len(edges) - 1, len(ids)), dtype=np.float32)
    np.add.at(counts, (t[inside], col[inside]), 1)
    return counts

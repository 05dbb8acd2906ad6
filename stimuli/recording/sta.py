"""Spike-triggered averages of a population from frames and binned spike counts (no torch).

Used by the simulate command and by the twin to estimate receptive fields; it lives beside the
recording format because both the rig side and the twin read RFs from recordings. For each lag
``l`` the STA is ``sum_t n[t] * s[t - l] / sum_t n[t]  -  mean_t s[t]``: the average
frame ``l`` bins before a spike, relative to the average frame, so a grey-mean stimulus
gives 0 where a pixel has no influence. Lag 0 is the frame shown in the spike's own bin.
One ``[N, T] @ [T, H*W]`` matrix multiply per lag does the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from stimuli.errors import InputError

DEFAULT_LAGS = range(0, 15)
"""0.5 s of lags at 30 frames/s."""

NOISE_SEGMENT_NAMES = ("noise", "white_noise", "whitenoise", "checkerboard")
"""Segment names (lower case) taken for white noise when receptive fields are estimated."""


@dataclass(frozen=True, eq=False)
class StaEstimate:
    """STAs at every lag and each cell's peak.

    Attributes:
        lags: ``[K]`` the lags (frames) that were averaged.
        by_lag: ``[N, K, H, W]`` STA at each lag.
        peak_lag: ``[N]`` the lag with the largest STA energy (sum of squares) per cell.
        spatial: ``[N, H, W]`` STA at each cell's peak lag.
        energy: ``[N, K]`` STA energy per lag (the temporal profile's power).
        n_spikes: ``[N]`` spikes that went into each average (0 -> all-zero STA).
    """

    lags: np.ndarray
    by_lag: np.ndarray
    peak_lag: np.ndarray
    spatial: np.ndarray
    energy: np.ndarray
    n_spikes: np.ndarray


def _check(
    frames: np.ndarray, counts: np.ndarray, lags: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frames = np.asarray(frames)
    counts = np.asarray(counts)
    if frames.ndim != 3:
        raise InputError(f"frames must be [T, H, W], got shape {frames.shape}")
    if not np.issubdtype(frames.dtype, np.floating):
        raise InputError(f"frames must be float (divide uint8 by 255), got dtype {frames.dtype}")
    if counts.ndim != 2 or counts.shape[0] != frames.shape[0]:
        raise InputError(
            f"counts must be [T, N] with T = {frames.shape[0]} frames, got shape {counts.shape}"
        )
    lag_array = np.asarray(list(lags), dtype=np.int64)
    if lag_array.ndim != 1 or lag_array.size == 0:
        raise InputError("lags must be a non-empty sequence of ints")
    if lag_array.min() < 0 or lag_array.max() >= frames.shape[0]:
        raise InputError(f"lags must lie in [0, T-1] = [0, {frames.shape[0] - 1}], got {lags}")
    return frames, counts.astype(np.float64), lag_array


def sta_by_lag(
    frames: np.ndarray, counts: np.ndarray, lags: Sequence[int] = DEFAULT_LAGS
) -> StaEstimate:
    """STAs at several lags and, per cell, the spatial STA at the lag of peak energy.

    Args:
        frames: ``[T, H, W]`` float stimulus (e.g. luminance in [0, 1]).
        counts: ``[T, N]`` spike counts in the frames' bins.
        lags: frames between stimulus and spike bin, each in [0, T-1].

    Returns:
        :class:`StaEstimate` (``spatial`` is ``[N, H, W]`` in the frames' units).
    """
    frames, counts, lag_array = _check(frames, counts, lags)
    n_frames, height, width = frames.shape
    flat = frames.reshape(n_frames, height * width)
    mean_frame = flat.mean(axis=0, dtype=np.float64)
    n_cells = counts.shape[1]
    by_lag = np.zeros((n_cells, lag_array.size, height * width))
    n_spikes = counts.sum(axis=0)
    for k, lag in enumerate(lag_array):
        # Spikes in bin t pair with the frame shown at t - lag.
        weights = counts[lag:]
        total = weights.sum(axis=0)
        fired = total > 0
        if not fired.any():
            continue
        summed = weights[:, fired].T @ flat[: n_frames - lag]
        by_lag[fired, k] = summed / total[fired, None] - mean_frame
    energy = (by_lag * by_lag).sum(axis=2)
    peak = np.argmax(energy, axis=1)
    spatial = by_lag[np.arange(n_cells), peak]
    return StaEstimate(
        lags=lag_array,
        by_lag=by_lag.reshape(n_cells, lag_array.size, height, width),
        peak_lag=lag_array[peak],
        spatial=spatial.reshape(n_cells, height, width),
        energy=energy,
        n_spikes=n_spikes,
    )


def spike_triggered_average(
    frames: np.ndarray, counts: np.ndarray, lags: int | Sequence[int] = DEFAULT_LAGS
) -> np.ndarray:
    """Spatial STA of each cell.

    Args:
        frames: ``[T, H, W]`` float stimulus.
        counts: ``[T, N]`` spike counts.
        lags: one lag (int) -> the STA at that lag for every cell; a sequence of lags
            -> for each cell, the STA at its own lag of largest STA energy.

    Returns:
        ``[N, H, W]`` float64.
    """
    if isinstance(lags, int | np.integer):
        return sta_by_lag(frames, counts, [int(lags)]).spatial
    return sta_by_lag(frames, counts, lags).spatial


class StaAccumulator:
    """`sta_by_lag` over frames that arrive block by block, for segments too long to hold.

    Memory is the running sums (`[N, K, H*W]` float64) and the last `max(lags)` frames, not the
    segment: a 20-minute white noise at 64 x 64 px would otherwise be 590 MB of float32 frames.
    The result equals `sta_by_lag` of the whole segment up to float summation order.
    """

    def __init__(self, n_cells: int, height: int, width: int, lags: Sequence[int] = DEFAULT_LAGS) -> None:
        self.lags = np.asarray(list(lags), dtype=np.int64)
        if self.lags.ndim != 1 or self.lags.size == 0 or self.lags.min() < 0:
            raise InputError(f"lags must be a non-empty sequence of ints >= 0, got {lags}")
        self.shape = (height, width)
        self._summed = np.zeros((n_cells, self.lags.size, height * width))
        self._total = np.zeros((n_cells, self.lags.size))
        self._frame_sum = np.zeros(height * width)
        self._n_spikes = np.zeros(n_cells)
        self._history = np.zeros((0, height * width), dtype=np.float32)
        self.n_frames = 0

    def add(self, frames: np.ndarray, counts: np.ndarray) -> None:
        """The next block: frames `[t, H, W]` float, counts `[t, N]` in the frames' bins."""
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != self.shape or not np.issubdtype(frames.dtype, np.floating):
            raise InputError(f"frames must be float [t, {self.shape[0]}, {self.shape[1]}], got "
                             f"{frames.dtype} {list(frames.shape)}")
        counts = np.asarray(counts, dtype=np.float64)
        if counts.shape != (frames.shape[0], self._summed.shape[0]):
            raise InputError(f"counts must be [{frames.shape[0]}, {self._summed.shape[0]}], got {list(counts.shape)}")
        flat = frames.reshape(frames.shape[0], -1)
        a, b = self.n_frames, self.n_frames + len(flat)
        joined = np.concatenate([self._history, flat])  # frames a - len(history) .. b - 1
        offset = a - len(self._history)
        for k, lag in enumerate(self.lags):
            first = max(a, int(lag))  # spikes in bin t pair with the frame shown at t - lag
            if first >= b:
                continue
            weights = counts[first - a:]
            self._summed[:, k] += weights.T @ joined[first - lag - offset:b - lag - offset]
            self._total[:, k] += weights.sum(axis=0)
        self._frame_sum += flat.sum(axis=0, dtype=np.float64)
        self._n_spikes += counts.sum(axis=0)
        keep = int(self.lags.max())
        self._history = joined[len(joined) - keep:] if keep else joined[:0]
        self.n_frames = b

    @property
    def mean_frame(self) -> np.ndarray:
        """`[H, W]` the average of the frames added so far."""
        return (self._frame_sum / max(self.n_frames, 1)).reshape(self.shape)

    def result(self) -> StaEstimate:
        if self.n_frames == 0 or self.lags.max() >= self.n_frames:
            raise InputError(f"lags must lie in [0, T-1] = [0, {self.n_frames - 1}], got {self.lags.tolist()}")
        mean_frame = self._frame_sum / self.n_frames
        fired = (self._total > 0)[..., None]
        # In place on one [N, K, H*W] array: these sums are the largest thing an import holds.
        by_lag = np.divide(self._summed, self._total[..., None], out=np.zeros_like(self._summed), where=fired)
        np.subtract(by_lag, mean_frame, out=by_lag, where=fired)
        energy = np.einsum("nkp,nkp->nk", by_lag, by_lag)
        peak = np.argmax(energy, axis=1)
        n_cells = by_lag.shape[0]
        h, w = self.shape
        return StaEstimate(lags=self.lags, by_lag=by_lag.reshape(n_cells, self.lags.size, h, w),
                           peak_lag=self.lags[peak], spatial=by_lag[np.arange(n_cells), peak].reshape(n_cells, h, w),
                           energy=energy, n_spikes=self._n_spikes)


ENERGY_SIGMAS_PX: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Spatial scales (Gaussian sigma, pixels) at which the contrast-energy STA is measured."""
Z_SMOOTH_PX = 1.0
ENERGY_MARGIN = 1.25
"""How much more significant an energy map must be than the linear STA to replace it: the most
significant of several noisy maps is biased upwards, and a linear cell's energy map can come close
to its STA's significance while pointing elsewhere (docs/benchmarks.md, "ON-OFF cells' receptive
fields")."""


def map_significance(rf: np.ndarray) -> float:
    """How far a map's peak stands above its own noise floor, in robust standard deviations.

    The map is smoothed by `Z_SMOOTH_PX` and taken by magnitude; its median and MAD estimate the
    floor that pixels outside the receptive field form, so maps in different units (a linear STA
    in luminance, an energy STA in luminance squared) compare on one scale.
    """
    s = np.abs(gaussian_filter(np.asarray(rf, dtype=np.float64), Z_SMOOTH_PX))
    floor = float(np.median(s))
    spread = 1.4826 * float(np.median(np.abs(s - floor)))
    return (float(s.max()) - floor) / max(spread, 1e-12)


@dataclass(frozen=True, eq=False)
class ReceptiveFieldMaps:
    """Each cell's receptive-field map from white noise and the estimate it came from.

    Attributes:
        maps: ``[N, H, W]`` float32; a linear STA keeps its sign, an energy STA is >= 0 where the
            cell looks (it has no polarity to keep).
        kinds: per cell, ``"linear"`` or ``"energy <sigma> px"``.
        significance: ``[N]`` the chosen map's `map_significance`.
    """

    maps: np.ndarray
    kinds: tuple[str, ...]
    significance: np.ndarray

    @property
    def n_energy(self) -> int:
        return sum(k != "linear" for k in self.kinds)

    def source(self, segment: str) -> str:
        """Where the maps came from, as a user reads it."""
        text = f"spike-triggered average of segment {segment!r}"
        if self.n_energy:
            text += f" (contrast energy for {self.n_energy} of {len(self.kinds)} cells whose linear STA is flat)"
        return text


class ReceptiveFieldAccumulator:
    """Receptive fields from white noise, block by block: per cell, the linear STA or, where a
    contrast-energy STA stands further above its noise floor, that.

    A cell that sums rectified ON and OFF pathways (ON-OFF, many subunit cells) answers a bright
    and a dark patch alike: its linear STA cancels to noise, and the readout and design envelope
    placed at that noise's peak land anywhere on the screen. Its spikes still follow frames whose
    contrast is strong inside its RF in either direction, so the STA of the squared, smoothed
    contrast `(G_sigma * (s - mean))**2` peaks there. Binary checkerboards make plain squared
    contrast constant, hence the smoothing, at a few scales since RF sizes differ between retinas;
    the energy map whose peak is most significant (`map_significance`) wins where it beats the
    linear STA's by `ENERGY_MARGIN`.

    The centred energy STA needs the segment's mean frame, known only at the end; by linearity of
    the smoothing it is ``STA[(G s)^2] - 2 (G m) * (G STA[s])`` with both terms accumulated in one
    pass (`result` derives it), so memory is the accumulators', never the segment.
    """

    def __init__(self, n_cells: int, height: int, width: int, lags: Sequence[int] = DEFAULT_LAGS,
                 sigmas: Sequence[float] = ENERGY_SIGMAS_PX) -> None:
        self.sigmas = tuple(float(s) for s in sigmas)
        self._linear = StaAccumulator(n_cells, height, width, lags)
        self._energy = [StaAccumulator(n_cells, height, width, lags) for _ in self.sigmas]

    def add(self, frames: np.ndarray, counts: np.ndarray) -> None:
        """The next block: frames `[t, H, W]` float, counts `[t, N]` in the frames' bins."""
        self._linear.add(frames, counts)
        for sigma, acc in zip(self.sigmas, self._energy, strict=True):
            smooth = gaussian_filter(np.asarray(frames, dtype=np.float32), (0, sigma, sigma))
            acc.add(smooth * smooth, counts)

    def result(self) -> ReceptiveFieldMaps:
        linear = self._linear.result()
        mean_frame = self._linear.mean_frame
        candidates = [("linear", linear.spatial)]
        for sigma, acc in zip(self.sigmas, self._energy, strict=True):
            raw = acc.result()
            smooth_mean = gaussian_filter(mean_frame, sigma)
            smooth_sta = gaussian_filter(linear.by_lag, (0, 0, sigma, sigma))
            by_lag = raw.by_lag - 2.0 * smooth_mean * smooth_sta  # [N, K, H, W]
            energy = np.einsum("nkhw,nkhw->nk", by_lag, by_lag)
            peak = np.argmax(energy, axis=1)
            candidates.append((f"energy {sigma:g} px", by_lag[np.arange(len(peak)), peak]))
        n_cells = linear.spatial.shape[0]
        z = np.array([[map_significance(maps[i]) for _, maps in candidates] for i in range(n_cells)])
        energy_best = 1 + np.argmax(z[:, 1:], axis=1)
        energy_wins = z[np.arange(n_cells), energy_best] > ENERGY_MARGIN * z[:, 0]
        best = np.where(energy_wins, energy_best, 0)
        maps = np.stack([candidates[b][1][i] for i, b in enumerate(best)]).astype(np.float32)
        return ReceptiveFieldMaps(maps=maps, kinds=tuple(candidates[b][0] for b in best),
                                  significance=z[np.arange(n_cells), best])


def receptive_field_maps(frames: np.ndarray, counts: np.ndarray, lags: Sequence[int] = DEFAULT_LAGS,
                         sigmas: Sequence[float] = ENERGY_SIGMAS_PX) -> ReceptiveFieldMaps:
    """`ReceptiveFieldAccumulator` over frames `[T, H, W]` float and counts `[T, N]` held in memory."""
    frames, counts, lag_array = _check(frames, counts, lags)
    acc = ReceptiveFieldAccumulator(counts.shape[1], frames.shape[1], frames.shape[2], lag_array, sigmas)
    acc.add(frames, counts)
    return acc.result()

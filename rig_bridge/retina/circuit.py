"""The population compiled into matrices, and the causal computation of its rates.

All cells are evaluated together: every "channel" (a linear cell's RF, one pathway of an
ON-OFF cell, one subunit of a subunit cell) is a spatial filter (a column of
``projection``) followed by a causal temporal filter (a column of ``temporal``). The
generator of each cell is then ``F @ linear_readout + relu(F) @ rectified_readout`` over
the filtered channels ``F``, with a divisive contrast gain for the adapting cells.

One ``[t, H*W] @ [H*W, C]`` matrix multiply per chunk does the spatial work; the
temporal filters are ``L`` vectorised multiply-adds over a ``[L - 1 + t, C]`` buffer that
carries the last ``L - 1`` projected frames between chunks, so chunked, streamed and
one-shot computations agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from rig_bridge.retina.cells import CellSpec, CellType, ContrastGainControl
from stimuli.errors import InputError


@dataclass(frozen=True, eq=False)
class Circuit:
    """Matrices of a population (C channels, N cells, L lags, A adapting cells).

    Attributes:
        projection: ``[H*W, C]`` spatial filter of each channel.
        temporal: ``[L, C]`` temporal filter of each channel, lag 0 first.
        linear_readout: ``[C, N]`` weights of filtered channels entering linearly.
        rectified_readout: ``[C, N]`` weights of rectified filtered channels.
        adapting: ``[A]`` cell indices with contrast gain control.
        adapt_pool: ``[H*W, A]`` local contrast-energy weights.
        adapt_decay: ``[A]`` per-frame decay of the running contrast-energy estimate.
        adapt_half: ``[A]`` half-gain contrast.
        gain, offset, rate_scale: ``[N]`` output nonlinearity parameters.
    """

    projection: np.ndarray
    temporal: np.ndarray
    linear_readout: np.ndarray
    rectified_readout: np.ndarray
    adapting: np.ndarray
    adapt_pool: np.ndarray
    adapt_decay: np.ndarray
    adapt_half: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    rate_scale: np.ndarray

    @property
    def n_lags(self) -> int:
        return self.temporal.shape[0]

    @property
    def n_channels(self) -> int:
        return self.temporal.shape[1]

    @property
    def n_cells(self) -> int:
        return self.gain.shape[0]

    @classmethod
    def compile(cls, cells: tuple[CellSpec, ...], frame_rate: float) -> Circuit:
        """Lay out the channels of ``cells`` (all with the same screen and filter length)."""
        if not cells:
            raise InputError("a circuit needs at least one cell")
        n_pixels = cells[0].spatial_filter.size
        n_lags = cells[0].temporal_filter.size
        spatial: list[np.ndarray] = []
        temporal: list[np.ndarray] = []
        linear_entries: list[tuple[int, int, float]] = []
        rectified_entries: list[tuple[int, int, float]] = []

        def add(w: np.ndarray, k: np.ndarray) -> int:
            if w.size != n_pixels or k.size != n_lags:
                raise InputError("all cells must share the screen size and filter length")
            spatial.append(w.reshape(-1))
            temporal.append(k)
            return len(spatial) - 1

        for n, cell in enumerate(cells):
            if cell.cell_type is CellType.ON_OFF:
                assert cell.off_temporal_filter is not None
                rectified_entries.append((add(cell.spatial_filter, cell.temporal_filter), n, 1.0))
                rectified_entries.append(
                    (add(-cell.spatial_filter, cell.off_temporal_filter), n, 1.0)
                )
            elif cell.cell_type is CellType.SUBUNIT:
                assert cell.subunits is not None
                for w, v in zip(cell.subunits.filters, cell.subunits.weights, strict=True):
                    rectified_entries.append((add(w, cell.temporal_filter), n, float(v)))
            else:
                linear_entries.append((add(cell.spatial_filter, cell.temporal_filter), n, 1.0))

        n_channels, n_cells = len(spatial), len(cells)
        linear_readout = np.zeros((n_channels, n_cells))
        rectified_readout = np.zeros((n_channels, n_cells))
        for readout, entries in (
            (linear_readout, linear_entries),
            (rectified_readout, rectified_entries),
        ):
            for c, n, v in entries:
                readout[c, n] = v

        adapting = [n for n, c in enumerate(cells) if c.contrast_gain is not None]
        controls: list[ContrastGainControl] = [
            c.contrast_gain for c in cells if c.contrast_gain is not None
        ]
        return cls(
            projection=np.stack(spatial, axis=1),
            temporal=np.stack(temporal, axis=1),
            linear_readout=linear_readout,
            rectified_readout=rectified_readout,
            adapting=np.asarray(adapting, dtype=np.int64),
            adapt_pool=(
                np.stack([g.pool.reshape(-1) for g in controls], axis=1)
                if controls
                else np.zeros((n_pixels, 0))
            ),
            adapt_decay=np.asarray(
                [np.exp(-1.0 / (g.tau_s * frame_rate)) for g in controls]
            ),
            adapt_half=np.asarray([g.half_contrast for g in controls]),
            gain=np.asarray([c.gain for c in cells], dtype=np.float64),
            offset=np.asarray([c.offset for c in cells], dtype=np.float64),
            rate_scale=np.asarray([c.rate_scale for c in cells], dtype=np.float64),
        )

    def initial_state(self) -> CircuitState:
        """State of a retina that has been looking at a steady grey screen."""
        return CircuitState(
            history=np.zeros((self.n_lags - 1, self.n_channels)),
            energy=np.zeros(self.adapting.size),
        )

    def advance(self, contrast: np.ndarray, state: CircuitState) -> np.ndarray:
        """Generator signals for the next frames; updates ``state`` in place.

        Args:
            contrast: ``[t, H*W]`` contrast frames following those already seen.
            state: carried temporal context (modified).

        Returns:
            ``[t, N]`` generator (input to ``gain * g + offset``) of every cell.
        """
        t = contrast.shape[0]
        if t == 0:
            return np.zeros((0, self.n_cells))
        projected = contrast @ self.projection
        buffer = np.concatenate([state.history, projected], axis=0)
        lags = self.n_lags
        filtered = np.zeros((t, self.n_channels))
        for lag in range(lags):
            start = lags - 1 - lag
            filtered += self.temporal[lag] * buffer[start : start + t]
        if lags > 1:
            state.history = buffer[-(lags - 1) :].copy()
        generator = filtered @ self.linear_readout + np.maximum(filtered, 0.0) @ (
            self.rectified_readout
        )
        if self.adapting.size:
            energy = (contrast * contrast) @ self.adapt_pool
            running = np.empty_like(energy)
            for a, decay in enumerate(self.adapt_decay):
                running[:, a], _ = lfilter(
                    [1.0 - decay], [1.0, -decay], energy[:, a], zi=[decay * state.energy[a]]
                )
            state.energy = running[-1].copy()
            generator[:, self.adapting] /= self.adapt_half + np.sqrt(running)
        return generator

    def rates(self, generator: np.ndarray) -> np.ndarray:
        """Expected spike counts per bin ``[t, N]`` from generators ``[t, N]`` (softplus)."""
        return self.rate_scale * np.logaddexp(0.0, self.gain * generator + self.offset)


@dataclass
class CircuitState:
    """Mutable temporal context: the last ``L - 1`` projected frames ``[L-1, C]`` and the
    running contrast-energy estimates ``[A]``."""

    history: np.ndarray
    energy: np.ndarray

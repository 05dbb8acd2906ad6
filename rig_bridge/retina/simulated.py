"""The simulated retina: a population of model ganglion cells that stands in for the rig."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rig_bridge.retina.calibration import calibrate_gains
from rig_bridge.retina.cells import CellSpec
from rig_bridge.retina.circuit import Circuit, CircuitState
from rig_bridge.retina.population import draw_cells
from rig_bridge.retina.spiking import dead_time_counts, poisson_counts
from rig_bridge.retina.video import check_video, to_contrast
from stimuli.errors import InputError

DEFAULT_CHUNK_FRAMES = 512
"""Frames processed at once: bounds memory at ~chunk * H * W * 16 bytes."""
DEFAULT_DEAD_TIME_S = 0.002


class SimulatedRetina:
    """Ground-truth retina: N model ganglion cells looking at an ``H x W`` screen.

    Videos are float luminance ``[T, H, W]`` in [0, 1] with grey 0.5, one frame per
    time bin at ``frame_rate``; the screen is grey before the first frame. Index ``i``
    is a cell's position in the population (``cells[i]``); ids are separate
    (see :mod:`rig_bridge.retina.population`, for ``N > 42`` they coincide).
    """

    def __init__(
        self,
        cells: tuple[CellSpec, ...],
        height: int,
        width: int,
        frame_rate: float,
        *,
        dead_time_s: float = DEFAULT_DEAD_TIME_S,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    ) -> None:
        if not cells:
            raise InputError("a retina needs at least one cell")
        for cell in cells:
            if cell.spatial_filter.shape != (height, width):
                raise InputError(
                    f"cell {cell.cell_id} has a {cell.spatial_filter.shape} spatial filter "
                    f"but the screen is {(height, width)}"
                )
        ids = np.asarray([c.cell_id for c in cells], dtype=np.int64)
        if np.unique(ids).size != ids.size:
            raise InputError("cell ids must be unique")
        if not frame_rate > 0:
            raise InputError(f"frame_rate must be > 0, got {frame_rate}")
        if not 0 < dead_time_s <= 1.0 / frame_rate:
            raise InputError(f"dead_time_s must be in (0, 1/frame_rate], got {dead_time_s}")
        if chunk_frames < 1:
            raise InputError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self._cells = tuple(cells)
        self._height, self._width = int(height), int(width)
        self._frame_rate = float(frame_rate)
        self._dead_time_s = float(dead_time_s)
        self._chunk_frames = int(chunk_frames)
        self._ids = ids
        self._ids.setflags(write=False)
        self._index = {int(cid): i for i, cid in enumerate(ids)}
        self._circuit = Circuit.compile(self._cells, self._frame_rate)

    @classmethod
    def create(
        cls,
        n_cells: int = 90,
        height: int = 64,
        width: int = 64,
        frame_rate: float = 30.0,
        seed: int = 0,
        type_weights: Mapping[str, float] | None = None,
        rf_scale: float = 1.0,
    ) -> SimulatedRetina:
        """A calibrated population fully determined by its arguments.

        By default ~60 % linear cells (ON/OFF x sustained/transient), the rest ON-OFF, subunit
        and contrast-adapting cells (`type_weights` sets another mix, `rf_scale` scales every
        receptive field), each type tiling the screen as a jittered mosaic.
        """
        if not isinstance(n_cells, int | np.integer) or n_cells < 1:
            raise InputError(f"n_cells must be a positive int, got {n_cells!r}")
        cells = draw_cells(int(n_cells), int(height), int(width), float(frame_rate), int(seed),
                           type_weights=type_weights, rf_scale=float(rf_scale))
        return cls(calibrate_gains(cells, height, width, frame_rate), height, width, frame_rate)

    # --- description -------------------------------------------------------------------
    @property
    def cells(self) -> tuple[CellSpec, ...]:
        return self._cells

    @property
    def n_cells(self) -> int:
        return len(self._cells)

    @property
    def cell_ids(self) -> np.ndarray:
        """``[N]`` int64 ids, in population order (read-only)."""
        return self._ids

    @property
    def cell_types(self) -> list[str]:
        """``N`` type names (:class:`CellType` values), in population order."""
        return [str(c.cell_type) for c in self._cells]

    @property
    def height(self) -> int:
        return self._height

    @property
    def width(self) -> int:
        return self._width

    @property
    def frame_rate(self) -> float:
        return self._frame_rate

    @property
    def filter_length(self) -> int:
        """Frames ``L`` in each temporal filter (~0.5 s)."""
        return self._circuit.n_lags

    @property
    def dead_time_s(self) -> float:
        return self._dead_time_s

    def index_of(self, cell_id: int) -> int:
        """Position in the population of the cell with this id."""
        try:
            return self._index[int(cell_id)]
        except KeyError:
            raise InputError(f"no cell with id {cell_id} in this retina") from None

    def _cell(self, i: int) -> CellSpec:
        if not -self.n_cells <= int(i) < self.n_cells:
            raise InputError(f"cell index {i} out of range for {self.n_cells} cells")
        return self._cells[int(i)]

    def is_linear(self, i: int) -> bool:
        """Whether cell ``i`` is exactly linear filter -> static nonlinearity -> Poisson."""
        return self._cell(i).is_linear

    def spatial_filter(self, i: int) -> np.ndarray:
        """``[H, W]`` unit-norm linear spatial RF of cell ``i`` (sign = polarity)."""
        return self._cell(i).spatial_filter

    def temporal_filter(self, i: int) -> np.ndarray:
        """``[L]`` unit-norm temporal filter of cell ``i``, lag 0 first."""
        return self._cell(i).temporal_filter

    # --- responses ---------------------------------------------------------------------
    def stream(self) -> RetinaStream:
        """A stateful stream that starts from a grey screen (for the rig server)."""
        return RetinaStream(self)

    def generator(self, video: np.ndarray) -> np.ndarray:
        """Input of each cell's output nonlinearity before gain: ``[T, N]`` float64."""
        return self.stream().push_generator(video)

    def rate(self, video: np.ndarray) -> np.ndarray:
        """Expected spike count per frame bin, ``[T, N]`` float64 (deterministic).

        Args:
            video: ``[T, H, W]`` float luminance in [0, 1] (grey 0.5).
        """
        return self.stream().push(video)

    def sample(
        self, rates: np.ndarray, rng: np.random.Generator, refractory: bool = False
    ) -> np.ndarray:
        """Spike counts ``uint16`` (shape of ``rates``) from expected counts per bin.

        ``refractory=True`` imposes an absolute dead time of ``dead_time_s`` per bin
        (see :func:`rig_bridge.retina.spiking.dead_time_counts`).
        """
        if not refractory:
            return poisson_counts(rates, rng)
        slots = max(1, int(np.floor(1.0 / (self._frame_rate * self._dead_time_s))))
        return dead_time_counts(rates, rng, slots)

    def spikes(
        self, video: np.ndarray, rng: np.random.Generator, refractory: bool = False
    ) -> np.ndarray:
        """Spike counts ``[T, N]`` uint16 for a video (Poisson, or dead time if refractory)."""
        return self.sample(self.rate(video), rng, refractory)


class RetinaStream:
    """Frames in, rates out, keeping the temporal context between pushes.

    ``push(a)`` then ``push(b)`` returns the same rates as ``rate(concatenate([a, b]))``.
    """

    def __init__(self, retina: SimulatedRetina) -> None:
        self._retina = retina
        self._circuit: Circuit = retina._circuit
        self._state: CircuitState = self._circuit.initial_state()
        self._frames_seen = 0

    @property
    def frames_seen(self) -> int:
        return self._frames_seen

    def reset(self) -> None:
        """Back to a retina adapted to a grey screen."""
        self._state = self._circuit.initial_state()
        self._frames_seen = 0

    def push_generator(self, frames: np.ndarray) -> np.ndarray:
        """Generators ``[t, N]`` for the next frames ``[t, H, W]``."""
        r = self._retina
        video = check_video(frames, r.height, r.width)
        out = np.empty((video.shape[0], r.n_cells))
        step = r._chunk_frames
        for start in range(0, video.shape[0], step):
            chunk = video[start : start + step]
            out[start : start + len(chunk)] = self._circuit.advance(
                to_contrast(chunk), self._state
            )
        self._frames_seen += video.shape[0]
        return out

    def push(self, frames: np.ndarray) -> np.ndarray:
        """Expected spike counts ``[t, N]`` float64 for the next frames ``[t, H, W]``."""
        return self._circuit.rates(self.push_generator(frames))

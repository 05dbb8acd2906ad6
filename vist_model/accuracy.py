"""How well a twin knows each of its cells, measured on data it was not trained on.

Training ends by scoring the twin on a held-out stretch of its recording: a repeated segment
it did not train on when the recording has one (then each cell's noise ceiling is known too),
otherwise the validation frames. The record travels inside the checkpoint, so every command that
reports a number about a cell (a design's predicted rate, an attribution map) can say how far
the twin's word on that cell goes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stimuli.errors import NotFoundError
from stimuli.recording import Recording

__all__ = ["KNOWS_CELL_CC", "CellAccuracy", "HeldOutAccuracy", "held_out_segment"]

KNOWS_CELL_CC = 0.3
"""Below this held-out correlation the twin's predictions for a cell are not to be trusted."""


@dataclass(frozen=True)
class CellAccuracy:
    """One cell's held-out figures: CC with the trial mean, its noise ceiling (None: unknown)."""

    cell_id: int
    cc: float
    noise_ceiling: float | None

    @property
    def fraction_of_ceiling(self) -> float | None:
        if self.noise_ceiling is None or not self.noise_ceiling > 0 or not math.isfinite(self.cc):
            return None
        return self.cc / self.noise_ceiling

    @property
    def known(self) -> bool:
        """Whether the twin predicts this cell well enough for its numbers to mean something."""
        return math.isfinite(self.cc) and self.cc >= KNOWS_CELL_CC

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: CC, ceiling and their ratio (None where unknown), and `known`."""
        return {"held_out_cc": self.cc if math.isfinite(self.cc) else None, "noise_ceiling": self.noise_ceiling,
                "fraction_of_ceiling": self.fraction_of_ceiling, "twin_knows_cell": self.known}

    def describe(self) -> str:
        """`held-out CC 0.62 (0.78 of its noise ceiling 0.80)` or `... (no noise ceiling)`."""
        cc = f"{self.cc:.2f}" if math.isfinite(self.cc) else "n/a"
        frac = self.fraction_of_ceiling
        if frac is None:
            return f"held-out CC {cc} (no noise ceiling)"
        return f"held-out CC {cc} ({frac:.2f} of its noise ceiling {self.noise_ceiling:.2f})"

    def warning(self) -> str | None:
        """A sentence for a user when the twin does not know this cell, else None."""
        if self.known:
            return None
        return (f"the twin does not know cell {self.cell_id} ({self.describe()}, below {KNOWS_CELL_CC}): "
                "its predictions for this cell are not to be trusted")


@dataclass(frozen=True)
class HeldOutAccuracy:
    """Per-cell accuracy of a twin on `segment` (`n_repeats` > 1 gives noise ceilings)."""

    segment: str
    n_repeats: int
    n_frames: int
    cells: tuple[CellAccuracy, ...]

    def of(self, cell_id: int) -> CellAccuracy:
        for c in self.cells:
            if c.cell_id == int(cell_id):
                return c
        raise NotFoundError(f"no held-out accuracy for cell {cell_id}")

    def median_cc(self) -> float:
        values = [c.cc for c in self.cells if math.isfinite(c.cc)]
        return float(np.median(values)) if values else float("nan")

    @classmethod
    def from_metrics(cls, segment: str, cell_ids: Sequence[int], cc: np.ndarray,
                     noise_ceiling: np.ndarray, n_repeats: int, n_frames: int) -> HeldOutAccuracy:
        cells = tuple(
            CellAccuracy(int(i), float(np.nan_to_num(c, nan=float("nan"))),
                         float(n) if np.isfinite(n) else None)
            for i, c, n in zip(cell_ids, cc, noise_ceiling, strict=True)
        )
        return cls(segment, int(n_repeats), int(n_frames), cells)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeldOutAccuracy:
        """From `dataclasses.asdict` of one (as a checkpoint stores it)."""
        cells = tuple(CellAccuracy(int(c["cell_id"]), float("nan") if c["cc"] is None else float(c["cc"]),
                                   None if c["noise_ceiling"] is None else float(c["noise_ceiling"]))
                      for c in data["cells"])
        return cls(str(data["segment"]), int(data["n_repeats"]), int(data["n_frames"]), cells)


def held_out_segment(rec: Recording, train_segments: Sequence[str]) -> str | None:
    """The repeated segment a twin trained on `train_segments` has not seen (the longest), if any."""
    candidates = [s for s in rec.segments if s.name not in set(train_segments) and rec.repeats_shown(s.name) >= 2]
    if not candidates:
        return None
    return max(candidates, key=lambda s: s.n_frames).name

"""What a design maximises: composable functions of the twin's rates.

An objective maps rates `[B, T, N]` (expected spikes per frame bin) to one value per stimulus
`[B]`, and objectives compose with arithmetic, so a new experiment is one line::

    obj = increase(i) - 0.1 * increase(others)      # drive cell i, not its neighbours
    obj = 0.5 * discriminative(i) + increase(i)

Cells are *positions* in the twin's output (`twin.metadata.cell_index(cell_id)`), not ids.

Time window: a response is the mean rate over `Window` frames counted back from the clip's
end. The default is the last 3 frames (100 ms at 30 Hz): short, so that the true optimum of
a linear cell (exact for the last frame, see `rig_bridge.retina.optimum`) stays the right
yardstick, and more than one frame so that a design cannot hinge on a single bin.

An ensemble of twins is one objective by evaluating any objective on
`insilico.design.response.TwinResponse([twin_a, twin_b, ...])`, whose rates are the
ensemble mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from insilico.design.settings import OBJECTIVES, DesignSettings
from stimuli.errors import InputError

# The defaults of the objectives, from the design settings (one place).
DEFAULT_WINDOW_FRAMES = DesignSettings.window_frames
DEFAULT_TEMPERATURE = DesignSettings.temperature


@dataclass(frozen=True)
class Window:
    """The last `frames` frames of a clip, optionally ending `end_offset` frames before its end.

    Frames `[T - end_offset - frames, T - end_offset)` of a `T`-frame clip.
    """

    frames: int = DEFAULT_WINDOW_FRAMES
    end_offset: int = 0

    def __post_init__(self) -> None:
        if self.frames < 1 or self.end_offset < 0:
            raise InputError(f"a window needs >= 1 frame and end offset >= 0, got {self.frames}, {self.end_offset}")

    def slice(self, n_frames: int) -> slice:
        stop = n_frames - self.end_offset
        start = stop - self.frames
        if start < 0:
            raise InputError(f"window of {self.frames} frames ending {self.end_offset} before the end "
                             f"does not fit a {n_frames}-frame clip")
        return slice(start, stop)

    def bounds(self, n_frames: int) -> tuple[int, int]:
        s = self.slice(n_frames)
        return s.start, s.stop

    def mean(self, rates: Tensor) -> Tensor:
        """`[B, T, N]` -> `[B, N]` mean over the window."""
        return rates[:, self.slice(rates.shape[1])].mean(dim=1)


class Objective:
    """Base class: `objective(rates [B, T, N]) -> [B]`; supports `+`, `-`, `*`, `/` by scalars."""

    def __call__(self, rates: Tensor) -> Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return WeightedSum(_terms(self) + _terms(other))

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return WeightedSum(_terms(self) + _terms(-1.0 * other))

    def __mul__(self, weight: float) -> Objective:
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            return NotImplemented
        return WeightedSum(tuple((w * float(weight), o) for w, o in _terms(self)))

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Objective:
        if isinstance(divisor, bool) or not isinstance(divisor, int | float) or divisor == 0:
            return NotImplemented
        return self * (1.0 / float(divisor))

    def __neg__(self) -> Objective:
        return -1.0 * self

    def __repr__(self) -> str:
        return self.describe()


def _terms(obj: Objective) -> tuple[tuple[float, Objective], ...]:
    return obj.terms if isinstance(obj, WeightedSum) else ((1.0, obj),)


def _cells(cells: int | Sequence[int]) -> tuple[int, ...]:
    out = (int(cells),) if isinstance(cells, int) else tuple(int(c) for c in cells)
    if not out or min(out) < 0:
        raise InputError(f"name at least one cell position (>= 0), got {cells!r}")
    return out


@dataclass(frozen=True, repr=False)
class WeightedSum(Objective):
    """`sum_k w_k * objective_k(rates)`."""

    terms: tuple[tuple[float, Objective], ...]

    def __call__(self, rates: Tensor) -> Tensor:
        return sum(w * obj(rates) for w, obj in self.terms)

    def describe(self) -> str:
        parts = []
        for w, obj in self.terms:
            sign = "-" if w < 0 else "+"
            body = obj.describe() if abs(w) == 1.0 else f"{abs(w):g} * {obj.describe()}"
            parts.append(f"{sign} {body}")
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else text


@dataclass(frozen=True, repr=False)
class Increase(Objective):
    """Mean rate of `cells` over the window (spikes per bin); several cells are averaged."""

    cells: tuple[int, ...]
    window: Window = Window()

    def __call__(self, rates: Tensor) -> Tensor:
        _check(rates, self.cells)
        return self.window.mean(rates)[:, list(self.cells)].mean(dim=1)

    def describe(self) -> str:
        return f"increase({_label(self.cells)})"


@dataclass(frozen=True, repr=False)
class Discriminative(Objective):
    """Burg et al. 2024: `r_on / temp - logsumexp_j(r_j / temp)`, rates as window means.

    `r_on` is the mean over `cells` (the "on" group) and `j` runs over every cell of the twin
    (the on group included), so the objective is the log of the on group's softmax share: it
    rises when the cell fires *and* the others do not. `temperature` is in spikes per bin:
    small values make it a hard "beat the strongest other cell", large ones approach
    `(r_on - mean_j r_j) / temp + const`.
    """

    cells: tuple[int, ...]
    window: Window = Window()
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")

    def __call__(self, rates: Tensor) -> Tensor:
        _check(rates, self.cells)
        r = self.window.mean(rates)
        on = r[:, list(self.cells)].mean(dim=1)
        return on / self.temperature - torch.logsumexp(r / self.temperature, dim=1)

    def describe(self) -> str:
        return f"discriminative({_label(self.cells)}, T={self.temperature:g})"


def _label(cells: tuple[int, ...]) -> str:
    return str(cells[0]) if len(cells) == 1 else f"{len(cells)} cells"


def _check(rates: Tensor, cells: tuple[int, ...]) -> None:
    if rates.ndim != 3:
        raise InputError(f"rates must be [B, T, N], got {list(rates.shape)}")
    if max(cells) >= rates.shape[2]:
        raise InputError(f"cell position {max(cells)} is out of range for {rates.shape[2]} cells")


def increase(cells: int | Sequence[int], window: Window = Window()) -> Objective:
    """Drive `cells` (positions) over the window."""
    return Increase(_cells(cells), window)


def decrease(cells: int | Sequence[int], window: Window = Window()) -> Objective:
    """Silence `cells` over the window: `-increase(cells)`."""
    return -1.0 * increase(cells, window)


def discriminative(cells: int | Sequence[int], window: Window = Window(), temperature: float = DEFAULT_TEMPERATURE) -> Objective:
    """Drive `cells` and not the rest of the population (Burg et al. 2024)."""
    return Discriminative(_cells(cells), window, temperature)


def others(n_cells: int, cells: int | Sequence[int]) -> tuple[int, ...]:
    """Every cell position except `cells` (for `increase(i) - 0.1 * increase(others(n, i))`)."""
    skip = set(_cells(cells))
    rest = tuple(i for i in range(n_cells) if i not in skip)
    if not rest:
        raise InputError("no other cells")
    return rest



def named_objective(name: str, cell: int, window: Window = Window(), temperature: float = DEFAULT_TEMPERATURE) -> Objective:
    """The objective named by the design setting `objective`, for one cell position."""
    if name == "increase":
        return increase(cell, window)
    if name == "decrease":
        return decrease(cell, window)
    if name == "discriminative":
        return discriminative(cell, window, temperature)
    raise InputError(f"design setting objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")

"""Play a design to the simulated retina that made the training data: the truth, not the twin.

The retina is rebuilt either from a simulated recording's attributes (`--data`) or from its
seed (`--sim SEED`, with the cell count, screen and frame rate taken from the design file).
The design and its siblings (best natural clip and best parametric stimulus, written beside
it at the same budget) are played from a grey screen, and the true response is the mean
expected spike count of the cell over the design's time window. For a linear cell the true
optimum at the same budget (`true_optimum`: the better of the exact optima of the drive at the
clip's last frame and of the mean drive over the window) is played too, giving the fraction of
the optimum the design reaches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rig_bridge.retina import SimulatedRetina, true_optimal_stimulus
from rig_bridge.retina.recording import build_retina, retina_of_recording
from stimuli.errors import InputError, InsilicoError
from stimuli.recording import open_recording

MIN_COMPARABLE_RATE = 0.05
"""Expected spikes per bin under which a rate is not compared by ratio. Over a 3-frame window
shown 5 times, 0.05 is under one spike in all (0.75): a design at 0.032 against a natural clip at
0.0044 is "7.4 times better" on a difference no rig could measure."""


@dataclass(frozen=True)
class Verification:
    """True responses (mean expected spikes per bin over the window) of one cell.

    `natural`, `parametric` are None when their files are missing; `optimum` and
    `fraction_of_optimum` are None for non-linear cells.
    """

    cell_id: int
    cell_type: str
    linear: bool
    window: tuple[int, int]
    rms_contrast: float
    design: float
    natural: float | None
    parametric: float | None
    optimum: float | None
    design_path: str
    # Why a ratio here would mislead (the retina is not the twin's), or None.
    retina_note: str | None = None

    @property
    def vs_natural(self) -> float | None:
        """design / natural, None where the natural clip barely drives the cell (`MIN_COMPARABLE_RATE`)."""
        return None if self.natural is None or self.natural < MIN_COMPARABLE_RATE else self.design / self.natural

    @property
    def fraction_of_optimum(self) -> float | None:
        return None if self.optimum is None or self.optimum < MIN_COMPARABLE_RATE else self.design / self.optimum

    def too_small(self, rate: float | None) -> bool:
        return rate is not None and rate < MIN_COMPARABLE_RATE

    def to_json_dict(self) -> dict[str, object]:
        return {
            "cell_id": self.cell_id, "cell_type": self.cell_type, "linear": self.linear,
            "window": list(self.window), "rms_contrast": self.rms_contrast,
            "true_response": {"design": self.design, "natural": self.natural, "parametric": self.parametric,
                              "true_optimum": self.optimum},
            "design_vs_natural": self.vs_natural, "fraction_of_optimum": self.fraction_of_optimum,
            "min_comparable_rate": MIN_COMPARABLE_RATE, "retina_note": self.retina_note,
            "design_path": self.design_path,
        }


def true_response(retina: SimulatedRetina, i: int, frames: np.ndarray, window: tuple[int, int]) -> float:
    """Mean expected count of cell `i` over frames `[start, stop)` of a clip (uint8 or float)."""
    video = frames.astype(np.float64) / 255.0 if frames.dtype == np.uint8 else np.asarray(frames, np.float64)
    return float(retina.rate(video)[window[0]:window[1], i].mean())


def _read(path: Path) -> tuple[np.ndarray, dict[str, object], float]:
    with open_recording(path) as rec:
        return rec.frames(), rec.attrs, rec.frame_rate


def retina_for(design_attrs: dict[str, object], shape: tuple[int, int, int], frame_rate: float,
               sim_seed: int | None, data: str | Path | None) -> SimulatedRetina:
    if (sim_seed is None) == (data is None):
        raise InputError("name the simulated retina with exactly one of sim_seed or data (a recording)")
    if data is not None:
        with open_recording(data) as rec:
            return retina_of_recording(rec.attrs)
    if shape[1] != shape[2]:
        raise InputError(f"the simulator's screens are square; this design is {shape[1]}x{shape[2]} px")
    n_cells = design_attrs.get("n_cells")
    if n_cells is None:
        raise InsilicoError("the design file does not state the population size; name the recording (data)")
    return build_retina(int(sim_seed), int(n_cells), shape[1], frame_rate)


def true_optimum(retina: SimulatedRetina, i: int, n_frames: int, rms: float, window: tuple[int, int]) -> float:
    """A linear cell's true optimum over `window` at budget `rms`: its true response to
    `true_optimum_clip`."""
    return true_response(retina, i, true_optimum_clip(retina, i, n_frames, rms, window), window)


def true_optimum_clip(retina: SimulatedRetina, i: int, n_frames: int, rms: float,
                      window: tuple[int, int]) -> np.ndarray:
    """`[T, H, W]` the better, by true mean rate over `window`, of the two exact optima of linear
    cell `i` at budget `rms`: of the drive at the clip's last frame and of the mean drive over the
    window's frames (`true_optimal_stimulus`). The first alone is beaten by designs for fast
    transient cells, whose rate it leaves low in the window's earlier frames."""
    frames = window[1] - window[0]
    candidates = {1, frames} if window[1] == n_frames else {1}
    clips = [true_optimal_stimulus(retina, i, n_frames, rms_contrast=rms, mean=0.5, window=w) for w in sorted(candidates)]
    return max(clips, key=lambda clip: true_response(retina, i, clip, window))


def verify_design(design: str | Path, sim_seed: int | None = None, data: str | Path | None = None) -> Verification:
    """True responses to a design written by `insilico optimize` and to its siblings."""
    design = Path(design)
    frames, attrs, frame_rate = _read(design)
    if "cell_id" not in attrs:
        raise InsilicoError(f"{design}: not a design written by `insilico optimize` (no @cell_id)")
    retina = retina_for(attrs, frames.shape, frame_rate, sim_seed, data)
    note = _other_retina(attrs, retina, sim_seed, data)
    if (retina.height, retina.width) != frames.shape[1:]:
        raise InsilicoError(f"the retina's screen is {retina.height}x{retina.width} px, the design's "
                            f"{frames.shape[1]}x{frames.shape[2]} px: not the same setting")
    cell_id = int(attrs["cell_id"])
    i = retina.index_of(cell_id)
    window = tuple(int(v) for v in json.loads(str(attrs["window"])))
    rms = float(attrs["rms_contrast"])
    siblings = {}
    for kind in ("natural", "parametric"):
        path = design.with_name(f"{design.stem}_{kind}.h5")
        siblings[kind] = true_response(retina, i, _read(path)[0], window) if path.is_file() else None
    optimum = true_optimum(retina, i, frames.shape[0], rms, window) if retina.is_linear(i) else None
    return Verification(cell_id, retina.cell_types[i], retina.is_linear(i), window, rms,
                        true_response(retina, i, frames, window), siblings["natural"], siblings["parametric"],
                        optimum, str(design), note)


def _other_retina(attrs: dict[str, object], retina: SimulatedRetina, sim_seed: int | None,
                  data: str | Path | None) -> str | None:
    """A note when the retina verified against is not the one behind the twin's training data."""
    twin = {k: attrs.get(f"twin_sim_{k}") for k in ("seed", "n_cells")}
    if twin["seed"] is None:
        return None  # a design from before the twin's retina was recorded, or a twin of real data
    if sim_seed is not None:
        here = {"seed": int(sim_seed), "n_cells": len(retina.cell_ids)}
    else:
        with open_recording(data) as rec:
            here = {"seed": rec.attrs.get("sim_seed"), "n_cells": rec.attrs.get("sim_n_cells")}
    if all(here[k] is not None and int(here[k]) == int(twin[k]) for k in twin):
        return None
    return (f"the twin was trained on the simulated retina with seed {twin['seed']} ({twin['n_cells']} cells); "
            f"this is seed {here['seed']} ({here['n_cells']} cells), a retina the twin never saw: its "
            "responses say nothing about how well the twin designs")

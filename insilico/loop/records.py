"""Records of a closed-loop round that cross steps and the run state (`state.json`).

A design item (one target cell and objective: its design and controls) and a plan entry (one
distinct clip to show, and the items it serves) are frozen dataclasses in the code and plain
JSON in the run state; `from_json` reads the run states written before they were records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROLES = ("design", "natural", "parametric")


@dataclass(frozen=True)
class DesignItem:
    """One target cell's design for one objective, with its controls.

    Attributes:
        cell: the target's cell id; `cell_index` its position in the twin's output.
        objective: what the design asks ("increase", "discriminative").
        window: frames `[start, stop)` of the clip the objective scores.
        files: per role (`ROLES`), the clip file, relative to the run folder.
        design_predicted: per role, the twin's mean rate of the target over the window.
        rms_contrast: the contrast budget of the design and its controls.
        method: how the design was made ("gradient", "optuna (family)").
        seconds: wall time of the design.
        refined_from: the earlier design this one started from (`design.refine`), if any.
        twin_accuracy: the twin's held-out accuracy on the target (`CellAccuracy.to_json`), if measured.
    """

    cell: int
    cell_index: int
    objective: str
    window: tuple[int, int]
    files: Mapping[str, str]
    design_predicted: Mapping[str, float] = field(default_factory=dict)
    rms_contrast: float | None = None
    method: str = ""
    seconds: float = 0.0
    refined_from: str | None = None
    twin_accuracy: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"cell": self.cell, "cell_index": self.cell_index, "objective": self.objective,
                "window": list(self.window), "files": dict(self.files), "design_predicted": dict(self.design_predicted),
                "rms_contrast": self.rms_contrast, "method": self.method, "seconds": self.seconds,
                "refined_from": self.refined_from,
                "twin_accuracy": None if self.twin_accuracy is None else dict(self.twin_accuracy)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DesignItem:
        a, b = d["window"]
        return cls(cell=int(d["cell"]), cell_index=int(d["cell_index"]), objective=str(d["objective"]),
                   window=(int(a), int(b)), files={str(k): str(v) for k, v in d["files"].items()},
                   design_predicted={str(k): float(v) for k, v in (d.get("design_predicted") or {}).items()},
                   rms_contrast=d.get("rms_contrast"), method=str(d.get("method", "")),
                   seconds=float(d.get("seconds", 0.0)), refined_from=d.get("refined_from"),
                   twin_accuracy=d.get("twin_accuracy"))


@dataclass(frozen=True)
class PlanEntry:
    """One distinct clip of a round's plan.

    Attributes:
        index: its position in the plan (and in the session's presentations).
        file: the clip file, relative to the run folder.
        stimulus_id: the rig bridge's content hash of the clip (`rig_bridge.protocol.stimulus_id`).
        n_frames: its length.
        uses: the `(item position, role)` pairs it serves: a natural control may serve two objectives.
    """

    index: int
    file: str
    stimulus_id: str
    n_frames: int
    uses: tuple[tuple[int, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "file": self.file, "stimulus_id": self.stimulus_id, "n_frames": self.n_frames,
                "uses": [[i, role] for i, role in self.uses]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PlanEntry:
        return cls(index=int(d["index"]), file=str(d["file"]), stimulus_id=str(d["stimulus_id"]),
                   n_frames=int(d["n_frames"]), uses=tuple((int(i), str(role)) for i, role in d["uses"]))

"""A run's progress on disk (`OUT/state.json`), rewritten atomically after every step.

The state says which steps of which round are finished and what they produced (small JSON
values only; arrays live in files next to it). A rerun of the same command reads it and skips
what is done. Presentations have a second, finer record: the rig bridge's session journal,
which the runner consults so that a presentation stored just before a crash is never shown
again (see `runner`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stimuli.errors import InsilicoError
from stimuli.files import write_json

STATE_FILE = "state.json"
STATE_VERSION = 1


@dataclass
class RunState:
    """Finished steps per round (`"0"` holds the run's set-up steps) and their records."""

    path: Path
    protocol_digest: str
    kind: str
    model: str | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    # --- queries ------------------------------------------------------------------------------
    def done(self, round_index: int, step: str) -> bool:
        return step in self.steps.get(str(round_index), {})

    def record(self, round_index: int, step: str) -> Any:
        """What a finished step recorded (KeyError if it is not finished)."""
        return self.steps[str(round_index)][step]

    def get(self, round_index: int, step: str, default: Any = None) -> Any:
        return self.steps.get(str(round_index), {}).get(step, default)

    # --- updates (each one saved at once) ---------------------------------------------------------
    def mark(self, round_index: int, step: str, record: Any = True) -> None:
        self.steps.setdefault(str(round_index), {})[step] = record
        self.save()

    def save(self) -> None:
        write_json(self.path, {
            "version": STATE_VERSION, "protocol_digest": self.protocol_digest, "kind": self.kind,
            "model": self.model, "created": self.created, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "steps": self.steps,
        })

    # --- files ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> RunState:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InsilicoError(f"{path}: the run state is damaged ({err}); start over in a new --out folder") from None
        if data.get("version") != STATE_VERSION:
            raise InsilicoError(f"{path}: run state version {data.get('version')} is not {STATE_VERSION}")
        return cls(path=path, protocol_digest=str(data["protocol_digest"]), kind=str(data["kind"]),
                   model=data.get("model"), steps=dict(data.get("steps", {})), created=str(data.get("created", "")))

    @classmethod
    def open(cls, out_dir: str | Path, protocol_digest: str, kind: str, model: str | None) -> RunState:
        """The state of a run in `out_dir`: resumed if it exists (and is this run), else new."""
        path = Path(out_dir) / STATE_FILE
        if not path.is_file():
            state = cls(path=path, protocol_digest=protocol_digest, kind=kind, model=model)
            state.save()
            return state
        state = cls.load(path)
        if state.protocol_digest != protocol_digest or state.kind != kind:
            raise InsilicoError(f"{out_dir} holds a run of another protocol (or the protocol file changed since): "
                                "continue it with the same file, or choose a new --out folder")
        if state.model is not None and model is not None and Path(state.model).resolve() != Path(model).resolve():
            raise InsilicoError(f"{out_dir} holds a run started from the model {state.model}, not {model}: "
                                "continue it with the same --model, or choose a new --out folder")
        return state

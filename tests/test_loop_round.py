"""One closed-loop round in this process: an LN twin, zero design steps, the simulated rig in-process.

The fast tier's check of the whole round (design -> plan -> predict -> present -> fine-tune ->
evaluate -> summary -> report); `test_loop_resume` runs it as processes that crash and resume.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from insilico.loop.records import DesignItem, PlanEntry
from insilico.loop.runner import run_protocol
from rig_bridge.retina.backend import SimBackend
from rig_bridge.server import RigServer, ServerConfig
from rig_bridge.transport import free_port
from stimuli.recording import open_recording

CELL = 3  # an id of the tiny recording (12 cells, 32 x 32 px, sim seed 0)

PROTOCOL = """
kind = "mei_closed_loop"
rounds = 1
[design]
cells = [{cell}]
objectives = ["increase"]
n_frames = 40
window_frames = 2
seeds = 1
steps = 0
comparison_trials = 1
natural_top_k = 1
device = "cpu"
[presentation]
repeats = 2
isi_grey_frames = 2
[finetune]
mode = "full"
epochs = 1
include_training_data = false
[evaluation]
data = "{data}"
segment = "mov2"
"""


@pytest.fixture(scope="module")
def ln_twin(tiny_recording: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LN twin shaped for the tiny recording, its weights as initialised (the round needs no accuracy)."""
    import torch

    from vist_model.fit_twin import TwinSpec, new_twin
    from vist_model.provenance import data_record
    from vist_model.receptive_fields import receptive_fields

    with open_recording(tiny_recording) as rec:
        rfs = receptive_fields(rec)
        torch.manual_seed(0)
        twin = new_twin(rec, TwinSpec(kind="ln"), rfs.maps, rfs.source)
    twin.metadata = replace(twin.metadata, training={**data_record(tiny_recording), "train_segments": ["mov1"]})
    out = tmp_path_factory.mktemp("runs") / "ln"
    twin.save(out / "model.pt")
    return out


def test_one_round_in_process(ln_twin: Path, tiny_recording: Path, tmp_path: Path) -> None:
    protocol = tmp_path / "loop.toml"
    protocol.write_text(PROTOCOL.format(cell=CELL, data=tiny_recording))
    backend = SimBackend(n_cells=12, size=32, seed=0)
    out = tmp_path / "exp"
    with RigServer(backend, ServerConfig(port=free_port(), store_dir=tmp_path / "store", insecure=True)) as rig:
        outcome = run_protocol(protocol, ln_twin, rig.address, out, insecure=True, timeout_s=30, live=False)
    state = json.loads((out / "state.json").read_text())["steps"]
    items = [DesignItem.from_json(d) for d in state["1"]["design"]]
    plan = [PlanEntry.from_json(e) for e in state["1"]["plan"]]
    assert [(i.cell, i.objective) for i in items] == [(CELL, "increase")]
    assert {role for e in plan for _, role in e.uses} == {"design", "natural", "parametric"}
    with open_recording(out / "round_1" / "session.h5") as rec:
        assert len(rec.segments) == len(plan)
        assert all(rec.counts(segment=s.name).shape == (2, 40, 12) for s in rec.segments)
    summary = json.loads((out / "round_1" / "summary.json").read_text())
    assert all(r["measured"] is not None and r["measured"] >= 0 for r in summary["rows"])
    assert np.isfinite(summary["design_error"]["mae"]) and -1 <= summary["heldout"]["cc_mean"] <= 1
    assert (out / "round_1" / "twin" / "model.pt").is_file() and outcome.report.is_file()

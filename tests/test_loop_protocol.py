"""Protocol files: the shipped ones load; bad ones fail naming the file and the key. Run state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest

from insilico.design.settings import DesignSettings
from insilico.loop.demo import pick_cells
from insilico.loop.protocol import (
    SHIPPED_PROTOCOLS,
    CharacterizeProtocol,
    ClosedLoopProtocol,
    FinetuneProtocol,
    NewRetinaProtocol,
    ProtocolError,
    load_protocol,
)
from insilico.loop.records import DesignItem, PlanEntry
from insilico.loop.rows import by_objective, by_role, design_error, response_rows
from insilico.loop.state import RunState
from stimuli.errors import InsilicoError

PROTOCOLS = SHIPPED_PROTOCOLS

MINIMAL_LOOP = """
kind = "mei_closed_loop"
rounds = 2
[design]
cells = [42, 3]
n_frames = 48
"""


def _write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_protocols_load(tmp_path: Path) -> None:
    c = load_protocol(PROTOCOLS / "characterize.toml")
    assert isinstance(c, CharacterizeProtocol)
    assert [s.family for s in c.stimuli] == ["white_noise", "chirp", "moving_bars", "natural_movie"]
    assert c.stimuli[0].repeats == 1 and c.stimuli[1].repeats == 10  # the default and an override
    loop = load_protocol(PROTOCOLS / "mei_closed_loop.toml")
    assert isinstance(loop, ClosedLoopProtocol)
    assert loop.rounds == 3 and loop.design.objectives == ("increase", "discriminative")
    assert loop.design.controls == ("natural", "parametric") and not loop.finetune.readout_only
    assert loop.finetune.session_share == 0.5 and loop.finetune.focus_weight == 20.0 and loop.design.refine
    # Round 1 designs as `insilico optimize` does by default (issue 22: the entry points agree).
    assert loop.design.settings_for("increase").start == DesignSettings().start == "auto"
    ft = load_protocol(PROTOCOLS / "finetune.toml")
    assert isinstance(ft, FinetuneProtocol) and ft.session is None and not ft.finetune.readout_only
    new = load_protocol(PROTOCOLS / "new_retina.toml")  # a new retina on a core (issue 19)
    assert isinstance(new, NewRetinaProtocol) and new.core.path is None and new.core.top_cells == 4
    stimuli = new.characterize.stimuli
    assert [(s.name, s.family, s.repeats) for s in stimuli] == [
        ("test_movie", "natural_movie", 5), ("white_noise", "white_noise", 1), ("train_movie", "natural_movie", 1)]
    assert sum(s.seconds * s.repeats for s in stimuli) <= 7 * 60  # minutes, not an hour
    assert new.loop.design.cells == () and new.loop.rounds == 2 and new.loop.finetune.session_share == 0.5
    assert new.core.train == ("train_movie", "white_noise")  # the readout learns from both, as `insilico train`
    one = (PROTOCOLS / "new_retina.toml").read_text().replace('train = ["train_movie", "white_noise"]',
                                                              'train = "train_movie"')
    assert load_protocol(_write(tmp_path, one)).core.train == ("train_movie",)


@pytest.mark.parametrize(("edit", "message"), [
    (("test = \"test_movie\"", "test = \"nothing\""), "core.test: must name a stimulus"),
    (("test = \"test_movie\"", "test = \"train_movie\""), "is shown 1 time(s)"),
    (("[core]\n", "[core]\ncolour = 1\n"), "core.colour: unknown key"),
    (('"train_movie", "white_noise"]', '"train_movie", "nothing"]'), "core.train: unknown value 'nothing'"),
    (('train = ["train_movie", "white_noise"]', 'train = "nothing"'), "core.train: must name a stimulus"),
    (('train = ["train_movie", "white_noise"]', 'train = ["test_movie"]'), "test and train name the same"),
])
def test_new_retina_refusals(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = (PROTOCOLS / "new_retina.toml").read_text().replace(*edit)
    with pytest.raises(ProtocolError) as err:
        load_protocol(_write(tmp_path, text))
    assert message in str(err.value)


def test_defaults_fill_optional_tables(tmp_path: Path) -> None:
    p = load_protocol(_write(tmp_path, MINIMAL_LOOP))
    assert p.design.cells == (42, 3) and p.design.settings.n_frames == 48
    assert p.presentation.repeats == 5 and p.finetune.window == 40 and p.evaluation.segment == "mov2"
    assert p.design.settings.rms_contrast is None and not p.design.refine
    # The digest identifies the file's content (a resumed run refuses an edited protocol).
    assert load_protocol(_write(tmp_path, MINIMAL_LOOP + "\n# edit\n", "q.toml")).digest != p.digest


@pytest.mark.parametrize(("text", "message"), [
    (MINIMAL_LOOP + "roundz = 3\n", "roundz: unknown key"),
    (MINIMAL_LOOP.replace("n_frames = 48", "n_frames = 48\nstepz = 2"), "design.stepz: unknown key"),
    (MINIMAL_LOOP.replace("rounds = 2\n", ""), "rounds: missing"),
    (MINIMAL_LOOP.replace("rounds = 2", 'rounds = "two"'), "rounds: must be int, got str"),
    (MINIMAL_LOOP.replace("rounds = 2", "rounds = 0"), "rounds: must be >= 1"),
    (MINIMAL_LOOP.replace("cells = [42, 3]", "cells = [42, 42]"), "design.cells: lists a cell twice"),
    (MINIMAL_LOOP.replace("cells = [42, 3]", 'cells = ["a"]'), "design.cells: must be a non-empty list"),
    (MINIMAL_LOOP.replace("n_frames = 48", 'n_frames = 48\nmethod = "optuna"\nrefine = true'),
     "design.refine: refines gradient designs"),
    (MINIMAL_LOOP.replace("n_frames = 48", 'n_frames = 48\nrefine = "yes"'), "design.refine: must be bool"),
    (MINIMAL_LOOP + '[finetune]\nmode = "partial"\n', "finetune.mode: must be readout or full"),
    (MINIMAL_LOOP + "[finetune]\nwindow = 20\n", "finetune.window: must be >= 40"),
    (MINIMAL_LOOP + "[finetune]\ninclude_training_data = 1\n", "include_training_data: must be bool"),
    (MINIMAL_LOOP + "[finetune]\nsession_share = 1.5\n", "finetune.session_share: must be in (0, 1)"),
    (MINIMAL_LOOP.replace("n_frames = 48", "n_frames = 30"), "design.n_frames (30) must be >= finetune.window"),
    (MINIMAL_LOOP.replace("n_frames = 48", 'n_frames = 48\nobjectives = ["wild"]'),
     "design.objectives: unknown value 'wild'"),
    (MINIMAL_LOOP.replace('kind = "mei_closed_loop"', 'kind = "loop"'), "kind: must be one of"),
    ("rounds = 2\n", "kind: missing"),
    ('kind = "characterize"\n', "stimulus: needs one or more [[stimulus]] tables"),
    ('kind = "characterize"\n[[stimulus]]\nfamily = "plaid"\n', "stimulus[0].family: must be one of"),
    ('kind = "characterize"\n[[stimulus]]\nfamily = "chirp"\nspeed = 3\n', "stimulus[0].speed: unknown key"),
    ('kind = "characterize"\n[[stimulus]]\nfamily = "chirp"\n[[stimulus]]\nfamily = "chirp"\n', "unique"),
    ("kind = [", "not valid TOML"),
])
def test_bad_protocols_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_protocol_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such protocol"):
        load_protocol(tmp_path / "none.toml")


def test_state_round_trip_and_refusals(tmp_path: Path) -> None:
    state = RunState.open(tmp_path, "abc", "mei_closed_loop", str(tmp_path / "m"))
    assert not state.done(1, "design")
    state.mark(1, "design", [{"cell": 42, "window": np.array([57, 60])}])
    state.mark(0, "baseline", {"cc_mean": 0.25})
    again = RunState.open(tmp_path, "abc", "mei_closed_loop", str(tmp_path / "m"))
    assert again.done(1, "design") and again.record(1, "design") == [{"cell": 42, "window": [57, 60]}]
    assert again.record(0, "baseline")["cc_mean"] == 0.25 and again.get(2, "present") is None
    assert not list(tmp_path.glob(".*.part*"))  # written through a temporary file
    with pytest.raises(InsilicoError, match="another protocol"):
        RunState.open(tmp_path, "other", "mei_closed_loop", str(tmp_path / "m"))
    with pytest.raises(InsilicoError, match="started from the model"):
        RunState.open(tmp_path, "abc", "mei_closed_loop", str(tmp_path / "elsewhere"))
    (tmp_path / "state.json").write_text("{torn")
    with pytest.raises(InsilicoError, match="damaged"):
        RunState.load(tmp_path / "state.json")


def test_round_figures_from_rows() -> None:
    items = [DesignItem(42, 1, "increase", (2, 4), {"design": "d.h5", "natural": "n.h5"}),
             DesignItem(42, 1, "discriminative", (2, 4), {"design": "x.h5", "natural": "n.h5"})]
    plan = [PlanEntry(0, "d.h5", "s0", 4, ((0, "design"),)),
            PlanEntry(1, "n.h5", "s1", 4, ((0, "natural"), (1, "natural"))),
            PlanEntry(2, "x.h5", "s2", 4, ((1, "design"),))]
    predicted = {0: np.array([[0, 0], [0, 0], [0, 3.0], [0, 5.0]]), 1: np.ones((4, 2)),
                 2: np.array([[0, 0], [0, 0], [1.0, 3.0], [1.0, 3.0]])}
    # Two repeats of clip 0; the target's window means are 1.0 and 3.0 (mean 2, s.e.m. 1).
    trial = np.array([[0, 9], [0, 9], [0, 1.0], [0, 1.0]])
    measured = {0: np.stack([trial, trial + [[0, 0], [0, 0], [0, 2], [0, 2]]]),
                2: np.array([[[5, 1], [5, 1], [4.0, 1.0], [4.0, 1.0]], [[np.nan, np.nan]] * 4])}  # 1 of 2 shown
    rows = response_rows(items, plan, predicted, measured)
    assert [(r["objective"], r["role"], r["predicted"], r["measured"]) for r in rows] == [
        ("increase", "design", 4.0, 2.0), ("increase", "natural", 1.0, None),
        ("discriminative", "design", 3.0, 1.0), ("discriminative", "natural", 1.0, None)]
    assert rows[0]["measured_sem"] == pytest.approx(1.0)
    assert rows[2]["measured_sem"] is None  # one repeat shown: no spread to report
    # Margin: the target minus the strongest other cell (cell 0 fires 4 in clip 2's window).
    assert rows[2]["predicted_margin"] == 2.0 and rows[2]["measured_margin"] == -3.0
    assert design_error(rows) == {"mae": 2.0, "relative": 2.0 / 1.5, "n": 2}
    assert by_role(rows, "measured") == {"design": 1.5}
    assert by_role(rows, "predicted") == {"design": 3.5, "natural": 1.0}
    # Each objective by what it asks: increase by the rate, discriminative by the margin.
    assert by_objective(rows, "measured") == {"increase": {"design": 2.0}, "discriminative": {"design": -3.0}}
    assert by_objective(rows, "predicted") == {"increase": {"design": 4.0, "natural": 1.0},
                                               "discriminative": {"design": 2.0, "natural": 0.0}}
    assert json.dumps(rows)  # plain JSON for the round summary


def test_pick_cells_keeps_42_when_the_twin_knows_it_and_adds_the_best_predicted() -> None:
    ids = (0, 1, 2, 42)
    assert pick_cells(np.array([0.1, np.nan, 0.5, 0.4]), ids, (42,), 2) == ([42, 2, 0], [])
    assert pick_cells(np.array([0.1, 0.2, 0.5, 0.9]), ids, (99,), 1) == ([42, 2], [])


def test_pick_cells_drops_a_cell_the_twin_does_not_know() -> None:
    ids = (0, 1, 2, 42)
    # Cell 42 at held-out CC -0.2: its design would show the recorded STA, not the twin.
    assert pick_cells(np.array([0.1, np.nan, 0.5, -0.2]), ids, (42,), 1) == ([2, 0], [42])


def test_cli_refuses_bad_input_clearly(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from insilico.loop.cli import demo_command, run_command

    app = typer.Typer()
    app.command("run")(run_command)
    app.command("demo")(demo_command)
    bad = _write(tmp_path, MINIMAL_LOOP + "roundz = 3\n")
    result = CliRunner().invoke(app, ["run", str(bad), "--out", str(tmp_path / "exp")])
    assert result.exit_code == 2 and "roundz: unknown key" in result.output
    good = _write(tmp_path, MINIMAL_LOOP, "good.toml")
    result = CliRunner().invoke(app, ["run", str(good), "--rig", "tcp://127.0.0.1:1", "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "--insecure" in result.output
    result = CliRunner().invoke(app, ["run", str(good), "--rig", "tcp://127.0.0.1:1", "--insecure",
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "--model" in result.output


# A design item and a plan entry as the run state of a round stored them before they were records.
OLD_ITEM = {"cell": 42, "cell_index": 1, "objective": "increase", "window": [57, 60],
            "files": {"design": "round_1/designs/increase/cell42.h5", "natural": "round_1/n.h5"},
            "design_predicted": {"design": 2.5, "natural": 1.0, "parametric": 0.5}, "rms_contrast": 0.2,
            "method": "gradient", "seconds": 3.2, "refined_from": None, "twin_accuracy": None}
OLD_ENTRY = {"index": 0, "file": "round_1/designs/increase/cell42.h5", "stimulus_id": "abc", "n_frames": 60,
             "uses": [[0, "design"], [1, "natural"]]}


def test_records_read_old_run_state_and_write_it_back_unchanged(tmp_path: Path) -> None:
    state = RunState.open(tmp_path, "abc", "mei_closed_loop", None)
    state.mark(1, "design", [OLD_ITEM])
    state.mark(1, "plan", [OLD_ENTRY])
    again = RunState.open(tmp_path, "abc", "mei_closed_loop", None)
    item = DesignItem.from_json(again.record(1, "design")[0])
    entry = PlanEntry.from_json(again.record(1, "plan")[0])
    assert item.files["design"].endswith("cell42.h5") and item.window == (57, 60) and item.cell_index == 1
    assert entry.uses == ((0, "design"), (1, "natural"))
    assert item.to_json() == OLD_ITEM and entry.to_json() == OLD_ENTRY
    with pytest.raises(FrozenInstanceError):
        item.cell = 3  # type: ignore[misc]


def test_report_and_rows_import_without_torch() -> None:
    """The report, the runner and the round figures run on a machine without torch until a twin is needed."""
    code = ("import sys; import insilico.loop.report, insilico.loop.rows, insilico.loop.runner, "
            "insilico.loop.protocol, insilico.loop.evaluation; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "False", out.stderr

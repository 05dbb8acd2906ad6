"""The command line: simulate -> inspect -> train -> evaluate, and clear refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from insilico.cli import app
from stimuli.recording import open_recording

runner = CliRunner()


def test_simulate_then_inspect(tmp_path: Path) -> None:
    out = tmp_path / "sim.h5"
    result = runner.invoke(app, ["simulate", "--out", str(out), "--cells", "10", "--size", "24",
                                 "--train-seconds", "4", "--test-seconds", "2", "--noise-seconds", "4"])
    assert result.exit_code == 0, result.output
    with open_recording(out) as rec:
        assert [s.name for s in rec.segments] == ["mov1", "mov2", "noise"]
        assert rec.repeats_shown("mov2") == 5 and rec.repeats_shown("mov1") == 1
        assert 42 in rec.cell_ids and rec.rf.shape == (10, 24, 24)
    result = runner.invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["n_cells"] == 10 and summary["frame_rate"] == 30.0
    mov2 = next(s for s in summary["segments"] if s["name"] == "mov2")
    assert mov2["repeats"] == 5 and 0 < mov2["split_half_reliability"] <= 1
    assert runner.invoke(app, ["inspect", str(out)]).exit_code == 0


def test_inspect_refuses_a_bad_file_naming_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["format"] = "insilico-recording"
        f.attrs["version"] = 1
        f.attrs["frame_rate"] = 30.0
        f["stimulus/frames"] = np.zeros((4, 3, 3), np.float32)
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 2
    assert "/stimulus/frames" in result.output and "uint8" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--out", "x.h5", "--cells", "0"], "--cells must be >= 1"),
        (["simulate", "--out", "x.h5", "--test-repeats", "1"], "--test-repeats must be >= 2"),
        (["evaluate", "--model", "absent", "--data", "absent.h5"], "no twin checkpoint"),
        (["train", "--data", "absent.h5", "--out", "r"], "no such recording"),
    ],
)
def test_bad_arguments_get_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output.replace("\n", " ")


def test_train_and_evaluate_commands(tiny_recording: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     feature_cache_dir: Path) -> None:
    monkeypatch.setenv("INSILICO_CACHE", str(feature_cache_dir.parent))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(tiny_recording), "--model", "ln", "--out", str(run),
                                 "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "backbone: none" in result.output and "receptive fields: /cells/rf" in result.output
    result = runner.invoke(app, ["evaluate", "--model", str(run), "--data", str(tiny_recording),
                                 "--json", str(tmp_path / "e.json"), "--csv", str(tmp_path / "c.csv")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["model"] == "ln" and len(data["per_cell"]) == 12
    assert (tmp_path / "e.png").exists()

"""`insilico optimize` / `insilico verify` end to end on the tiny twin: files, CLI, truth."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from insilico.design.cli import optimize_command, verify_command
from insilico.design.postprocess import clip_stats
from insilico.design.run import optimize_cells
from insilico.design.settings import design_settings
from insilico.design.verify import verify_design
from stimuli.errors import InsilicoError
from stimuli.recording import open_recording
from vist_model.twin import Twin

CELL = 3  # an id of the tiny recording (12 cells)

# One full design (gradient, Optuna, natural clip) through the twin: over 20 s on 2 busy cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("optimize")(optimize_command)
    app.command("verify")(verify_command)
    return app


@pytest.fixture(scope="module")
def designs(app: typer.Typer, tiny_twin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("designs")
    result = CliRunner().invoke(app, [
        "optimize", "--model", str(tiny_twin_dir), "--cell", str(CELL), "--out", str(out), "--method", "both",
        "--frames", "6", "--window", "2", "--seeds", "2", "--steps", "1", "--trials", "2", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "backbone: tiny" in result.output
    assert f"cell {CELL}:" in result.output
    return out


def test_design_files_are_valid_stimulus_recordings(designs: Path) -> None:
    for name in (f"cell{CELL}.h5", f"cell{CELL}_natural.h5", f"cell{CELL}_parametric.h5"):
        with open_recording(designs / name) as rec:
            assert not rec.has_responses
            assert rec.shape[0] == 6
            frames, attrs = rec.frames(), rec.attrs
        assert attrs["cell_id"] == CELL
        assert json.loads(attrs["window"]) == [4, 6]
        mean, rms = clip_stats(frames)
        budget = float(attrs["rms_contrast"])
        # Quantising to grey levels moves the budget by well under a grey level; a design or
        # parametric stimulus confined to the receptive field may sit below it (the budget is
        # a ceiling); the natural clip spans the screen and meets it. A gradient design inside
        # its envelope is scaled about grey (`postprocess._about_grey`): its mean is its own,
        # off grey by at most the envelope's share of the screen times its contrast.
        assert abs(mean - 0.5) < (0.05 if name == f"cell{CELL}.h5" else 2e-3) and rms < budget + 2e-3
        if "natural" in name:
            assert abs(rms - budget) < 2e-3
    with open_recording(designs / f"cell{CELL}.h5") as rec:
        attrs = rec.attrs
    assert attrs["method"] == "gradient" and "increase" in attrs["objective"] and "seed" in attrs


def test_summary_and_previews(designs: Path) -> None:
    summary = json.loads((designs / f"cell{CELL}.json").read_text())
    assert set(summary["predicted_response"]) == {"design", "natural", "parametric"}
    assert summary["seconds"] > 0 and summary["seed"] in (0, 1)
    assert summary["settings"]["n_frames"] == 6
    assert summary["budget"]["source"].startswith("training movies")
    assert summary["parametric"]["trials"] == 3  # 2 TPE + 1 CMA-ES
    assert (designs / f"cell{CELL}.png").stat().st_size > 1000
    assert (designs / f"cell{CELL}.gif").read_bytes()[:3] == b"GIF"
    assert (designs / "optuna.journal").is_file()
    # The predicted numbers come with the twin's held-out accuracy on this cell.
    acc = summary["twin_accuracy"]
    assert acc["measured"] and acc["segment"] == "mov2" and -1 <= acc["held_out_cc"] <= 1
    assert acc["twin_knows_cell"] == (acc["held_out_cc"] >= 0.3) and (acc["note"] is None) == acc["twin_knows_cell"]


def test_verify_reports_true_responses(app: typer.Typer, designs: Path, tiny_recording: Path) -> None:
    v = verify_design(designs / f"cell{CELL}.h5", data=tiny_recording)
    assert v.cell_id == CELL and v.window == (4, 6)
    assert v.design > 0 and v.natural is not None and v.parametric is not None
    if v.linear:
        assert v.optimum is not None and v.optimum > 0
    # --sim SEED rebuilds the same retina from the seed and the design's attributes.
    with open_recording(tiny_recording) as rec:
        seed = int(rec.attrs["sim_seed"])
    assert verify_design(designs / f"cell{CELL}.h5", sim_seed=seed).design == pytest.approx(v.design)
    result = CliRunner().invoke(app, ["verify", "--design", str(designs / f"cell{CELL}.h5"),
                                      "--data", str(tiny_recording), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["true_response"]["design"] == pytest.approx(v.design)


def test_missing_training_data_needs_an_explicit_budget(tiny_twin_dir: Path, tmp_path: Path) -> None:
    twin = Twin.load(tiny_twin_dir)
    twin.metadata = replace(twin.metadata, training={**twin.metadata.training, "data": str(tmp_path / "gone.h5")})
    with pytest.raises(InsilicoError, match="design setting rms_contrast"):
        optimize_cells(twin, [CELL], tmp_path / "d", design_settings(n_frames=6, seeds=1))


def test_the_default_budget_is_the_training_movies_not_the_white_noise(tiny_twin_dir: Path) -> None:
    from insilico.design.budget import resolve_budget

    twin = Twin.load(tiny_twin_dir)
    movie = resolve_budget(twin.metadata, frame_rms="training")
    # The same twin had it also trained on the white noise (as `insilico train` does by default).
    both = replace(twin.metadata, training={**twin.metadata.training, "train_segments": ["mov1", "noise"]})
    assert resolve_budget(both, frame_rms="training") == movie
    assert movie.source.endswith("[mov1]") and 0.1 < movie.rms < 0.3
    noise_only = replace(twin.metadata, training={**twin.metadata.training, "train_segments": ["noise"]})
    assert resolve_budget(noise_only).rms > 0.4  # a twin of white noise alone: its noise is the budget


def test_cli_refuses_bad_input_clearly(app: typer.Typer, tiny_twin_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["optimize", "--model", str(tiny_twin_dir), "--cell", "999", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no cells with ids [999]" in result.output
    result = runner.invoke(app, ["optimize", "--model", str(tiny_twin_dir), "--cell", str(CELL), "--out",
                                 str(tmp_path), "--method", "magic"])
    assert result.exit_code == 2 and "--method" in result.output
    assert not np.any([p.suffix == ".h5" for p in tmp_path.iterdir()])


def test_a_design_refines_an_earlier_one(app: typer.Typer, designs: Path, tiny_twin_dir: Path, tmp_path: Path) -> None:
    earlier = designs / f"cell{CELL}.h5"
    args = ["optimize", "--model", str(tiny_twin_dir), "--cell", str(CELL), "--window", "2", "--seeds", "1",
            "--trials", "1", "--device", "cpu", "--start", str(earlier)]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "again"), "--frames", "6", "--steps", "0"])
    assert result.exit_code == 0, result.output
    # No step: the refined design is the earlier one (within a grey level of re-quantising).
    with open_recording(earlier) as a, open_recording(tmp_path / "again" / f"cell{CELL}.h5") as b:
        assert np.abs(a.frames().astype(int) - b.frames().astype(int)).max() <= 1
    assert json.loads((tmp_path / "again" / f"cell{CELL}.json").read_text())["started_from"] == str(earlier)
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "long"), "--frames", "8"])
    assert result.exit_code != 0 and "must be 8 frames" in " ".join(result.output.split())
    result = runner.invoke(app, [*args[:3], "--cells", f"{CELL},4", *args[5:], "--out", str(tmp_path / "two")])
    assert result.exit_code != 0 and "one --cell" in " ".join(result.output.split())


def test_a_design_can_start_from_the_measured_sta(app: typer.Typer, tiny_twin_dir: Path, tmp_path: Path) -> None:
    args = ["optimize", "--model", str(tiny_twin_dir), "--cell", str(CELL), "--window", "2", "--seeds", "1",
            "--trials", "1", "--device", "cpu", "--frames", "6", "--steps", "0", "--start-from", "sta"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "sta")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "sta" / f"cell{CELL}.json").read_text())
    assert summary["started_from"].startswith("denoised STA of") and summary["settings"]["start"] == "sta"
    with open_recording(tmp_path / "sta" / f"cell{CELL}.h5") as rec:
        frames = rec.frames().astype(float)
    # No step: the clip is the STA's lags before the window's middle frame (4), grey after it.
    assert np.ptp(frames[:5]) > 20 and np.ptp(frames[5]) <= 2

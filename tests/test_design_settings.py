"""One source for the design settings: `insilico optimize`, a protocol's [design] table and the demo agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from insilico.design.cli import FLAGS, command_settings, optimize_command
from insilico.design.settings import (
    DESIGN_PRESETS,
    SETTING_NAMES,
    DesignSettingError,
    DesignSettings,
    default,
    design_settings,
)
from insilico.loop.demo import DemoConfig, demo_protocol
from insilico.loop.protocol import ProtocolError, load_protocol
from stimuli.errors import InsilicoError

LOOP = """
kind = "mei_closed_loop"
rounds = 1
[design]
cells = [3]
objectives = ["increase"]
{design}
"""

# The same settings as `insilico optimize` flags and as [design] keys.
FLAG_ARGS = ["--frames", "48", "--steps", "3", "--seeds", "2", "--rf-envelope", "0.5", "--start-from", "sta",
             "--trials", "5", "--window", "4", "--method", "both", "--rms-contrast", "0.15", "--frame-rms", "0.25",
             "--envelope-source", "rf"]
DESIGN_KEYS = ('n_frames = 48\nsteps = 3\nseeds = 2\nrf_envelope = 0.5\nstart = "sta"\ntrials = 5\n'
               'window_frames = 4\nmethod = "both"\nrms_contrast = 0.15\nframe_rms = 0.25\nenvelope_source = "rf"')

# A valid value other than the default, for every design setting a protocol can set.
NOT_DEFAULT = {"method": "both", "n_frames": 50, "window_frames": 5, "temperature": 0.3, "seeds": 2, "trials": 7,
               "cmaes_trials": 3, "comparison_trials": 5, "natural_top_k": 2, "start": "grey", "rms_contrast": 0.2,
               "storage": "sqlite:///designs.db", "steps": 2, "lr": 0.3, "jitter_px": 2, "time_shift": 0,
               "tv_weight": 0.1, "smooth_weight": 0.2, "preconditioner": "fourier", "blur_sigma": [3.0, 2.0],
               "diversity_weight": 0.5, "init_sigma": 1.0, "init": "noise", "init_scale": 0.1, "rf_envelope": 1.0,
               "frame_rms": "training", "attribution_method": "ig", "attribution_steps": 4,
               "envelope_source": "attribution", "natural_distance": 0.5, "parametric_fit_trials": 8}


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("optimize")(optimize_command)
    return app


def _flag_settings(args: list[str]) -> DesignSettings:
    """The settings `insilico optimize` builds from these flags (parsed by the command itself)."""
    command = typer.main.get_command(_app())
    ctx = command.make_context("optimize", ["--model", "m", "--cell", "3", *args])
    return command_settings(ctx.params)


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_cli_and_protocol_build_the_same_settings(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(LOOP.format(design=DESIGN_KEYS))
    from_protocol = load_protocol(path).design.settings_for("increase")
    assert _flag_settings(FLAG_ARGS) == from_protocol == design_settings(
        n_frames=48, steps=3, seeds=2, rf_envelope=0.5, start="sta", trials=5, window_frames=4, method="both",
        rms_contrast=0.15, frame_rms=0.25, envelope_source="rf")
    # Left out, every setting is the same default on both paths (n_frames: the loop's window needs 40+).
    path.write_text(LOOP.format(design=""))
    assert _flag_settings([]) == load_protocol(path).design.settings_for("increase") == DesignSettings()


def test_cli_defaults_are_the_settings_defaults() -> None:
    command = typer.main.get_command(_app())
    defaults = {p.name: p.default for p in command.params}
    for setting, (param, _) in FLAGS.items():
        assert defaults[param] == default(setting), setting


def test_every_design_setting_is_a_protocol_key(tmp_path: Path) -> None:
    assert set(NOT_DEFAULT) == set(SETTING_NAMES) - {"objective"}
    path = tmp_path / "p.toml"
    path.write_text(LOOP.format(design="\n".join(f"{k} = {_toml(v)}" for k, v in NOT_DEFAULT.items())))
    settings = load_protocol(path).design.settings
    assert settings == design_settings(**NOT_DEFAULT)
    for name, value in NOT_DEFAULT.items():
        held = getattr(settings.gradient, name) if hasattr(settings.gradient, name) else getattr(settings, name)
        expected = tuple(range(value)) if name == "seeds" else tuple(value) if isinstance(value, list) else value
        assert held == expected != default(name), name


def test_parametric_trials_follow_one_rule() -> None:
    # The full search: TPE trials plus half as many CMA-ES; gradient designs: the short comparison.
    assert design_settings(method="optuna", trials=24).search_trials() == (24, 12)
    assert design_settings(method="both", trials=1).search_trials() == (1, 0)
    assert design_settings(method="both", trials=9, cmaes_trials=4).search_trials() == (9, 4)
    assert design_settings(comparison_trials=5).search_trials() == (5, 0)


def test_a_bad_setting_is_named_as_the_setting_the_flag_or_the_key(tmp_path: Path) -> None:
    with pytest.raises(DesignSettingError, match="design setting window_frames 9 is longer than the clip"):
        design_settings(n_frames=8, window_frames=9)
    with pytest.raises(InsilicoError, match=r"^--window 9 is longer than the clip \(--frames 8\)"):
        _flag_settings(["--frames", "8", "--window", "9"])
    path = tmp_path / "p.toml"
    path.write_text(LOOP.format(design="n_frames = 40\nwindow_frames = 41"))
    with pytest.raises(ProtocolError, match=r"design\.window_frames: 41 is longer than the clip"):
        load_protocol(path)
    path.write_text(LOOP.format(design='start = "stA"'))
    with pytest.raises(ProtocolError, match=r"design\.start: must be one of auto, sta, attribution, natural, grey"):
        load_protocol(path)
    path.write_text(LOOP.format(design='objective = "increase"'))
    with pytest.raises(ProtocolError, match=r"design\.objective: unknown key"):
        load_protocol(path)
    with pytest.raises(DesignSettingError, match="stepz is not a design setting"):
        design_settings(stepz=3)


def test_the_demo_builds_its_protocol_from_the_same_records() -> None:
    c = DemoConfig()
    protocol = demo_protocol(c, [42, 7], Path("insilico demo"))
    assert protocol.design.settings == design_settings(**DESIGN_PRESETS["demo"])
    assert protocol.design.cells == (42, 7) and protocol.design.refine and protocol.finetune.lr == 1e-3
    # The digest identifies the settings: a resumed demo run refuses changed ones.
    assert demo_protocol(c, [42, 7], Path("x")).digest == protocol.digest
    assert demo_protocol(c, [42, 8], Path("x")).digest != protocol.digest


@pytest.mark.slow
def test_optimize_and_the_protocol_make_the_same_round_one_design(tiny_twin_dir: Path, tmp_path: Path) -> None:
    """`insilico optimize` and round 1 of `insilico run` (its `optimize_cells` call) design bit for bit alike."""
    from insilico.design.run import optimize_cells
    from stimuli.recording import open_recording
    from vist_model.twin import Twin

    args = ["--frames", "40", "--window", "2", "--seeds", "2", "--steps", "1", "--start-from", "auto"]
    result = CliRunner().invoke(_app(), ["--model", str(tiny_twin_dir), "--cell", "3", "--out", str(tmp_path / "cli"),
                                         "--device", "cpu", *args])
    assert result.exit_code == 0, result.output
    path = tmp_path / "p.toml"
    path.write_text(LOOP.format(design="n_frames = 40\nwindow_frames = 2\nseeds = 2\nsteps = 1\ndevice = \"cpu\""))
    protocol = load_protocol(path)
    optimize_cells(Twin.load(tiny_twin_dir, device="cpu"), list(protocol.design.cells), tmp_path / "loop",
                   protocol.design.settings_for("increase"))
    with open_recording(tmp_path / "cli" / "cell3.h5") as a, open_recording(tmp_path / "loop" / "cell3.h5") as b:
        assert np.array_equal(a.frames(), b.frames())

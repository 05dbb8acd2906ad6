"""A newcomer's first hour (issue 23): twins work from any folder, bad input fails fast and in one
line naming the flag, nothing is silently wrong, an interrupted training says how to resume.

Each test here failed on the code before issue 23.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from insilico.cli import app
from vist_model.twin import Twin, training_finished

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def _fails(args: list[str]) -> str:
    """The one-line error of a refused command (exit 2, no traceback)."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def ln_run(tiny_recording: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LN twin trained by `insilico train` with the recording named relative to the run's folder."""
    home = tmp_path_factory.mktemp("lab")
    shutil.copy(tiny_recording, home / "data.h5")
    cwd = Path.cwd()
    os.chdir(home)
    try:
        _ok(["train", "--data", "data.h5", "--model", "ln", "--out", "run", "--epochs", "1"])
    finally:
        os.chdir(cwd)
    return home / "run"


# --- item 1: a twin works from any folder --------------------------------------------------------
def test_a_twin_works_from_another_folder(ln_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vist_model.provenance import file_digest

    training = Twin.load(ln_run).metadata.training
    data = ln_run.parent / "data.h5"
    assert training["data"] == str(data.resolve()) and training["data_sha256"] == file_digest(data)
    monkeypatch.chdir(tmp_path)
    out = _ok(["optimize", "--model", str(ln_run), "--cell", "3", "--out", "designs", "--steps", "1",
               "--seeds", "1", "--frames", "8", "--window", "2", "--start-from", "grey"])
    assert "cell 3:" in out and (tmp_path / "designs" / "cell3.h5").is_file()


def test_a_moved_training_recording_is_found_by_content_or_named(ln_run: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from vist_model.provenance import locate_training_data

    training = dict(Twin.load(ln_run).metadata.training)
    training["data"] = str(tmp_path / "gone" / "data.h5")  # as if the lab folder had moved
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"gone.*SHA-256 {training['data_sha256'][:12]}"):
        locate_training_data(training)
    shutil.copy(ln_run.parent / "data.h5", tmp_path / "data.h5")
    assert locate_training_data(training) == (tmp_path / "data.h5").resolve()
    with h5py.File(tmp_path / "data.h5", "a") as f:  # same name, other content: not the twin's data
        f.attrs["edited"] = 1
    with pytest.raises(FileNotFoundError, match="no file of that name and content"):
        locate_training_data(training)


# --- items 4 and 5: nothing silently wrong; arguments checked before anything loads ------------
def _corrupt_run(tmp_path: Path) -> Path:
    """A run folder whose model.pt is not a checkpoint: a command that loads it first fails on it."""
    run = tmp_path / "corrupt"
    run.mkdir()
    (run / "model.pt").write_bytes(b"not a checkpoint")
    return run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "{junk}", "--out", "r", "--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["train", "--data", "{junk}", "--out", "r", "--epochs", "-1"], "--epochs must be >= 1, got -1"),
        (["train", "--data", "{junk}", "--out", "r", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["train", "--data", "{junk}", "--out", "{junk}/run"], "--out {junk}/run: cannot write there"),
        (["train", "--data", "{junk}", "--out", "{junk}"], "is a file, not a folder"),
        (["train", "--data", "{junk}", "--out", "r", "--preset", "gpu"], "--preset must be cpu or vist"),
        (["optimize", "--model", "{corrupt}", "--cells", "abc"], "--cells must be 'all' or comma-separated"),
        (["optimize", "--model", "{corrupt}", "--cell", "3", "--out", "{junk}"], "--out {junk}: is a file"),
        (["optimize", "--model", "{corrupt}", "--cell", "3", "--window", "9", "--frames", "8"],
         "--window 9 is longer than the clip"),
        (["attribute", "--model", "{corrupt}", "--data", "{junk}", "--cells", "abc"], "--cells must be 'all'"),
        (["attribute", "--model", "{corrupt}", "--data", "{junk}", "--cell", "3", "--ig-steps", "0"],
         "--ig-steps must be >= 1"),
        (["evaluate", "--model", "{corrupt}", "--data", "{junk}", "--json", "{junk}/e.json"], "--json"),
        (["simulate", "--out", "."], "--out .: is a folder; name a file"),
        (["run", "mei_closed_loop", "--rig", "tcp://127.0.0.1:5555"], "give --keys DIR"),
        (["run", "mei_closed_loop", "--model", "{corrupt}", "--insecure", "--rig", "tcp://127.0.0.1:1",
          "--out", "{junk}"], "--out {junk}: is a file"),
    ],
)
def test_bad_arguments_fail_first_naming_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.h5").write_bytes(b"not HDF5")  # read first by the old code, which failed on it
    names = {"junk": "junk.h5", "corrupt": str(_corrupt_run(tmp_path))}
    line = _fails([a.format(**names) for a in args])
    assert message.format(**names) in line
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_rig_keys_twice_names_the_flag(tmp_path: Path) -> None:
    _ok(["rig", "keys", "--out", str(tmp_path / "keys")])
    line = _fails(["rig", "keys", "--out", str(tmp_path / "keys")])
    assert "pass --overwrite to replace them" in line and "overwrite=True" not in line


def test_rig_present_without_keys_names_the_flags(tiny_recording: Path, tmp_path: Path) -> None:
    line = _fails(["rig", "present", str(tiny_recording), "--out", str(tmp_path / "s.h5")])
    assert "--keys DIR" in line and "--insecure" in line and "keys_dir" not in line


def test_errors_keep_their_toml_tables(tiny_recording: Path, tmp_path: Path) -> None:
    # Rich read "[monitor]" as markup and printed "unknown key 'widht_px' in  (known: ...)".
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "r"\n[monitor]\nwidht_px = 800\nheight_px = 600\nrefresh_rate_hz = 60\n')
    line = _fails(["render", str(tiny_recording), "--profile", str(bad), "--out", str(tmp_path / "s.h5")])
    assert "unknown key 'widht_px' in [monitor]" in line


def test_evaluate_on_one_repeat_says_so_and_writes_no_figure_unasked(ln_run: Path, tiny_recording: Path) -> None:
    out = _ok(["evaluate", "--model", str(ln_run), "--data", str(tiny_recording), "--test", "mov1"])
    text = " ".join(out.split())
    assert "mov1 was shown once" in text and "FEVE" in text and "n/a" in text and "nan" not in text
    assert not list(ln_run.glob("*traces*"))


def test_a_protocol_without_a_finetune_table_says_it_uses_the_defaults(tmp_path: Path) -> None:
    from insilico.loop.protocol import load_protocol

    path = tmp_path / "p.toml"
    path.write_text('kind = "mei_closed_loop"\nrounds = 1\n[design]\ncells = [3]\n[evaluation]\n')
    notes = load_protocol(path).notes
    assert len(notes) == 2 and "no [presentation] table: using the defaults (repeats = 5" in notes[0]
    assert "no [finetune] table: using the defaults (mode = 'readout', epochs = 8" in notes[1]


def test_a_readout_fine_tuning_of_a_twin_without_a_readout_fails_before_the_first_round(
        ln_run: Path, tmp_path: Path) -> None:
    protocol = tmp_path / "p.toml"
    protocol.write_text('kind = "mei_closed_loop"\nrounds = 1\n[design]\ncells = [3]\n')
    result = runner.invoke(app, ["run", str(protocol), "--model", str(ln_run), "--rig", "tcp://127.0.0.1:1",
                                 "--insecure", "--out", str(tmp_path / "exp"), "--no-live"])
    assert result.exit_code == 2 and "Traceback" not in result.output  # notes of the defaults come first
    assert 'mode = "readout" (the default) needs a twin with a readout layer' in result.output.splitlines()[-1]


# --- item 2: shipped profiles and protocols from any folder -----------------------------------
def test_shipped_profiles_and_protocols_resolve_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from insilico.loop.protocol import load_protocol
    from stimuli.presentation import load_profile

    monkeypatch.chdir(tmp_path)
    assert load_profile("rigs/default.toml").name == load_profile("default").name
    assert load_protocol("protocols/mei_closed_loop.toml").kind == load_protocol("mei_closed_loop").kind
    with pytest.raises(FileNotFoundError, match="shipped profile: default, projector_example"):
        load_profile("rigs/nope.toml")


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb")
def test_render_without_a_display_starts_its_own(tiny_recording: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "insilico.cli", "render", str(tiny_recording), "--profile",
                           "rigs/default.toml", "--out", "shown.h5", "--segment", "mov2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "presented" in done.stdout and (tmp_path / "shown.h5").is_file()


# --- item 6: Ctrl-C during training ------------------------------------------------------------
def test_ctrl_c_in_train_says_how_to_resume(tiny_recording: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_recording), "--model", "cnn", "--out", str(run), "--epochs", "500"]
    # A shell's background job ignores SIGINT, and so would this child (Python keeps an inherited
    # SIG_IGN): restore the default, as a terminal's Ctrl-C meets it.
    proc = subprocess.Popen([sys.executable, "-m", "insilico.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The state file appears (renamed into place whole) once the first epoch is done: then interrupt.
    deadline = time.monotonic() + 120
    while not (run / "train_state.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no epoch finished in 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert "interrupted after epoch" in stderr and "run the same command to resume" in stderr
    line = _fails(["evaluate", "--model", str(run), "--data", str(tiny_recording)])
    assert "interrupted here after epoch" in line and "resume" in line
    assert not training_finished(run)
    out = _ok([*args[:-1], "1"])  # the rerun resumes (and, past 1 epoch, finishes at once)
    assert "resuming the run" in out and (run / "model.pt").is_file() and training_finished(run)
    (run / "train_state.pt").write_bytes(b"")  # a checkpoint beside a later run's state is not finished
    assert not training_finished(run)


# --- item 7: cell ids ---------------------------------------------------------------------------
def test_inspect_lists_cell_ids_and_errors_give_them_as_ranges(tiny_recording: Path, ln_run: Path) -> None:
    summary = json.loads(_ok(["inspect", str(tiny_recording), "--json"]))
    ids = summary["cell_ids"]
    assert len(ids) == 12 and 42 in ids
    from stimuli.cell_ids import id_ranges

    assert id_ranges(ids) in _ok(["inspect", str(tiny_recording)])
    assert id_ranges([0, 1, 2, 3, 42]) == "0-3, 42"
    line = _fails(["optimize", "--model", str(ln_run), "--cell", "999", "--out", str(ln_run.parent / "d")])
    assert f"(its cell ids: {id_ranges(ids)})" in line


def test_inspect_never_cuts_a_segment_name(tmp_path: Path) -> None:
    import numpy as np

    from stimuli.recording import RecordingWriter

    names = ["natural_movie_with_a_very_long_name_01", "checkerboard_white_noise_binary_40px"]
    with RecordingWriter(tmp_path / "long.h5", frame_rate=30.0, height=8, width=8) as w:
        for name in names:
            w.append_segment(name, np.zeros((5, 8, 8), np.uint8))
    out = _ok(["inspect", str(tmp_path / "long.h5")])  # CliRunner's terminal is 80 columns wide
    assert all(name in out for name in names), out


# --- item 3: output that could mislead ----------------------------------------------------------
def test_design_behind_the_natural_clip_and_verify_on_another_retina_are_said(
        ln_run: Path, tiny_recording: Path, tmp_path: Path) -> None:
    out = _ok(["optimize", "--model", str(ln_run), "--cell", "3", "--out", str(tmp_path), "--steps", "0",
               "--seeds", "1", "--frames", "8", "--window", "2", "--start-from", "grey"])
    assert "predicts its best natural clip above the design" in " ".join(out.split())  # 0 steps: grey
    design = str(tmp_path / "cell3.h5")
    assert "warning" not in _ok(["verify", "--design", design, "--data", str(tiny_recording)])
    text = " ".join(_ok(["verify", "--design", design, "--sim", "1"]).split())
    assert "warning: the twin was trained on the simulated retina with seed 0 (12 cells); this is seed 1" in text
    assert json.loads(_ok(["verify", "--design", design, "--sim", "1", "--json"]))["retina_note"]


def test_ratios_of_rates_too_small_to_measure_are_not_given() -> None:
    from insilico.design.cli import _ratio
    from insilico.design.verify import Verification

    v = Verification(3, "on", True, (6, 8), 0.2, design=0.0323, natural=0.0044, parametric=None, optimum=9.5,
                     design_path="d.h5")
    assert v.vs_natural is None and v.too_small(v.natural) and not v.too_small(v.optimum)
    assert _ratio(v.fraction_of_optimum, v.optimum) == "0.0034"  # not "0.00"
    assert _ratio(v.vs_natural, v.natural).startswith("n/a")


# --- item 8: --help ------------------------------------------------------------------------------
def _commands(group, path=()):  # noqa: ANN001, ANN202
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_option_has_help_and_no_flag_reads_as_taking_a_value() -> None:
    import typer.main

    group = typer.main.get_command(app)
    missing = []
    for path, command in _commands(group):
        missing += [f"{' '.join(path)} {p.opts[0]}" for p in command.params if not getattr(p, "help", "x")]
        text = _ok([*path, "--help"])
        assert "<bool>" not in text, f"insilico {' '.join(path)} --help"
    assert not missing, missing


def test_train_help_states_the_training_defaults() -> None:
    """The help text cannot import torch (`insilico --help` stays fast): its defaults are checked here."""
    from vist_model.train import CPU_TRAINING, TrainConfig

    text = " ".join(_ok(["train", "--help"]).split())
    assert f"default: {CPU_TRAINING.epochs} for the cpu preset, {TrainConfig().epochs} for vist" in text
    assert f"default: {CPU_TRAINING.batch_size} for cpu, {TrainConfig().batch_size} for vist" in text

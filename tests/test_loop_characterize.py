"""`characterize` against a simulated rig (subprocess), then `finetune` on its session."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from insilico.loop.characterize import render
from insilico.loop.protocol import load_protocol
from insilico.loop.runner import run_protocol
from rig_bridge.journal import SessionJournal
from stimuli.recording import open_recording

CHARACTERIZE = """
kind = "characterize"
[presentation]
repeats = 1
isi_grey_frames = 2
[[stimulus]]
family = "white_noise"
seconds = 2
[[stimulus]]
name = "bars"
family = "moving_bars"
directions = 2
bar_width_px = 6.0
speed_px_per_frame = 4.0
repeats = 2
[[stimulus]]
family = "natural_movie"
seconds = 2
repeats = 3
"""

FINETUNE = """
kind = "finetune"
[data]
segments = []
[finetune]
mode = "readout"
epochs = 1
window = 40
[evaluation]
data = "{data}"
segment = "mov2"
"""


@pytest.fixture()
def sim_rig(serve_sim_rig: Callable[..., str]) -> str:
    return serve_sim_rig(cells=12, seed=0)


def _characterize(tmp_path: Path, rig: str) -> Path:
    protocol = tmp_path / "characterize.toml"
    protocol.write_text(CHARACTERIZE)
    out = tmp_path / "exp"
    outcome = run_protocol(protocol, None, rig, out, insecure=True, timeout_s=30, live=False)
    assert outcome.kind == "characterize"
    return out


def test_characterize_presents_every_stimulus_once(tmp_path: Path, sim_rig: str) -> None:
    out = _characterize(tmp_path, sim_rig)
    session = out / "characterize" / "session.h5"
    index = json.loads((out / "characterize" / "stimuli.json").read_text())["stimuli"]
    assert set(index) == {"white_noise", "bars", "natural_movie"}
    spec = {s.name: s for s in load_protocol(tmp_path / "characterize.toml").stimuli}
    with open_recording(session) as rec:
        # Most repeats first: the session file holds 3 repeats; fewer are stored as NaN.
        assert rec.n_repeats == 3 and rec.n_cells == 12
        assert [s.name for s in rec.segments][0] == index["natural_movie"]["segment"]
        for name, entry in index.items():
            frames = rec.frames(entry["segment"])
            assert np.array_equal(frames, render(spec[name], 32, 32, 30.0))
            counts = rec.counts(segment=entry["segment"])
            shown = spec[name].repeats
            assert np.isfinite(counts[:shown]).all() and np.isnan(counts[shown:]).all()
            assert entry["spikes"] == pytest.approx(float(np.nansum(counts)))
    # Rerunning a finished protocol shows nothing again.
    n = len(SessionJournal(session).intents)
    run_protocol(tmp_path / "characterize.toml", None, sim_rig, out, insecure=True, live=False)
    assert len(SessionJournal(session).intents) == n == 3


def test_characterize_needs_a_rig(tmp_path: Path) -> None:
    protocol = tmp_path / "characterize.toml"
    protocol.write_text(CHARACTERIZE)
    with pytest.raises(Exception, match="--rig"):
        run_protocol(protocol, None, None, tmp_path / "exp", live=False)


@pytest.mark.slow
def test_finetune_protocol_on_a_characterize_session(tmp_path: Path, sim_rig: str, tiny_twin_dir: Path,
                                                     tiny_recording: Path, feature_cache_dir: Path) -> None:
    out = _characterize(tmp_path, sim_rig)
    protocol = tmp_path / "finetune.toml"
    protocol.write_text(FINETUNE.format(data=tiny_recording))
    result = run_protocol(protocol, tiny_twin_dir, None, tmp_path / "ft", data=out / "characterize" / "session.h5",
                          live=False, feature_cache=feature_cache_dir)
    summary = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert (tmp_path / "ft" / "twin" / "model.pt").is_file() and result.kind == "finetune"
    assert -1 <= summary["heldout_before"]["cc_mean"] <= 1 and -1 <= summary["heldout_after"]["cc_mean"] <= 1
    train = json.loads((tmp_path / "ft" / "twin" / "train.json").read_text())
    assert train["epochs_run"] == 1

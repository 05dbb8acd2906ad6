"""`new_retina` against a simulated rig whose retina the core never saw: characterise, fit onto the core, design."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from insilico.loop.runner import run_protocol
from vist_model.multi import CORE_MODULES
from vist_model.twin import Twin

# A characterisation, a fit and one round of design, presentation and fine-tuning: minutes.
pytestmark = pytest.mark.slow

PROTOCOL = """
kind = "new_retina"
rounds = 1
[presentation]
repeats = 1
isi_grey_frames = 2
[[stimulus]]
name = "test_movie"
family = "natural_movie"
seconds = 3
repeats = 3
seed = 1
[[stimulus]]
name = "white_noise"
family = "white_noise"
seconds = 4
[[stimulus]]
name = "train_movie"
family = "natural_movie"
seconds = 8
seed = 2
[core]
top_cells = 1
[design]
objectives = ["increase"]
controls = ["natural"]
method = "gradient"
n_frames = 40
window_frames = 2
seeds = 1
steps = 1
natural_top_k = 1
device = "cpu"
"""


@pytest.fixture()
def unseen_retina_rig(serve_sim_rig: Callable[..., str]) -> str:
    # Seed 7: not the seed of the recording the core (the tiny twin) was trained on.
    return serve_sim_rig(cells=8, seed=7)


def test_a_new_retina_is_characterised_fitted_and_designed_for(tmp_path: Path, unseen_retina_rig: str,
                                                               tiny_twin_dir: Path) -> None:
    protocol = tmp_path / "new_retina.toml"
    protocol.write_text(PROTOCOL)
    out = tmp_path / "exp"
    outcome = run_protocol(protocol, tiny_twin_dir, unseen_retina_rig, out, insecure=True, timeout_s=60, live=False)
    assert outcome.kind == "new_retina" and outcome.report is not None and outcome.report.is_file()
    fitted = Twin.load(out / "twin")
    assert fitted.metadata.n_cells == 8  # the rig's retina, not the core's 12 cells
    assert fitted.metadata.training["core"]["path"] == str(tiny_twin_dir.resolve())
    core = Twin.load(tiny_twin_dir).network.state_dict()
    for k, v in fitted.network.state_dict().items():
        if k.split(".")[0] in CORE_MODULES:
            assert torch.equal(v, core[k]), k
    index = json.loads((out / "characterize" / "stimuli.json").read_text())["stimuli"]
    assert fitted.metadata.training["train_segments"] == [index[s]["segment"] for s in ("train_movie", "white_noise")]
    assert fitted.metadata.accuracy.segment == index["test_movie"]["segment"]
    summary = json.loads((out / "loop" / "round_1" / "summary.json").read_text())
    assert summary  # the round ran on the fitted twin
    assert (out / "loop" / "round_1" / "twin" / "model.pt").is_file()


def test_the_demo_fits_a_retina_its_twin_never_saw(tmp_path: Path, tiny_twin_dir: Path) -> None:
    from dataclasses import replace

    from insilico.design.settings import design_settings
    from insilico.loop.demo import NEW_RETINA_LABEL, DemoConfig, _new_retina, new_retina_protocol
    from insilico.loop.protocol import CharacterizeStimulus, FinetunePlan

    c = DemoConfig()
    c = replace(c, simulation=replace(c.simulation, size=32), new_retina_cells=6, new_retina_seed=5, extra_cells=0,
                new_retina_stimuli=(CharacterizeStimulus("test_movie", "natural_movie", repeats=3, seconds=3.0, seed=1),
                                    CharacterizeStimulus("white_noise", "white_noise", repeats=1, seconds=4.0),
                                    CharacterizeStimulus("train_movie", "natural_movie", repeats=1, seconds=6.0)),
                design=design_settings(n_frames=40, window_frames=2, seeds=1, steps=1, natural_top_k=1,
                                       comparison_trials=1, start="grey"),
                objectives=("increase",), finetune=FinetunePlan(mode="readout", epochs=1, window=40))
    outcome = _new_retina(c, tmp_path, tiny_twin_dir, live=False)
    assert outcome.kind == "new_retina" and outcome.report is not None and outcome.report.is_file()
    fitted = Twin.load(tmp_path / "new_retina" / "twin")
    assert fitted.metadata.n_cells == 6 and fitted.metadata.training["core"]["path"] == str(tiny_twin_dir.resolve())
    # Other settings: the new retina's folder is moved aside, not mixed with the old one.
    again = replace(c, new_retina_rounds=2)
    assert new_retina_protocol(again, NEW_RETINA_LABEL).digest != new_retina_protocol(c, NEW_RETINA_LABEL).digest
    state = json.loads((tmp_path / "new_retina" / "state.json").read_text())
    assert state["protocol_digest"] == new_retina_protocol(c, NEW_RETINA_LABEL).digest

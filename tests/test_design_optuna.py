"""Parametric design: Optuna studies over the stimulus families, stored in a journal file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from insilico.design.objectives import Window, increase
from insilico.design.parametric import Screen, families, render, search_parametric, storage_for
from insilico.design.postprocess import ContrastBudget
from insilico.design.response import TwinResponse
from vist_model.twin import Twin


@pytest.fixture(scope="module")
def response(tiny_twin_dir: Path) -> TwinResponse:
    return TwinResponse(Twin.load(tiny_twin_dir), lead_in=0)


def test_a_journal_study_resumes_and_accumulates_trials(response: TwinResponse, tmp_path: Path) -> None:
    h, w = response.metadata.frame_shape
    screen = Screen(6, h, w, response.metadata.frame_rate)
    journal = tmp_path / "study.journal"
    args = (response, increase(1, Window(2)), ContrastBudget(0.2), screen, "cell1")
    first = search_parametric(*args, storage_for(None, journal), n_trials=3, cmaes_trials=0, seed=0)
    # A new storage object on the same file, as after a crash and a restart.
    second = search_parametric(*args, storage_for(f"journal:{journal}", tmp_path / "unused"), n_trials=3,
                               cmaes_trials=0, seed=0)
    assert journal.is_file()
    assert (first.n_trials, second.n_trials) == (3, 6)
    assert second.objective >= first.objective
    assert second.frames.dtype == np.uint8 and second.frames.shape == (6, h, w)
    study = optuna.load_study(study_name="cell1-tpe", storage=storage_for(None, journal))
    assert len(study.trials) == 6


def test_cmaes_refines_inside_the_best_family(response: TwinResponse, tmp_path: Path) -> None:
    h, w = response.metadata.frame_shape
    screen = Screen(6, h, w, response.metadata.frame_rate)
    result = search_parametric(response, increase(1, Window(2)), ContrastBudget(0.2), screen, "c",
                               storage_for(None, tmp_path / "j.journal"), n_trials=2, cmaes_trials=2, seed=1)
    assert result.n_trials == 4
    assert result.studies[1] == f"c-cmaes-{result.family}"
    np.testing.assert_array_equal(result.frames.shape, (6, h, w))


def test_storage_urls(tmp_path: Path) -> None:
    assert storage_for("sqlite:///x.db", tmp_path / "j") == "sqlite:///x.db"
    assert storage_for("postgresql://u@host/db", tmp_path / "j") == "postgresql://u@host/db"
    assert isinstance(storage_for(None, tmp_path / "j.journal"), optuna.storages.JournalStorage)


@pytest.mark.parametrize("family", ["drifting_grating", "spot", "moving_bar", "full_field_flash", "chirp"])
def test_every_family_renders_from_its_search_space(family: str) -> None:
    screen = Screen(10, 16, 16, 30.0)
    assert family in families(screen)
    trial = optuna.trial.FixedTrial({
        "orientation_deg": 30.0, "spatial_period_px": 8.0, "temporal_freq_hz": 2.0, "contrast": 0.8,
        "size_px": 10.0, "center_y": 7.0, "center_x": 8.0, "phase": 0.0, "radius_px": 3.0, "polarity": -1,
        "onset_frame": 2, "duration_frames": 5, "bar_width_px": 3.0, "speed_px_per_frame": 1.0,
        "on_frames": 3, "off_frames": 3, "start_frame": 320,
    })
    from insilico.design.parametric import suggest

    frames = render(family, suggest(trial, family, screen), screen)
    assert frames.shape == (10, 16, 16) and frames.dtype == np.uint8
    assert frames.std() > 0


def test_a_known_receptive_field_narrows_where_stimuli_are_centred() -> None:
    assert Screen(10, 16, 20, 30.0).centre_ranges() == ((0.0, 15.0), (0.0, 19.0))
    focused = Screen(10, 16, 20, 30.0, focus=(4.0, 18.0, 1.5))
    assert focused.centre_ranges() == ((1.0, 7.0), (15.0, 19.0))  # +- 2 sigmas, inside the screen
    from insilico.design.parametric import suggest

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = suggest(study.ask(), "spot", focused)
        assert 1.0 <= params["center_yx"][0] <= 7.0 and 15.0 <= params["center_yx"][1] <= 19.0

"""Parametric design: Optuna searches the stimulus families of `stimuli` for the best clip.

The families and their search spaces (pixels, frames, Hz; `H x W` screen, `T` frames):

* drifting grating in a circular aperture: orientation, spatial period, temporal
  frequency, contrast, aperture size and centre, phase;
* spot: centre, radius, polarity, onset and duration;
* moving bar: direction, width, speed, polarity, contrast;
* full-field flash: on and off durations, contrast;
* chirp: which `T`-frame excerpt of the 32 s chirp.

Every candidate is scaled to the same contrast budget as the designs (`ContrastBudget`),
quantised to grey levels as a screen would show it, and scored by the objective on the
twin's rates, so the search only chooses *structure*: a family's own contrast parameter
matters only through saturation.

Two samplers, both define-by-run: TPE over all families at once (the family is a
categorical parameter), then CMA-ES inside one family. With a gradient design beside it,
the design's best parametric fit (`fit_parametric`: the family member most correlated with
the design's pixels, found without the twin) is TPE's first trial and CMA-ES's start (`x0`,
`sigma0` = `X0_SIGMA` of each parameter's range), in the fit's family: the gradient design
says where and what, the search refines it through the twin. Without one, CMA-ES runs in the
family TPE found best, from TPE's best parameters. Storage is a URL (`storage_for`): a journal file by default, so a crashed study
resumes with the same command; `sqlite:///...` or `postgresql://...` for several workers
(the same command on several machines joins the same study, found by name). Each call adds
`n_trials` trials to the studies; the best of all trials so far is returned.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from insilico.design.objectives import Objective
from insilico.design.postprocess import ContrastBudget
from insilico.design.response import TwinResponse
from stimuli.contrast import to_uint8
from stimuli.errors import InputError
from stimuli.families import chirp, drifting_grating, full_field_flash, moving_bar, spot

FAMILY_NAMES = ("drifting_grating", "spot", "moving_bar", "full_field_flash", "chirp")
RDB_SCHEMES = ("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+")


def storage_for(url: str | None, default_journal: str | Path) -> optuna.storages.BaseStorage | str:
    """An Optuna storage from a URL.

    `None` -> a journal file at `default_journal`; `journal:PATH` or any other path -> a
    journal file there; `sqlite:///...`, `postgresql://...`, `mysql://...` -> passed to
    Optuna as a relational database URL.
    """
    if url is not None and url.startswith(RDB_SCHEMES):
        return url
    path = Path(default_journal if url is None else url.removeprefix("journal:"))
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def open_storage(storage: optuna.storages.BaseStorage | str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """The storage itself, a database URL opened as Optuna's `RDBStorage`.

    Workers that start together on a new database race to create Optuna's tables; the loser's
    `CREATE` fails with "already exists" (PostgreSQL: DuplicateObject), so opening is retried
    and then finds the tables the winner made.
    """
    if not isinstance(storage, str):
        return storage
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(storage)
        except (ProgrammingError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Screen:
    """What a parametric stimulus is drawn on: `T` frames of `H x W` at `frame_rate`.

    `focus` `(row, col, sigma)` is the cell's receptive field, pixels: where it is known,
    spots and grating apertures are centred within `FOCUS_SIGMAS` sigmas of it rather than
    anywhere on the screen (a search of a few dozen trials cannot afford the whole screen).
    """

    n_frames: int
    height: int
    width: int
    frame_rate: float
    focus: tuple[float, float, float] | None = None

    def centre_ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """`((y_low, y_high), (x_low, x_high))` for stimulus centres."""
        y_full, x_full = (0.0, self.height - 1.0), (0.0, self.width - 1.0)
        if self.focus is None:
            return y_full, x_full
        cy, cx, sigma = self.focus
        reach = FOCUS_SIGMAS * sigma

        def around(c: float, full: tuple[float, float]) -> tuple[float, float]:
            low, high = max(full[0], c - reach), min(full[1], c + reach)
            return (low, high) if high > low else full

        return around(cy, y_full), around(cx, x_full)


    def radius_range(self) -> tuple[float, float]:
        """Spot radii, px: around the RF centre's size where known (`FOCUS_SIZE`)."""
        full = (1.0, float(max(self.height, self.width)) / 2.0)
        if self.focus is None:
            return full
        low, high = max(full[0], self.focus[2] / FOCUS_SIZE), min(full[1], self.focus[2] * FOCUS_SIZE)
        return (low, high) if high > low else full


FOCUS_SIGMAS = 2.0
FOCUS_SIZE = 4.0  # spot radii within this factor of the RF centre's sigma
X0_SIGMA = 0.1  # CMA-ES's first step around a gradient design's fit, as a fraction of each range


@functools.lru_cache(maxsize=4)
def _chirp_frames(height: int, width: int, frame_rate: float) -> np.ndarray:
    return chirp(height, width, frame_rate).frames


def families(screen: Screen) -> tuple[str, ...]:
    """Families that fit the screen (the chirp needs a clip shorter than itself)."""
    chirp_len = round(32 * screen.frame_rate)
    return tuple(f for f in FAMILY_NAMES if f != "chirp" or screen.n_frames <= chirp_len)


def suggest(trial: optuna.Trial, family: str, s: Screen) -> dict[str, Any]:
    """Parameters of one `family` stimulus (the define-by-run search space)."""
    t, h, w = s.n_frames, s.height, s.width
    side = float(max(h, w))
    (y0, y1), (x0, x1) = s.centre_ranges()
    if family == "drifting_grating":
        return {
            "orientation_deg": trial.suggest_float("orientation_deg", 0.0, 360.0),
            "spatial_period_px": trial.suggest_float("spatial_period_px", 4.0, 2.0 * side, log=True),
            "temporal_freq_hz": trial.suggest_float("temporal_freq_hz", 0.0, min(8.0, s.frame_rate / 3.0)),
            "contrast": trial.suggest_float("contrast", 0.2, 1.0),
            "size_px": trial.suggest_float("size_px", 4.0, 1.5 * side, log=True),
            "center_yx": (trial.suggest_float("center_y", y0, y1), trial.suggest_float("center_x", x0, x1)),
            "phase": trial.suggest_float("phase", 0.0, 2.0 * np.pi),
        }
    if family == "spot":
        onset = trial.suggest_int("onset_frame", 0, t - 1)
        r0, r1 = s.radius_range()
        return {
            "center_yx": (trial.suggest_float("center_y", y0, y1), trial.suggest_float("center_x", x0, x1)),
            "radius_px": trial.suggest_float("radius_px", r0, r1, log=True),
            "polarity": trial.suggest_int("polarity", -1, 1, step=2),
            "onset_frame": onset,
            "duration_frames": trial.suggest_int("duration_frames", 1, t),
        }
    if family == "moving_bar":
        return {
            "orientation_deg": trial.suggest_float("orientation_deg", 0.0, 360.0),
            "bar_width_px": trial.suggest_float("bar_width_px", 1.0, side / 2.0, log=True),
            "speed_px_per_frame": trial.suggest_float("speed_px_per_frame", 0.25, 4.0, log=True),
            "polarity": trial.suggest_int("polarity", -1, 1, step=2),
            "contrast": trial.suggest_float("contrast", 0.2, 1.0),
        }
    if family == "full_field_flash":
        return {
            "on_frames": trial.suggest_int("on_frames", 1, t),
            "off_frames": trial.suggest_int("off_frames", 0, t),
            "contrast": trial.suggest_float("contrast", 0.2, 1.0),
        }
    if family == "chirp":
        return {"start_frame": trial.suggest_int("start_frame", 0, round(32 * s.frame_rate) - t)}
    raise InputError(f"unknown stimulus family {family!r}: use one of {', '.join(FAMILY_NAMES)}")


def render(family: str, params: dict[str, Any], s: Screen) -> np.ndarray:
    """uint8 `[T, H, W]` of one family stimulus (before the budget)."""
    t, h, w, fps = s.n_frames, s.height, s.width, s.frame_rate
    if family == "drifting_grating":
        return drifting_grating(t, h, w, frame_rate=fps, **params).frames
    if family == "spot":
        return spot(t, h, w, frame_rate=fps, **params).frames
    if family == "moving_bar":
        return moving_bar(t, h, w, frame_rate=fps, **params).frames
    if family == "full_field_flash":
        return full_field_flash(t, h, w, frame_rate=fps, **params).frames
    if family == "chirp":
        start = int(params["start_frame"])
        return _chirp_frames(h, w, fps)[start:start + t]
    raise InputError(f"unknown stimulus family {family!r}: use one of {', '.join(FAMILY_NAMES)}")


@dataclass(frozen=True, eq=False)
class ParametricResult:
    """The best parametric stimulus found.

    Attributes:
        family, params: the recipe (`render(family, params, screen)` rebuilds it).
        frames: uint8 `[T, H, W]` at the budget.
        objective: its objective value.
        n_trials: completed trials in the studies (all workers, all runs).
        studies: names of the Optuna studies.
    """

    family: str
    params: dict[str, Any]
    frames: np.ndarray
    objective: float
    n_trials: int
    studies: tuple[str, ...]
    cmaes_start: dict[str, Any] | None = None  # where CMA-ES started and why


@dataclass(frozen=True)
class ParametricFit:
    """A parametric stimulus fitted to a clip by pixel correlation (`fit_parametric`).

    `params` are the trial parameters (`suggest`'s names: `center_y`, not `center_yx`), the
    form CMA-ES's `x0` takes.
    """

    family: str
    params: dict[str, Any]
    correlation: float
    n_trials: int

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "params": self.params, "correlation": round(self.correlation, 4),
                "trials": self.n_trials}


FIT_FAMILIES = ("spot", "drifting_grating", "moving_bar")


def fit_parametric(clip: np.ndarray, screen: Screen, n_trials: int = 32, seed: int = 0,
                   names: tuple[str, ...] = FIT_FAMILIES) -> ParametricFit:
    """The member of `names` most correlated with `clip` `[T, H, W]` (float in [0, 1] or uint8),
    `n_trials` TPE trials per family, in memory, the first at the clip's moments (`_moments`:
    a spot or aperture needs to overlap the clip to correlate at all, which a blind search
    of a few dozen trials rarely hits). Correlation ignores the contrast (the budget sets it)
    and keeps the polarity; no twin is run."""
    if n_trials < 1:
        raise InputError(f"a fit needs >= 1 trial per family, got {n_trials}")
    array = np.asarray(clip)
    target = (array.astype(np.float64) / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)).ravel()
    target = target - target.mean()
    norm = float(np.linalg.norm(target))
    best: ParametricFit | None = None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for fam in names:
        def correlation(trial: optuna.Trial, fam: str = fam) -> float:
            x = render(fam, suggest(trial, fam, screen), screen).astype(np.float64).ravel()
            x = x - x.mean()
            d = float(np.linalg.norm(x)) * norm
            return float(x @ target) / d if d > 0 else 0.0

        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        guess = _moments(target.reshape(np.shape(clip)), screen).get(fam)
        if guess:
            study.enqueue_trial(guess)
        study.optimize(correlation, n_trials=n_trials)
        fit = ParametricFit(fam, dict(study.best_trial.params), float(study.best_value), n_trials)
        if best is None or fit.correlation > best.correlation:
            best = fit
    assert best is not None
    return best


def _scorer(response: TwinResponse, objective: Objective, budget: ContrastBudget,
            screen: Screen) -> Callable[[str, dict[str, Any]], tuple[float, np.ndarray]]:
    def score(family: str, params: dict[str, Any]) -> tuple[float, np.ndarray]:
        frames = to_uint8(budget.apply(render(family, params, screen)))
        with torch.no_grad():
            value = objective(torch.from_numpy(response.rates(frames[None])))
        return float(value[0]), frames
    return score


def _moments(centred: np.ndarray, screen: Screen) -> dict[str, dict[str, Any]]:
    """Per family, the parameters read off a centred clip `[T, H, W]`: where its contrast is
    (`rf_centre_and_size` of the energy map), when (frames above a quarter of the peak
    frame's energy) and its sign there."""
    from stimuli.recording.rf_geometry import rf_centre_and_size

    energy = np.abs(centred)
    (cy, cx), sigma = rf_centre_and_size(energy.mean(axis=0))
    (y0, y1), (x0, x1) = screen.centre_ranges()
    r0, r1 = screen.radius_range()
    cy, cx = float(np.clip(cy, y0, y1)), float(np.clip(cx, x0, x1))
    per_frame = energy.reshape(len(energy), -1).mean(axis=1)
    active = np.flatnonzero(per_frame >= 0.25 * per_frame.max()) if per_frame.max() > 0 else np.arange(len(energy))
    iy, ix = int(round(cy)), int(round(cx))
    sign = 1 if float(centred[active, iy, ix].mean()) >= 0 else -1
    side = float(max(screen.height, screen.width))
    return {
        "spot": {"center_y": cy, "center_x": cx, "radius_px": float(np.clip(1.5 * sigma, r0, r1)), "polarity": sign,
                 "onset_frame": int(active[0]), "duration_frames": int(active[-1] - active[0] + 1)},
        "drifting_grating": {"center_y": cy, "center_x": cx, "size_px": float(np.clip(4 * sigma, 4.0, 1.5 * side))},
    }


def search_parametric(
    response: TwinResponse,
    objective: Objective,
    budget: ContrastBudget,
    screen: Screen,
    study_name: str,
    storage: optuna.storages.BaseStorage | str,
    n_trials: int = 24,
    cmaes_trials: int = 12,
    seed: int = 0,
    on_trial: Callable[[], None] | None = None,
    x0: ParametricFit | None = None,
) -> ParametricResult:
    """TPE over the families, then CMA-ES in one family, from `x0` where given (see module docstring)."""
    if n_trials < 1 or cmaes_trials < 0:
        raise InputError(f"need >= 1 TPE trial and >= 0 CMA-ES trials, got {n_trials}, {cmaes_trials}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage)  # once for both studies
    score = _scorer(response, objective, budget, screen)
    names = families(screen)

    def run_trial(trial: optuna.Trial, family: str | None) -> float:
        fam = family or trial.suggest_categorical("family", names)
        params = suggest(trial, fam, screen)
        trial.set_user_attr("family", fam)
        trial.set_user_attr("params", json.dumps(params))
        value, _ = score(fam, params)
        if on_trial is not None:
            on_trial()
        return value

    with warnings.catch_warnings():
        # multivariate/group TPE and CMA-ES margins are marked experimental by Optuna.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tpe = optuna.create_study(
            study_name=f"{study_name}-tpe", storage=storage, direction="maximize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=8),
        )
        if x0 is not None and not tpe.trials:
            tpe.enqueue_trial({"family": x0.family, **x0.params})  # the gradient design's fit, scored by the twin
        tpe.optimize(lambda trial: run_trial(trial, None), n_trials=n_trials)
        studies = [tpe]
        cmaes_start = None
        if cmaes_trials:
            if x0 is not None:
                family, start = x0.family, dict(x0.params)
                cmaes_start = {"from": "the gradient design's parametric fit", **x0.to_json(), "sigma0": X0_SIGMA}
            else:
                family = tpe.best_trial.user_attrs["family"]
                start = {k: v for k, v in tpe.best_trial.params.items() if k != "family"}
                cmaes_start = {"from": "TPE's best trial", "family": family, "params": start}
            # `x0`/`sigma0` are deprecated since Optuna 4.9 (to be removed in 6.0) in favour of
            # enqueueing the start; both are given: the enqueued trial scores the start itself,
            # `x0` and `sigma0` centre CMA-ES's first generation on it with a narrow step
            # instead of the whole range (`sigma0` is in Optuna's [0, 1]-scaled space).
            warnings.simplefilter("ignore", FutureWarning)
            cma = optuna.create_study(
                study_name=f"{study_name}-cmaes-{family}", storage=storage, direction="maximize",
                load_if_exists=True,
                sampler=optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, popsize=6,
                                                     x0=start, sigma0=X0_SIGMA),
            )
            if not cma.trials:
                cma.enqueue_trial(start)
            cma.optimize(lambda trial: run_trial(trial, family), n_trials=cmaes_trials)
            studies.append(cma)
    best = max((s.best_trial for s in studies), key=lambda tr: tr.value)
    fam = best.user_attrs["family"]
    params = _from_json(json.loads(best.user_attrs["params"]))
    value, frames = score(fam, params)
    done = sum(len(s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) for s in studies)
    return ParametricResult(fam, params, frames, value, done, tuple(s.study_name for s in studies), cmaes_start)


def _from_json(params: dict[str, Any]) -> dict[str, Any]:
    # JSON turns the (y, x) tuples into lists; the families want tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}

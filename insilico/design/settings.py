"""The settings of a design, in one place: every default of `insilico optimize`, a protocol's
`[design]` table and the demo is read from these two dataclasses.

`GradientConfig` holds the gradient ascent's step settings, `DesignSettings` everything else
that shapes a design (and holds a `GradientConfig`). The CLI, the protocol reader and the demo
each build one with `design_settings(**overrides)`, which takes the fields of both by name
(`steps`, `rf_envelope` go to the gradient), so nothing repeats a default::

    settings = design_settings(n_frames=45, seeds=1, steps=4)       # the rest: the defaults
    settings = design_settings(**DESIGN_PRESETS["demo"], start="grey")

Every value is checked here, once, and a bad one is a `DesignSettingError` naming the setting
(`n_frames`), which the CLI turns into its flag (`--frames`) and a protocol into its key
(`design.n_frames`). No torch: a protocol is read (and checked) on a machine without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from stimuli.errors import InsilicoError

METHODS = ("gradient", "optuna", "both")
OBJECTIVES = ("increase", "decrease", "discriminative")
PRECONDITIONERS = ("blur", "fourier", "none")
INITS = ("grey", "noise")
# Where a gradient design starts: the cell's denoised white-noise STA (`sta_start`), the twin's
# attribution map over the cell's best natural clips (`prior`), the best natural clip itself
# (feature accentuation), grey, or "auto": every one of these the recording allows, in one
# batch (the `seeds` shared out among them, at least one each), the design keeping the one the
# twin rates highest after the steps (recorded in the JSON).
STARTS = ("auto", "sta", "attribution", "natural", "grey")
ATTRIBUTION_METHODS = ("saliency", "ig")
# Which map places the envelope and the parametric search: the recorded RF (`/cells/rf`), the
# attribution map, or "auto": the recorded RF where it locates the cell, else the attribution map.
ENVELOPE_SOURCES = ("auto", "rf", "attribution")
FRAME_RMS_TRAINING = "training"


class DesignSettingError(InsilicoError, ValueError):
    """A design setting out of its range; `setting` is its name (`n_frames`)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"design setting {setting} {problem}")
        self.setting = setting
        self.problem = problem


def _check(ok: bool, setting: str, problem: str) -> None:
    if not ok:
        raise DesignSettingError(setting, problem)


@dataclass(frozen=True)
class GradientConfig:
    """Settings of a gradient design (defaults sized for a CPU).

    Attributes:
        steps: optimizer steps.
        lr: RMS pixel change of the first step (cosine-decayed to lr / 10).
        jitter_px: random spatial shift per step, pixels.
        time_shift: random temporal shift per step, frames.
        tv_weight: total-variation penalty weight.
        smooth_weight: temporal-smoothness penalty weight.
        preconditioner: "blur", "fourier" or "none".
        blur_sigma: (start, end) of the annealed blur, pixels. It ends at 1.5 px: below
            that, the ViT's patch grid (4 px on a 64-px screen) shows through in the design,
            and the twin, not the cell, responds to it.
        diversity_weight: reward for RMS distance between batch members (0 = off).
        init_sigma: spatial blur (pixels) of the random start.
        init: "grey" starts at mean grey plus seeded noise of `init_scale` times the budget's
            RMS, so the first step is the twin's own gradient and no budget is left on noise
            the cell cannot see; "noise" starts from smooth noise at the full budget.
        init_scale: amplitude of the grey start's noise, relative to the budget's RMS.
        rf_envelope: sigma of the spatial envelope around the cell's receptive field, in
            RF-centre sigmas (`insilico.design.envelope`); 0 leaves the whole screen free
            (also used where the recorded map is noise, as for some ON-OFF cells). 3: a linear
            cell's true optimum spends much of the budget on its wide surround, which 1 or 2
            sigmas cut off (docs/benchmarks.md, "The envelope leaves the surround").
    """

    steps: int = 12
    lr: float = 0.15
    jitter_px: int = 1
    time_shift: int = 1
    tv_weight: float = 0.0
    smooth_weight: float = 0.0
    preconditioner: str = "blur"
    blur_sigma: tuple[float, float] = (2.0, 1.5)
    diversity_weight: float = 0.0
    init_sigma: float = 2.0
    init: str = "grey"
    init_scale: float = 0.05
    rf_envelope: float = 3.0

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.init in INITS, "init", f"must be one of {', '.join(INITS)}, got {self.init!r}")
        _check(0 < self.init_scale <= 1, "init_scale", f"must be in (0, 1], got {self.init_scale}")
        _check(self.rf_envelope >= 0, "rf_envelope", f"must be >= 0 RF sigmas (0 = off), got {self.rf_envelope}")
        _check(self.preconditioner in PRECONDITIONERS, "preconditioner",
               f"must be one of {', '.join(PRECONDITIONERS)}, got {self.preconditioner!r}")


@dataclass(frozen=True)
class DesignSettings:
    """Everything that shapes a design, recorded in each cell's JSON.

    Attributes:
        method: "gradient" (ascent through the twin), "optuna" (search over parametric
            stimulus families) or "both" (the gradient design, and the full search beside it).
        n_frames: clip length, frames.
        objective: "increase", "decrease" or "discriminative" (`objectives`).
        window_frames: the objective's window: the clip's last frames.
        temperature: softness of the discriminative objective's max over the other cells.
        seeds: one gradient design per seed, in one batch; the best is kept.
        gradient: the gradient ascent's step settings.
        trials: Optuna TPE trials per cell with method optuna or both.
        cmaes_trials: CMA-ES trials after the TPE trials, same methods; None: `trials // 2`.
        comparison_trials: TPE trials of the parametric comparison with method gradient.
        natural_top_k: natural clips re-scored at the budget for the best natural clip.
        start: where gradient designs start (`STARTS`).
        rms_contrast: the contrast budget at mean grey 0.5; None: the training movies'.
        frame_rms: a ceiling on every frame's contrast (RMS deviation from grey), besides the
            whole-clip budget: a value, "training" (the training movies' per-frame RMS,
            `budget.training_frame_rms`) or None (no per-frame ceiling).
        storage: Optuna storage URL; None: a journal file `optuna.journal` in the output folder.
        attribution_method: "saliency" (one gradient per clip) or "ig" (Captum's integrated
            gradients from grey, `attribution_steps` steps) for the attribution map (`prior`).
        attribution_steps: integration steps of "ig".
        envelope_source: the map behind the envelope and the parametric search's focus (`ENVELOPE_SOURCES`).
        natural_distance: with the natural start, the largest RMS distance of the design from
            its clip, in units of the budget's RMS (feature accentuation stays "this movie").
        parametric_fit_trials: trials of the fit of a parametric stimulus to the gradient
            design (pixel correlation, no twin), whose parameters start the CMA-ES search.
    """

    method: str = "gradient"
    n_frames: int = 60
    objective: str = "increase"
    window_frames: int = 3
    temperature: float = 0.1
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    trials: int = 24
    cmaes_trials: int | None = None
    comparison_trials: int = 16
    natural_top_k: int = 8
    start: str = "auto"
    rms_contrast: float | None = None
    frame_rms: float | str | None = None
    storage: str | None = None
    attribution_method: str = "saliency"
    attribution_steps: int = 8
    envelope_source: str = "auto"
    natural_distance: float = 1.0
    parametric_fit_trials: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        _check(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        _check(self.objective in OBJECTIVES, "objective",
               f"must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        _check(self.window_frames >= 1, "window_frames", f"must be >= 1, got {self.window_frames}")
        _check(self.window_frames <= self.n_frames, "window_frames",
               f"{self.window_frames} is longer than the clip (n_frames {self.n_frames})")
        _check(bool(self.seeds), "seeds", "needs at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", f"must differ, got {list(self.seeds)}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check(self.trials >= 1, "trials", f"must be >= 1, got {self.trials}")
        _check(self.cmaes_trials is None or self.cmaes_trials >= 0, "cmaes_trials",
               f"must be >= 0, got {self.cmaes_trials}")
        _check(self.comparison_trials >= 1, "comparison_trials", f"must be >= 1, got {self.comparison_trials}")
        _check(self.natural_top_k >= 1, "natural_top_k", f"must be >= 1, got {self.natural_top_k}")
        _check(self.start in STARTS, "start", f"must be one of {', '.join(STARTS)}, got {self.start!r}")
        _check(self.rms_contrast is None or 0.0 < self.rms_contrast < 0.5, "rms_contrast",
               f"must be in (0, 0.5) at mean grey 0.5, got {self.rms_contrast}")
        _check(self.frame_rms is None or self.frame_rms == FRAME_RMS_TRAINING
               or (not isinstance(self.frame_rms, str) and 0.0 < self.frame_rms < 0.5), "frame_rms",
               f"must be \"{FRAME_RMS_TRAINING}\" or in (0, 0.5) at mean grey 0.5, got {self.frame_rms!r}")
        _check(self.attribution_method in ATTRIBUTION_METHODS, "attribution_method",
               f"must be one of {', '.join(ATTRIBUTION_METHODS)}, got {self.attribution_method!r}")
        _check(self.attribution_steps >= 1, "attribution_steps", f"must be >= 1, got {self.attribution_steps}")
        _check(self.envelope_source in ENVELOPE_SOURCES, "envelope_source",
               f"must be one of {', '.join(ENVELOPE_SOURCES)}, got {self.envelope_source!r}")
        _check(self.natural_distance > 0, "natural_distance", f"must be > 0 budget RMS, got {self.natural_distance}")
        _check(self.parametric_fit_trials >= 0, "parametric_fit_trials",
               f"must be >= 0 (0: CMA-ES starts from TPE's best), got {self.parametric_fit_trials}")

    @property
    def cmaes(self) -> int:
        """CMA-ES trials of the full search: `cmaes_trials`, or half the TPE trials."""
        return self.trials // 2 if self.cmaes_trials is None else self.cmaes_trials

    @property
    def gradient_design(self) -> bool:
        """Whether the design is a gradient ascent (methods gradient and both)."""
        return self.method in ("gradient", "both")

    def search_trials(self) -> tuple[int, int]:
        """`(TPE, CMA-ES)` trials of the parametric search: the full one, or the comparison."""
        if self.method in ("optuna", "both"):
            return self.trials, self.cmaes
        return self.comparison_trials, 0

    def to_json(self) -> dict[str, Any]:
        """The settings as plain JSON (`gradient` as a table, `seeds` as a list)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["gradient"] = {f.name: getattr(self.gradient, f.name) for f in fields(GradientConfig)}
        out["gradient"]["blur_sigma"] = list(self.gradient.blur_sigma)
        out["seeds"] = list(self.seeds)
        return out


GRADIENT_FIELDS = tuple(f.name for f in fields(GradientConfig))
DESIGN_FIELDS = tuple(f.name for f in fields(DesignSettings) if f.name != "gradient")

# Presets as overrides of the defaults above, as `vist_model.vist.VIST_PRESETS`.
DESIGN_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # `insilico demo`: a few minutes for a whole closed loop on 2 CPU cores. Its designs start as
    # everywhere else ("auto"): on two demo retinas round 1 did better from there than from grey,
    # on average (docs/benchmarks.md, "Round 1 from every start").
    "demo": {"n_frames": 45, "seeds": 1, "steps": 4, "comparison_trials": 4, "natural_top_k": 4},
}


def design_settings(base: DesignSettings | None = None, **overrides: Any) -> DesignSettings:
    """`base` (default: the defaults) with `overrides` by name, gradient ones included.

    `seeds` may be a count (`4`: seeds 0..3) or the seeds themselves; `blur_sigma` a list.
    An unknown name is a `DesignSettingError`.
    """
    base = base or DesignSettings()
    gradient = {k: overrides.pop(k) for k in list(overrides) if k in GRADIENT_FIELDS}
    unknown = sorted(set(overrides) - set(DESIGN_FIELDS))
    if unknown:
        raise DesignSettingError(unknown[0], f"is not a design setting (known: {', '.join(sorted(SETTING_NAMES))})")
    if "seeds" in overrides:
        overrides["seeds"] = seed_list(overrides["seeds"])
    if "blur_sigma" in gradient:
        gradient["blur_sigma"] = tuple(float(s) for s in gradient["blur_sigma"])
    return replace(base, gradient=replace(base.gradient, **gradient), **overrides)


def seed_list(seeds: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """A count of seeds (`4`: 0..3) or the seeds themselves, as a tuple."""
    if isinstance(seeds, int):
        _check(seeds >= 1, "seeds", f"must be >= 1, got {seeds}")
        return tuple(range(seeds))
    return tuple(int(s) for s in seeds)


SETTING_NAMES = (*DESIGN_FIELDS, *GRADIENT_FIELDS)


def default(name: str) -> Any:
    """The default of a design setting by name (`steps`, `n_frames`; `seeds` as a count)."""
    d = DesignSettings()
    if name == "seeds":
        return len(d.seeds)
    return getattr(d.gradient, name) if name in GRADIENT_FIELDS else getattr(d, name)

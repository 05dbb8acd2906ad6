"""Experiment protocols: TOML files (shipped ones in `insilico/loop/protocols/`), checked on load.

Four kinds, told apart by the top-level `kind` key:

- `characterize`: a list of stimuli (white noise, chirp, moving bars, a natural movie) shown
  through the rig into one session file;
- `mei_closed_loop`: rounds of design -> present -> record -> fine-tune -> re-evaluate;
- `finetune`: fine-tune a twin on a session file and re-evaluate it;
- `new_retina`: a short characterisation (as `characterize`), the new retina fitted onto a
  trained core (`[core]`, `vist_model.core.fit_on_core`), then closed-loop rounds (as
  `mei_closed_loop`) on the fitted twin, scored on the characterisation's repeated movie.

Every table takes only the keys documented here: an unknown key (a typo, usually), a missing
one or a value of the wrong type is a `ProtocolError` naming the file and the key.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from insilico.design.settings import (
    SETTING_NAMES,
    DesignSettingError,
    DesignSettings,
    default,
    design_settings,
)
from stimuli.errors import InputError
from stimuli.shipped import resolve_shipped, shipped_names

KINDS = ("characterize", "mei_closed_loop", "finetune", "new_retina")
FAMILIES = ("white_noise", "chirp", "moving_bars", "natural_movie")
OBJECTIVES = ("increase", "discriminative")
CONTROLS = ("natural", "parametric")
FINETUNE_MODES = ("readout", "full")


class ProtocolError(InputError):
    """A protocol file that cannot be run as written."""


# --- tables of the TOML files -------------------------------------------------------------------
@dataclass(frozen=True)
class Presentation:
    """How every stimulus of a protocol is shown."""

    repeats: int = 5
    isi_grey_frames: int = 15  # grey frames after each repeat (the retina settles to grey)


@dataclass(frozen=True)
class CharacterizeStimulus:
    """One stimulus of a `characterize` protocol; `seconds` is ignored by the chirp (fixed length)."""

    name: str
    family: str
    repeats: int
    seconds: float = 10.0
    check_px: int = 4  # white noise
    contrast: float = 1.0  # white noise, moving bars
    rms_contrast: float = 0.2  # natural movie
    directions: int = 8  # moving bars
    bar_width_px: float = 4.0  # moving bars
    speed_px_per_frame: float = 1.0  # moving bars
    seed: int = 0


@dataclass(frozen=True)
class DesignPlan:
    """What a closed-loop round designs for each target cell.

    `settings` are the design settings of `insilico optimize` (`insilico.design.settings`):
    every one of them is a key of the `[design]` table, with the same name and default
    (`seeds` as a count); `settings.objective` is set per objective of `objectives`.
    """

    cells: tuple[int, ...]
    objectives: tuple[str, ...] = OBJECTIVES
    controls: tuple[str, ...] = CONTROLS
    settings: DesignSettings = field(default_factory=DesignSettings)
    device: str = "auto"
    # From round 2 on, each gradient design starts from the cell's design of the round before
    # (which the twin has since learned the measured response to) instead of `settings.start`.
    refine: bool = False

    def settings_for(self, objective: str) -> DesignSettings:
        """The settings of this round's designs for one objective."""
        return replace(self.settings, objective=objective)


@dataclass(frozen=True)
class FinetunePlan:
    """How the twin learns from new spikes."""

    mode: str = "readout"  # "readout": train only the per-cell readout; "full": every layer
    epochs: int = 8
    window: int = 40  # frames per training window (Vi-ST's loss needs >= 40)
    lr: float = 3e-4
    warmup_epochs: int = 1
    batch_size: int = 16
    include_training_data: bool = True  # also the recording the twin was trained on
    # Fraction of training windows drawn from this experiment's sessions when the training data
    # is included (None: by length, so a few designed clips are a few percent of the windows).
    session_share: float | None = None
    # Loss weight of each target cell over its objective window in the clips shown for it
    # (1: like any other cell and frame, so 3 frames of 1 cell among 40 frames of N cells).
    focus_weight: float = 1.0
    seed: int = 0

    @property
    def readout_only(self) -> bool:
        return self.mode == "readout"


@dataclass(frozen=True)
class EvaluationPlan:
    """The held-out natural movie the twin is scored on after each fine-tuning."""

    segment: str = "mov2"
    data: Path | None = None  # None: the twin's own training recording


@dataclass(frozen=True)
class CharacterizeProtocol:
    path: Path
    digest: str
    description: str
    presentation: Presentation
    stimuli: tuple[CharacterizeStimulus, ...]
    kind: str = "characterize"
    notes: tuple[str, ...] = ()  # tables left out and filled with defaults, said when the run starts


@dataclass(frozen=True)
class ClosedLoopProtocol:
    path: Path
    digest: str
    description: str
    rounds: int
    presentation: Presentation
    design: DesignPlan
    finetune: FinetunePlan
    evaluation: EvaluationPlan
    kind: str = "mei_closed_loop"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FinetuneProtocol:
    path: Path
    digest: str
    description: str
    session: Path | None  # None: given on the command line (`--data`)
    segments: tuple[str, ...]  # empty: every segment of the session
    finetune: FinetunePlan
    evaluation: EvaluationPlan
    kind: str = "finetune"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CorePlan:
    """How a `new_retina` protocol fits the new retina onto a trained core.

    `train`, `noise` and `test` name stimuli of the protocol: the readout is fitted on the
    recorded segments of the first (one or more, as `insilico train` trains on the movie and
    the white noise), receptive fields come from the second's, and the fitted twin (and each
    round's) is scored on the third's (shown with repeats). `top_cells`: when `[design] cells`
    is empty, the rounds design for the cells the fitted twin predicts best.
    """

    path: Path | None = None  # None: given on the command line (`--model`)
    train: tuple[str, ...] = ("train_movie", "white_noise")
    noise: str = "white_noise"
    test: str = "test_movie"
    finetune_core: bool = False
    top_cells: int = 4


@dataclass(frozen=True)
class NewRetinaProtocol:
    path: Path
    digest: str
    description: str
    characterize: CharacterizeProtocol
    core: CorePlan
    loop: ClosedLoopProtocol  # its [evaluation] is the `test` stimulus's segment, filled in when it runs
    kind: str = "new_retina"
    notes: tuple[str, ...] = ()


Protocol = CharacterizeProtocol | ClosedLoopProtocol | FinetuneProtocol | NewRetinaProtocol


# --- checking ------------------------------------------------------------------------------------
@dataclass
class _Table:
    """A TOML table being read: every key must be consumed, each with the right type."""

    file: Path
    where: str
    data: Mapping[str, Any]
    used: set[str] = field(default_factory=set)

    def _fail(self, key: str, problem: str) -> ProtocolError:
        at = f"{self.where}.{key}" if self.where else key
        return ProtocolError(f"{self.file}: {at}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, check=None,  # noqa: ANN001
            rule: str = "") -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self._fail(key, "missing (required)")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML integers are fine where a float is asked for; booleans are never numbers here.
        ok = (not isinstance(value, bool) or bool in kinds) and (
            isinstance(value, kinds) or (float in kinds and isinstance(value, int) and not isinstance(value, bool)))
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise self._fail(key, f"must be {names}, got {type(value).__name__} {value!r}")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool) and int not in kinds:
            value = float(value)
        if check is not None and not check(value):
            raise self._fail(key, f"{rule}, got {value!r}")
        return value

    def table(self, key: str, required: bool = False) -> _Table:
        self.used.add(key)
        where = f"{self.where}.{key}" if self.where else key
        if key not in self.data:
            if required:
                raise self._fail(key, "missing table (required)")
            return _Table(self.file, where, {})
        value = self.data[key]
        if not isinstance(value, Mapping):
            raise self._fail(key, f"must be a table ([{where}]), got {type(value).__name__}")
        return _Table(self.file, where, value)

    def tables(self, key: str) -> list[_Table]:
        self.used.add(key)
        where = f"{self.where}.{key}" if self.where else key
        value = self.data.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, Mapping) for v in value):
            raise self._fail(key, f"needs one or more [[{where}]] tables")
        return [_Table(self.file, f"{where}[{i}]", v) for i, v in enumerate(value)]

    def str_list(self, key: str, allowed: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
        values = self.get(key, list, list(default))
        if not values or not all(isinstance(v, str) for v in values):
            raise self._fail(key, f"must be a non-empty list of strings from {', '.join(allowed)}")
        bad = [v for v in values if v not in allowed]
        if bad:
            raise self._fail(key, f"unknown value {bad[0]!r} (choose from {', '.join(allowed)})")
        if len(set(values)) != len(values):
            raise self._fail(key, "lists a value twice")
        return tuple(values)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self._fail(unknown[0], f"unknown key (known here: {', '.join(sorted(self.used))})")


def _positive(x: float) -> bool:
    return x > 0


def _non_negative(x: float) -> bool:
    return x >= 0


def _presentation(t: _Table) -> Presentation:
    p = Presentation(
        repeats=t.get("repeats", int, Presentation.repeats, check=_positive, rule="must be >= 1"),
        isi_grey_frames=t.get("isi_grey_frames", int, Presentation.isi_grey_frames, check=_non_negative,
                              rule="must be >= 0"),
    )
    t.done()
    return p


def _stimulus(t: _Table, default_repeats: int) -> CharacterizeStimulus:
    d = CharacterizeStimulus
    family = t.get("family", str, check=lambda f: f in FAMILIES, rule=f"must be one of {', '.join(FAMILIES)}")
    s = CharacterizeStimulus(
        name=t.get("name", str, family, check=lambda n: n.isidentifier(), rule="must be a plain name (letters, digits, _)"),
        family=family,
        repeats=t.get("repeats", int, default_repeats, check=_positive, rule="must be >= 1"),
        seconds=t.get("seconds", float, d.seconds, check=_positive, rule="must be > 0"),
        check_px=t.get("check_px", int, d.check_px, check=_positive, rule="must be >= 1"),
        contrast=t.get("contrast", float, d.contrast, check=lambda c: 0 < c <= 1, rule="must be in (0, 1]"),
        rms_contrast=t.get("rms_contrast", float, d.rms_contrast, check=lambda c: 0 < c < 0.5,
                           rule="must be in (0, 0.5)"),
        directions=t.get("directions", int, d.directions, check=_positive, rule="must be >= 1"),
        bar_width_px=t.get("bar_width_px", float, d.bar_width_px, check=_positive, rule="must be > 0"),
        speed_px_per_frame=t.get("speed_px_per_frame", float, d.speed_px_per_frame, check=_positive,
                                 rule="must be > 0"),
        seed=t.get("seed", int, d.seed),
    )
    t.done()
    return s


# The TOML type of the design settings whose default (None) does not say it.
_SETTING_KINDS: dict[str, type | tuple[type, ...]] = {"rms_contrast": float, "storage": str, "cmaes_trials": int,
                                                       "seeds": int, "frame_rms": (float, str)}


def _setting_kind(name: str) -> type | tuple[type, ...]:
    if name in _SETTING_KINDS:
        return _SETTING_KINDS[name]
    value = default(name)
    return list if isinstance(value, tuple) else type(value)


def _design(t: _Table, cells_required: bool = True) -> DesignPlan:
    d = DesignPlan
    cells = t.get("cells", list) if cells_required else t.get("cells", list, [])
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in cells) or (cells_required and not cells):
        raise t._fail("cells", f"must be a non-empty list of cell ids (integers), got {cells!r}")
    if len(set(cells)) != len(cells):
        raise t._fail("cells", "lists a cell twice")
    # Every design setting but `objective` (one per entry of `objectives`), checked by the settings themselves.
    names = [name for name in SETTING_NAMES if name != "objective"]
    given = {name: t.get(name, _setting_kind(name)) for name in names if name in t.data}
    t.used.update(names)  # known keys, given or not (for the unknown-key message)
    try:
        settings = design_settings(**given)
    except DesignSettingError as err:
        raise t._fail(err.setting, err.problem) from None
    plan = DesignPlan(
        cells=tuple(cells),
        objectives=t.str_list("objectives", OBJECTIVES, d.objectives),
        controls=t.str_list("controls", CONTROLS, d.controls),
        settings=settings,
        device=t.get("device", str, d.device),
        refine=t.get("refine", bool, d.refine),
    )
    if plan.refine and plan.settings.method == "optuna":
        raise t._fail("refine", "refines gradient designs: needs method gradient or both")
    t.done()
    return plan


def _finetune(t: _Table) -> FinetunePlan:
    d = FinetunePlan
    plan = FinetunePlan(
        mode=t.get("mode", str, d.mode, check=lambda m: m in FINETUNE_MODES, rule="must be readout or full"),
        epochs=t.get("epochs", int, d.epochs, check=_positive, rule="must be >= 1"),
        window=t.get("window", int, d.window, check=lambda w: w >= 40, rule="must be >= 40 frames (Vi-ST's loss)"),
        lr=t.get("lr", float, d.lr, check=_positive, rule="must be > 0"),
        warmup_epochs=t.get("warmup_epochs", int, d.warmup_epochs, check=_non_negative, rule="must be >= 0"),
        batch_size=t.get("batch_size", int, d.batch_size, check=_positive, rule="must be >= 1"),
        include_training_data=t.get("include_training_data", bool, d.include_training_data),
        session_share=t.get("session_share", float, d.session_share, check=lambda f: 0 < f < 1,
                            rule="must be in (0, 1)"),
        focus_weight=t.get("focus_weight", float, d.focus_weight, check=_positive, rule="must be > 0"),
        seed=t.get("seed", int, d.seed),
    )
    t.done()
    return plan


def _evaluation(t: _Table) -> EvaluationPlan:
    data = t.get("data", str, None)
    plan = EvaluationPlan(segment=t.get("segment", str, EvaluationPlan.segment), data=Path(data) if data else None)
    t.done()
    return plan


SHIPPED_PROTOCOLS = Path(__file__).with_name("protocols")


def shipped_protocols() -> list[str]:
    """Names of the protocols shipped with the package (`characterize`, `finetune`, `mei_closed_loop`, `new_retina`)."""
    return shipped_names(SHIPPED_PROTOCOLS)


def resolve_protocol(name_or_path: str | Path) -> Path:
    """A protocol file: the path if it exists, else the shipped protocol of that name.

    `mei_closed_loop`, `mei_closed_loop.toml` and `protocols/mei_closed_loop.toml` (the
    repository's layout before the protocols became package data) name the shipped one from
    any folder where no such file is.
    """
    return resolve_shipped(name_or_path, SHIPPED_PROTOCOLS, "protocols", "protocol", missing="protocol file")


def load_protocol(path: str | Path) -> Protocol:
    """Read and check a protocol (a TOML path or a shipped name); `ProtocolError` names the file and key."""
    path = resolve_protocol(path)
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"{path}: not valid TOML: {err}") from None
    digest = hashlib.sha256(raw).hexdigest()[:16]
    top = _Table(path, "", data)
    kind = top.get("kind", str, check=lambda k: k in KINDS, rule=f"must be one of {', '.join(KINDS)}")
    description = top.get("description", str, "")
    protocol: Protocol
    if kind == "characterize":
        presentation = _presentation(top.table("presentation"))
        stimuli = tuple(_stimulus(t, presentation.repeats) for t in top.tables("stimulus"))
        names = [s.name for s in stimuli]
        if len(set(names)) != len(names):
            raise ProtocolError(f"{path}: stimulus names must be unique, got {names}")
        protocol = CharacterizeProtocol(path, digest, description, presentation, stimuli)
    elif kind == "mei_closed_loop":
        rounds = top.get("rounds", int, check=_positive, rule="must be >= 1")
        design = _design(top.table("design", required=True))
        finetune = _finetune(top.table("finetune"))
        if design.settings.n_frames < finetune.window:
            raise ProtocolError(f"{path}: design.n_frames ({design.settings.n_frames}) must be >= finetune.window "
                                f"({finetune.window}): the twin learns from windows of the presented clips")
        protocol = ClosedLoopProtocol(path, digest, description, rounds, _presentation(top.table("presentation")),
                                      design, finetune, _evaluation(top.table("evaluation")))
    elif kind == "new_retina":
        protocol = _new_retina(top, path, digest, description)
    else:
        data_table = top.table("data")
        session = data_table.get("session", str, None)
        segments = data_table.get("segments", list, [])
        if not all(isinstance(s, str) for s in segments):
            raise data_table._fail("segments", "must be a list of segment names")
        data_table.done()
        protocol = FinetuneProtocol(path, digest, description, Path(session) if session else None,
                                    tuple(segments), _finetune(top.table("finetune")),
                                    _evaluation(top.table("evaluation")))
    top.done()
    return replace(protocol, notes=_defaulted_tables(protocol, data))


def _new_retina(top: _Table, path: Path, digest: str, description: str) -> NewRetinaProtocol:
    presentation = _presentation(top.table("presentation"))
    stimuli = tuple(_stimulus(t, presentation.repeats) for t in top.tables("stimulus"))
    names = [s.name for s in stimuli]
    if len(set(names)) != len(names):
        raise ProtocolError(f"{path}: stimulus names must be unique, got {names}")
    t = top.table("core", required=True)
    d = CorePlan
    core_path = t.get("path", str, None)
    plan = CorePlan(
        path=Path(core_path) if core_path else None,
        train=_stimulus_names(t, "train", d.train, names),
        noise=t.get("noise", str, d.noise, check=lambda n: n in names, rule=f"must name a stimulus ({', '.join(names)})"),
        test=t.get("test", str, d.test, check=lambda n: n in names, rule=f"must name a stimulus ({', '.join(names)})"),
        finetune_core=t.get("finetune_core", bool, d.finetune_core),
        top_cells=t.get("top_cells", int, d.top_cells, check=_positive, rule="must be >= 1"),
    )
    t.done()
    by_name = {s.name: s for s in stimuli}
    if by_name[plan.test].repeats < 2:
        raise ProtocolError(f"{path}: [core] test = {plan.test!r} is shown {by_name[plan.test].repeats} time(s); a "
                            "held-out score needs the stimulus repeated (repeats >= 2)")
    if plan.test in plan.train:
        raise ProtocolError(f"{path}: [core] test and train name the same stimulus {plan.test!r}")
    rounds = top.get("rounds", int, check=_positive, rule="must be >= 1")
    design = _design(top.table("design", required=True), cells_required=False)
    finetune = _finetune(top.table("finetune"))
    if design.settings.n_frames < finetune.window:
        raise ProtocolError(f"{path}: design.n_frames ({design.settings.n_frames}) must be >= finetune.window "
                            f"({finetune.window}): the twin learns from windows of the presented clips")
    characterize = CharacterizeProtocol(path, digest, description, presentation, stimuli)
    loop = ClosedLoopProtocol(path, digest, description, rounds, presentation, design, finetune, EvaluationPlan())
    return NewRetinaProtocol(path, digest, description, characterize, plan, loop)


def _stimulus_names(t: _Table, key: str, default: tuple[str, ...], names: list[str]) -> tuple[str, ...]:
    """A key naming one stimulus of the protocol (a string) or several (a list of strings)."""
    value = t.get(key, (str, list), list(default))
    if not isinstance(value, str):
        return t.str_list(key, tuple(names), default)
    if value not in names:
        raise t._fail(key, f"must name a stimulus ({', '.join(names)}), got {value!r}")
    return (value,)


def protocol_digest(protocol: Protocol) -> str:
    """The digest of a protocol built in code (the demo's): its settings, as a file's digest is its bytes."""
    import json

    fields_ = {k: v for k, v in asdict(protocol).items() if k not in ("path", "digest", "notes")}
    return hashlib.sha256(json.dumps(fields_, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _defaulted_tables(protocol: Protocol, data: Mapping[str, Any]) -> tuple[str, ...]:
    """One line per optional table the file leaves out, with the defaults that stand in for it."""
    tables = {"presentation": getattr(protocol, "presentation", None), "finetune": getattr(protocol, "finetune", None),
              "evaluation": getattr(protocol, "evaluation", None)}
    notes = []
    for name, plan in tables.items():
        if plan is not None and name not in data:
            values = ", ".join(f"{k} = {_toml_value(v)}" for k, v in asdict(plan).items())
            notes.append(f"{protocol.path} has no [{name}] table: using the defaults ({values})")
    return tuple(notes)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "unset"
    return repr(value) if isinstance(value, str) else str(value)

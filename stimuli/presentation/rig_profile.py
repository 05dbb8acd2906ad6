"""What a rig's display path looks like: screen, where the stimulus lands, optics, luminance.

A profile is a TOML file, named by its path or, for the profiles shipped with the package
(`stimuli/presentation/rigs/`: `default`, `projector_example`), by its name from any folder:

```toml
name = "default"                 # required
description = "free text"        # optional

[monitor]                        # required
width_px = 800                   # required: the window/screen size
height_px = 600                  # required
refresh_rate_hz = 60.0           # required: the display's vertical refresh
screen = 0                       # which screen the rig window opens on
fullscreen = false               # rig only; headless rendering is always windowed

[stimulus]
scale = 4                        # screen pixels per stimulus pixel (integer, nearest-neighbour)
offset_x_px = 272                # left edge of the stimulus rectangle, from the screen's left
offset_y_px = 172                # top edge, from the screen's top; omit both to centre
flip_horizontal = false          # mirror left-right (the optical path mirrors it back)
flip_vertical = false            # mirror top-bottom
background = 128                 # designed grey level (0..255) around the stimulus

[luminance]                      # give gamma or lut, not both
gamma = 1.0                      # display gamma; 1.0 = linear display, no correction
# lut = [0, 3, ...]              # 256 output levels: lut[g] = level that makes luminance g/255

[photodiode]
enabled = true
corner = "bottom_right"          # top_left | top_right | bottom_left | bottom_right (screen)
size_px = 32                     # side of the square patch
```

Every key not listed is an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stimuli.errors import InputError
from stimuli.shipped import resolve_shipped, shipped_names

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")

# TOML section -> {key: RigProfile field}. Top-level keys use section "".
_SCHEMA: dict[str, dict[str, str]] = {
    "": {"name": "name", "description": "description"},
    "monitor": {
        "width_px": "monitor_width_px",
        "height_px": "monitor_height_px",
        "refresh_rate_hz": "refresh_rate_hz",
        "screen": "screen",
        "fullscreen": "fullscreen",
    },
    "stimulus": {
        "scale": "scale",
        "offset_x_px": "offset_x_px",
        "offset_y_px": "offset_y_px",
        "flip_horizontal": "flip_horizontal",
        "flip_vertical": "flip_vertical",
        "background": "background",
    },
    "luminance": {"gamma": "gamma", "lut": "lut"},
    "photodiode": {"enabled": "photodiode_enabled", "corner": "photodiode_corner",
                   "size_px": "photodiode_size_px"},
}


class RigProfileError(InputError):
    """A rig profile is malformed: unknown key, missing key, wrong type or impossible value."""


_REQUIRED = {("", "name"), ("monitor", "width_px"), ("monitor", "height_px"),
             ("monitor", "refresh_rate_hz")}


@dataclass(frozen=True)
class RigProfile:
    """A validated rig display profile. Screen coordinates: x right, y down, origin top-left.

    `lut`, when given, replaces `gamma`: `lut[g]` is the output level (0..255) sent to the
    display for the designed grey level `g`, i.e. the level whose measured luminance is
    `g / 255` of the maximum (see `stimuli.presentation.luminance`).
    """

    name: str
    monitor_width_px: int
    monitor_height_px: int
    refresh_rate_hz: float
    screen: int = 0
    fullscreen: bool = False
    scale: int = 1
    offset_x_px: int | None = None
    offset_y_px: int | None = None
    flip_horizontal: bool = False
    flip_vertical: bool = False
    background: int = 128
    gamma: float = 1.0
    lut: tuple[int, ...] | None = None
    photodiode_enabled: bool = True
    photodiode_corner: str = "bottom_right"
    photodiode_size_px: int = 32
    description: str = ""

    def __post_init__(self) -> None:
        _check_type("name", self.name, str)
        _check_type("description", self.description, str)
        if not self.name:
            raise RigProfileError("rig profile: name must not be empty")
        for field in ("monitor_width_px", "monitor_height_px", "scale", "photodiode_size_px"):
            _check_type(field, getattr(self, field), int)
            if getattr(self, field) < 1:
                raise RigProfileError(f"rig profile: {field} must be >= 1, got {getattr(self, field)}")
        _check_type("screen", self.screen, int)
        if self.screen < 0:
            raise RigProfileError(f"rig profile: screen must be >= 0, got {self.screen}")
        _check_type("refresh_rate_hz", self.refresh_rate_hz, float)
        if not math.isfinite(self.refresh_rate_hz) or self.refresh_rate_hz <= 0:
            raise RigProfileError(f"rig profile: refresh_rate_hz must be > 0, got {self.refresh_rate_hz}")
        for field in ("fullscreen", "flip_horizontal", "flip_vertical", "photodiode_enabled"):
            _check_type(field, getattr(self, field), bool)
        if (self.offset_x_px is None) != (self.offset_y_px is None):
            raise RigProfileError("rig profile: give both offset_x_px and offset_y_px, or neither (centred)")
        for field in ("offset_x_px", "offset_y_px"):
            value = getattr(self, field)
            if value is not None:
                _check_type(field, value, int)
                if value < 0:
                    raise RigProfileError(f"rig profile: {field} must be >= 0, got {value}")
        _check_type("background", self.background, int)
        if not 0 <= self.background <= 255:
            raise RigProfileError(f"rig profile: background must be a grey level 0..255, got {self.background}")
        _check_type("gamma", self.gamma, float)
        if not math.isfinite(self.gamma) or self.gamma <= 0:
            raise RigProfileError(f"rig profile: gamma must be > 0, got {self.gamma}")
        if self.lut is not None:
            _check_lut(self.lut)
            if self.gamma != 1.0:
                raise RigProfileError("rig profile: give either gamma or lut, not both")
        _check_type("photodiode_corner", self.photodiode_corner, str)
        if self.photodiode_corner not in CORNERS:
            raise RigProfileError(f"rig profile: photodiode_corner must be one of {CORNERS}, "
                             f"got {self.photodiode_corner!r}")
        if self.photodiode_enabled and (self.photodiode_size_px > self.monitor_width_px
                                        or self.photodiode_size_px > self.monitor_height_px):
            raise RigProfileError(f"rig profile: photodiode patch ({self.photodiode_size_px} px) does not "
                             f"fit on a {self.monitor_width_px}x{self.monitor_height_px} screen")

    @property
    def refresh_period_s(self) -> float:
        return 1.0 / self.refresh_rate_hz

    @property
    def screen_shape(self) -> tuple[int, int]:
        """`(Hs, Ws)` of the screen canvas."""
        return (self.monitor_height_px, self.monitor_width_px)

    def refreshes_per_frame(self, frame_rate: float) -> int:
        """Monitor refreshes each stimulus frame stays up; the rates must divide exactly."""
        if not math.isfinite(frame_rate) or frame_rate <= 0:
            raise InputError(f"frame_rate must be > 0, got {frame_rate}")
        ratio = self.refresh_rate_hz / frame_rate
        n = round(ratio)
        # A stimulus rate that does not divide the refresh rate would show frames for uneven
        # durations (e.g. 60/25 = 2.4 refreshes): refuse instead of jittering the timing.
        if n < 1 or abs(ratio - n) > 1e-6 * ratio:
            raise InputError(
                f"stimulus frame rate {frame_rate:g} Hz does not divide the {self.name!r} refresh "
                f"rate {self.refresh_rate_hz:g} Hz (ratio {ratio:.4g}); use "
                f"{self.refresh_rate_hz:g}/n Hz, e.g. "
                + ", ".join(f"{self.refresh_rate_hz / k:g}" for k in range(1, 5)))
        return int(n)


SHIPPED_PROFILES = Path(__file__).with_name("rigs")


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped with the package (`default`, `projector_example`)."""
    return shipped_names(SHIPPED_PROFILES)


def resolve_profile(name_or_path: str | os.PathLike[str]) -> Path:
    """A profile file: the path if it exists, else the shipped profile of that name.

    `default`, `default.toml` and `rigs/default.toml` (the repository's layout before the
    profiles became package data) all name the shipped default when no such file is here.
    """
    return resolve_shipped(name_or_path, SHIPPED_PROFILES, "rigs", "profile", missing="rig profile")


def load_profile(path: str | os.PathLike[str]) -> RigProfile:
    """Read and validate a rig profile (a TOML path or a shipped name); errors name the file and key."""
    path = resolve_profile(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise RigProfileError(f"{path}: not valid TOML ({err})") from None
    try:
        return profile_from_dict(data)
    except RigProfileError as err:
        raise RigProfileError(f"{path}: {err}") from None


def profile_from_dict(data: dict[str, Any]) -> RigProfile:
    """Build a profile from the TOML structure (sections as nested dicts)."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in _SCHEMA or key == "":
                raise RigProfileError(f"unknown section [{key}] (known: "
                                 f"{', '.join(s for s in _SCHEMA if s)})")
            for sub, sub_value in value.items():
                if sub not in _SCHEMA[key]:
                    raise RigProfileError(f"unknown key {sub!r} in [{key}] (known: "
                                     f"{', '.join(_SCHEMA[key])})")
                kwargs[_SCHEMA[key][sub]] = sub_value
        elif key in _SCHEMA and key != "":
            raise RigProfileError(f"[{key}] must be a table of keys, got {type(value).__name__} {value!r}")
        elif key in _SCHEMA[""]:
            kwargs[_SCHEMA[""][key]] = value
        else:
            raise RigProfileError(f"unknown top-level key {key!r} (known: {', '.join(_SCHEMA[''])} "
                             "and the sections " + ", ".join(s for s in _SCHEMA if s) + ")")
    for section, key in sorted(_REQUIRED):
        if _SCHEMA[section][key] not in kwargs:
            where = f"[{section}] {key}" if section else key
            raise RigProfileError(f"missing required key {where}")
    # TOML writes 60 for 60.0; a whole number is a fine rate or gamma.
    for field in ("refresh_rate_hz", "gamma"):
        value = kwargs.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            kwargs[field] = float(value)
    if isinstance(kwargs.get("lut"), list):
        kwargs["lut"] = tuple(kwargs["lut"])
    return RigProfile(**kwargs)


_TOML_NAME = {f: (s, k) for s, keys in _SCHEMA.items() for k, f in keys.items()}


def _check_type(field: str, value: object, expected: type) -> None:
    section, key = _TOML_NAME.get(field, ("", field))
    where = f"[{section}] {key}" if section else key
    # bool is an int subclass in Python; a flag is never a number here and vice versa.
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if not ok:
        raise RigProfileError(f"rig profile: {where} must be {expected.__name__}, "
                        f"got {type(value).__name__} {value!r}")


def _check_lut(lut: tuple[int, ...]) -> None:
    if not isinstance(lut, tuple) or len(lut) != 256:
        n = len(lut) if hasattr(lut, "__len__") else "?"
        raise RigProfileError(f"rig profile: [luminance] lut must list 256 output levels, got {n}")
    for g, level in enumerate(lut):
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 255:
            raise RigProfileError(f"rig profile: [luminance] lut[{g}] must be an integer 0..255, got {level!r}")
    if any(b < a for a, b in zip(lut, lut[1:], strict=False)):
        raise RigProfileError("rig profile: [luminance] lut must be non-decreasing "
                         "(brighter designed grey never maps to a darker output level)")

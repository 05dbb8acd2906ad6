"""The ``Stimulus`` value object: a greyscale clip plus the recipe that made it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from stimuli.errors import InputError

ParamValue = float | int | str | bool | tuple | None
"""A JSON-serialisable parameter value (tuples may nest and hold any of these; None is
JSON null, used for "not set", e.g. a full-field grating's aperture)."""


def _normalise_param(key: str, value: object) -> ParamValue:
    """Convert numpy scalars and lists to plain Python so params round-trip through JSON."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        result = float(value)
        if not math.isfinite(result):
            # JSON has no NaN/inf; a non-finite recipe value is a bug upstream.
            raise InputError(f"params[{key!r}] must be finite, got {result}")
        return result
    if isinstance(value, tuple | list):
        return tuple(_normalise_param(key, item) for item in value)
    raise InputError(
        f"params[{key!r}] must be a float, int, str, bool, None or tuple of those, "
        f"got {type(value).__name__}"
    )


@dataclass(frozen=True, eq=False, repr=False)
class Stimulus:
    """A greyscale movie ready to present or to feed to the twin.

    Attributes:
        frames: uint8 ``[T, H, W]``; 0 is black, 255 white, mean grey is 128.
            Stored as a read-only view so the recipe in ``params`` stays truthful.
        frame_rate: presentation rate in Hz (> 0).
        name: stimulus family, e.g. ``"grating"``.
        params: the parameters that made the clip (JSON-serialisable, read-only).
    """

    frames: np.ndarray
    frame_rate: float
    name: str
    params: Mapping[str, ParamValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        frames = self.frames
        if not isinstance(frames, np.ndarray):
            raise InputError(f"frames must be a numpy array, got {type(frames).__name__}")
        if frames.ndim != 3:
            raise InputError(f"frames must be [T, H, W] (ndim 3), got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise InputError(f"frames must have dtype uint8, got {frames.dtype}")
        if min(frames.shape) < 1:
            raise InputError(
                f"frames must be non-empty in every dimension, got shape {frames.shape}"
            )
        if isinstance(self.frame_rate, bool) or not isinstance(self.frame_rate, numbers.Real):
            raise InputError(f"frame_rate must be a real number, got {self.frame_rate!r}")
        frame_rate = float(self.frame_rate)
        if not (math.isfinite(frame_rate) and frame_rate > 0):
            raise InputError(f"frame_rate must be finite and > 0, got {frame_rate}")
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.params, Mapping):
            raise InputError(f"params must be a mapping, got {type(self.params).__name__}")
        params: dict[str, ParamValue] = {}
        for key, value in self.params.items():
            if not isinstance(key, str):
                raise InputError(f"params keys must be strings, got {key!r}")
            params[key] = _normalise_param(key, value)

        view = frames.view()
        view.flags.writeable = False
        # Frozen dataclass: object.__setattr__ is the sanctioned way to normalise fields.
        object.__setattr__(self, "frames", view)
        object.__setattr__(self, "frame_rate", frame_rate)
        object.__setattr__(self, "params", MappingProxyType(params))

    @property
    def n_frames(self) -> int:
        """Number of frames ``T``."""
        return int(self.frames.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Clip shape ``(T, H, W)``."""
        t, h, w = self.frames.shape
        return int(t), int(h), int(w)

    @property
    def duration_s(self) -> float:
        """Clip duration in seconds (``T / frame_rate``)."""
        return self.n_frames / self.frame_rate

    def as_float(self) -> np.ndarray:
        """Frames as float32 ``[T, H, W]`` in [0, 1] (0 black, 1 white)."""
        return self.frames.astype(np.float32) / np.float32(255.0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stimulus):
            return NotImplemented
        return (
            self.name == other.name
            and self.frame_rate == other.frame_rate
            and dict(self.params) == dict(other.params)
            and self.frames.shape == other.frames.shape
            and bool(np.array_equal(self.frames, other.frames))
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array: equality by value, so unhashable

    def __repr__(self) -> str:
        t, h, w = self.shape
        return (
            f"Stimulus(name={self.name!r}, shape=[T={t}, H={h}, W={w}], "
            f"frame_rate={self.frame_rate:g} Hz, params={dict(self.params)!r})"
        )

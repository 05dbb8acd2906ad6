"""Argument checks shared by the stimulus generators.

Every check raises ``ValueError`` whose message starts with the parameter name, so a
failed Optuna trial or a typo in a protocol file points straight at the culprit.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from stimuli.errors import InputError


def require_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Return ``value`` as a Python int, or raise if it is not an integer >= ``minimum``."""
    # bool is an Integral subclass, but True frames is almost certainly a bug.
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}")
    result = int(value)
    if minimum is not None and result < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {result}")
    return result


def require_float(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    """Return ``value`` as a finite Python float inside the given bounds, or raise."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise InputError(f"{name} must be finite, got {result}")
    if minimum is not None:
        if strict_minimum and result <= minimum:
            raise InputError(f"{name} must be > {minimum}, got {result}")
        if not strict_minimum and result < minimum:
            raise InputError(f"{name} must be >= {minimum}, got {result}")
    if maximum is not None and result > maximum:
        raise InputError(f"{name} must be <= {maximum}, got {result}")
    return result


def require_polarity(name: str, value: object) -> int:
    """Return +1 (bright) or -1 (dark); anything else raises."""
    if (
        isinstance(value, bool | np.bool_)
        or not isinstance(value, numbers.Real)
        or value not in (1, -1)
    ):
        raise InputError(f"{name} must be +1 (bright) or -1 (dark), got {value!r}")
    return int(value)


def require_frame_size(n_frames: object, height: object, width: object) -> tuple[int, int, int]:
    """Check the clip size ``[T, H, W]`` common to every generator."""
    return (
        require_int("n_frames", n_frames, minimum=1),
        require_int("height", height, minimum=1),
        require_int("width", width, minimum=1),
    )


def require_frame_rate(frame_rate: object) -> float:
    """Check a frame rate in Hz."""
    return require_float("frame_rate", frame_rate, minimum=0.0, strict_minimum=True)


def require_contrast(contrast: object, name: str = "contrast") -> float:
    """Check a contrast in [0, 1] (fraction of the grey-to-white swing)."""
    return require_float(name, contrast, minimum=0.0, maximum=1.0)


def require_point(name: str, value: object) -> tuple[float, float]:
    """Check a ``(y, x)`` pair of finite pixel coordinates."""
    if not isinstance(value, tuple | list | np.ndarray) or len(value) != 2:
        raise InputError(f"{name} must be a (y, x) pair of pixel coordinates, got {value!r}")
    return (require_float(f"{name}[0] (y)", value[0]), require_float(f"{name}[1] (x)", value[1]))

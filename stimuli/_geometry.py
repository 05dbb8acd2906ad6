"""Pixel geometry shared by the spatial stimulus families.

Conventions: pixel centres sit at integer (row, col) coordinates; the default centre
of an ``H x W`` frame is ``((H - 1) / 2, (W - 1) / 2)``. Directions are in degrees,
counter-clockwise on screen from rightward (0 = right, 90 = up), so "up" is -row.

Edges are anti-aliased with a 1-pixel linear ramp: a pixel's weight falls from 1 to 0
as its centre goes from half a pixel inside an edge to half a pixel outside. This
makes every rendered clip a continuous function of positions and sizes, which an
optimiser (Optuna) over continuous stimulus parameters relies on.
"""

from __future__ import annotations

import math

import numpy as np

from stimuli.contrast import to_uint8


def default_center(height: int, width: int) -> tuple[float, float]:
    """Centre ``(y, x)`` of an ``H x W`` frame in pixel coordinates."""
    return (height - 1) / 2.0, (width - 1) / 2.0


def pixel_offsets(
    height: int, width: int, center_yx: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of every pixel centre from ``center_yx``.

    Returns:
        ``(dy, dx)``, each float64 ``[H, W]``; dy grows downwards, dx rightwards.
    """
    cy, cx = default_center(height, width) if center_yx is None else center_yx
    rows = np.arange(height, dtype=np.float64)[:, None] - cy
    cols = np.arange(width, dtype=np.float64)[None, :] - cx
    return np.broadcast_to(rows, (height, width)), np.broadcast_to(cols, (height, width))


def direction_coordinates(
    height: int,
    width: int,
    direction_deg: float,
    center_yx: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates along and across a screen direction.

    Returns:
        ``(u, v)``, each float64 ``[H, W]``: ``u`` is the signed distance (px) from the
        centre along ``direction_deg``; ``v`` along the direction 90 degrees further
        counter-clockwise.
    """
    dy, dx = pixel_offsets(height, width, center_yx)
    theta = math.radians(direction_deg)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    # Screen "up" is -row, hence the minus signs on dy.
    u = dx * cos_t - dy * sin_t
    v = -dx * sin_t - dy * cos_t
    return u, v


def half_extent_along(height: int, width: int, direction_deg: float) -> float:
    """Largest ``|u|`` any part of the frame reaches along a direction (px, incl. pixel edges)."""
    theta = math.radians(direction_deg)
    return 0.5 * (width * abs(math.cos(theta)) + height * abs(math.sin(theta)))


def soft_inside(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased membership: 1 well inside (distance < -0.5), 0 well outside (> 0.5).

    Args:
        signed_distance: any shape; distance (px) of pixel centres from an edge,
            negative inside the shape.
    """
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def modulation_to_frames(modulation: np.ndarray) -> np.ndarray:
    """Contrast modulation around mean grey -> uint8 frames.

    Args:
        modulation: float ``[T, H, W]`` in [-1, 1]; -1 black, 0 mean grey, +1 white.

    Returns:
        uint8 ``[T, H, W]``.
    """
    return to_uint8(0.5 * (1.0 + modulation))

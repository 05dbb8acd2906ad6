"""Penalties on the stimulus itself, subtracted from the objective at every step.

Each is a callable `frames [B, T, H, W] -> [B]` (one penalty per stimulus), already
multiplied by its weight. Both are means over pixels, so a weight means the same thing at
any screen size or clip length.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class TotalVariation:
    """`weight * mean |neighbour differences|` in space (anisotropic TV): penalises pixel noise."""

    weight: float = 0.0

    def __call__(self, frames: Tensor) -> Tensor:
        dy = (frames[..., 1:, :] - frames[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        dx = (frames[..., :, 1:] - frames[..., :, :-1]).abs().mean(dim=(1, 2, 3))
        return self.weight * (dy + dx)


@dataclass(frozen=True)
class TemporalSmoothness:
    """`weight * mean squared frame-to-frame change`: penalises flicker faster than the cell sees."""

    weight: float = 0.0

    def __call__(self, frames: Tensor) -> Tensor:
        if frames.shape[1] < 2:
            return frames.new_zeros(frames.shape[0])
        return self.weight * (frames[:, 1:] - frames[:, :-1]).pow(2).mean(dim=(1, 2, 3))

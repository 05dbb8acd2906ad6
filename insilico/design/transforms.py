"""Random transforms applied to the stimulus before the twin sees it, at every step.

A design that only works at one exact pixel offset or one exact timing exploits the twin,
not the cell; averaging the objective over small random shifts (Lucid's "transformation
robustness") favours designs that survive them. Each transform is a callable
`(frames [B, T, H, W], generators) -> [B, T, H, W]` that draws batch member `b`'s shift from
`generators[b]`, so a member's design depends only on its own seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stimuli.errors import InputError


def _draw(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high] from `generator`."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


@dataclass(frozen=True)
class Jitter:
    """Shift each clip by up to `max_px` pixels in y and x (circular, the same for every frame)."""

    max_px: int = 2

    def __post_init__(self) -> None:
        if self.max_px < 0:
            raise InputError(f"jitter must be >= 0 pixels, got {self.max_px}")

    def __call__(self, frames: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        if self.max_px == 0:
            return frames
        out = []
        for b, gen in enumerate(generators):
            dy, dx = _draw(gen, -self.max_px, self.max_px), _draw(gen, -self.max_px, self.max_px)
            out.append(torch.roll(frames[b], shifts=(dy, dx), dims=(-2, -1)))
        return torch.stack(out)


@dataclass(frozen=True)
class TimeShift:
    """Shift each clip by up to `max_frames` in time, repeating its first or last frame.

    A positive shift delays the clip (the window then sees slightly earlier content), a
    negative one advances it; the clip keeps its length.
    """

    max_frames: int = 2

    def __post_init__(self) -> None:
        if self.max_frames < 0:
            raise InputError(f"time shift must be >= 0 frames, got {self.max_frames}")

    def __call__(self, frames: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        if self.max_frames == 0:
            return frames
        n = frames.shape[1]
        out = []
        for b, gen in enumerate(generators):
            s = _draw(gen, -self.max_frames, self.max_frames)
            clip = frames[b]
            if s > 0:
                clip = torch.cat((clip[:1].expand(min(s, n), *clip.shape[1:]), clip[: n - min(s, n)]))
            elif s < 0:
                s = min(-s, n)
                clip = torch.cat((clip[s:], clip[-1:].expand(s, *clip.shape[1:])))
            out.append(clip)
        return torch.stack(out)


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order."""

    transforms: tuple = ()

    def __call__(self, frames: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        for transform in self.transforms:
            frames = transform(frames, generators)
        return frames

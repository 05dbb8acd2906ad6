"""The contrast budget: mean grey, an exact RMS contrast, and the screen's range.

Every designed, parametric or natural clip is compared at one budget: mean intensity 0.5
and RMS contrast `rms` (pixel standard deviation around the mean over the whole clip, in
units of the full range, as `stimuli.contrast.rms_contrast`), every value in [0, 1].

`ContrastBudget` maps each clip to `clip(offset + gain * z, 0, 1)` with `z` the clip
standardised, and finds `gain`, `offset` by fixed-point iteration in float64 until the mean
and the RMS are within `tolerance` (1e-6) of the request. Clipping can make a request
infeasible for a given clip (a small spot cannot reach RMS 0.2 on a grey field): then the
clip gets the highest contrast reachable below the budget, at mean 0.5 — the budget is a
ceiling. A constant clip has no contrast to scale and becomes uniform grey.

Two further constraints, both ceilings:

* `support` (`[H, W]` bool): pixels outside it stay at mean grey exactly, and the budget is
  spent inside it, scaled about grey (`_about_grey`: the whole-clip RMS is at most `rms`,
  carried by the pixels inside; the mean is the design's own). Without this the offset that
  restores the mean after clipping moved every pixel of the screen, envelope or not.
* `frame_rms`: no frame's contrast (`frame_contrast`: RMS deviation from mean grey over the
  frame's pixels) above it. A whole-clip budget alone let a design put all its contrast in
  the few frames the cell integrates (per-frame RMS 0.41-0.49 at a budget of 0.2, where
  natural clips sit near 0.2 in every frame). Frames over the cap are scaled towards grey;
  the whole-clip fit and the cap alternate so that contrast taken from capped frames goes
  to the others, and the cap is applied last, so it always holds (the mean may then sit
  within about a grey level of 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from stimuli.errors import InputError

MEAN_GREY = 0.5
FRAME_CAP_ROUNDS = 8  # whole-clip fit / per-frame cap alternations (the cap then holds to 1e-3 of the total)


def frame_contrast(frames: np.ndarray, mean: float = MEAN_GREY) -> np.ndarray:
    """`[T]` RMS deviation from `mean` of each frame's pixels (uint8 or float in [0, 1])."""
    array = np.asarray(frames)
    x = array.astype(np.float64) / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)
    return np.sqrt(((x - mean) ** 2).reshape(x.shape[0], -1).mean(axis=1))


@dataclass(frozen=True)
class ContrastBudget:
    """Post-processor `frames [B, T, H, W] -> [B, T, H, W]`: mean 0.5, RMS `rms`, in [0, 1]."""

    rms: float
    mean: float = MEAN_GREY
    tolerance: float = 1e-6
    frame_rms: float | None = None
    support: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.frame_rms is not None and not self.frame_rms > 0:
            raise InputError(f"the per-frame RMS cap must be > 0, got {self.frame_rms}")
        if self.support is not None:
            support = np.asarray(self.support, dtype=bool)
            if support.ndim != 2 or not support.any():
                raise InputError(f"the support must be a non-empty [H, W] mask, got shape {support.shape}")
            object.__setattr__(self, "support", support)
        if not 0.0 < self.mean < 1.0:
            raise InputError(f"mean grey must be in (0, 1), got {self.mean}")
        bound = math.sqrt(self.mean * (1.0 - self.mean))
        if not 0.0 < self.rms < bound:
            raise InputError(f"RMS contrast {self.rms} is outside (0, {bound:.3f}): a clip in [0, 1] "
                             f"with mean {self.mean} cannot reach it")

    def __call__(self, frames: Tensor) -> Tensor:
        if frames.ndim < 2:
            raise InputError(f"frames must be [B, ...], got {list(frames.shape)}")
        # numpy, one clip at a time: these are cheap elementwise passes, and a single thread
        # is much faster than torch's pool on a busy machine.
        x = frames.detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(x).all():
            raise InputError("the stimulus holds NaN or inf (the optimisation diverged)")
        out = np.stack([self._clip(clip) for clip in x.reshape(frames.shape[0], frames.shape[1], -1)])
        return torch.from_numpy(out.reshape(frames.shape)).to(device=frames.device, dtype=frames.dtype)

    def _clip(self, x: np.ndarray) -> np.ndarray:
        """One clip `[T, P]` (P pixels per frame) float64 -> `[T, P]` at the budget."""
        if self.frame_rms is None:
            return self._fit(x)
        y = x
        for _ in range(FRAME_CAP_ROUNDS):
            y = self._cap(self._fit(y))
        return y

    def _fit(self, x: np.ndarray) -> np.ndarray:
        """The whole-clip budget, on the support only where one is given."""
        if self.support is None:
            return self._one(x.reshape(-1), self.rms).reshape(x.shape)
        if self.support.size != x.shape[1]:
            raise InputError(f"the support has {self.support.size} pixels, the frames {x.shape[1]}")
        inside = np.broadcast_to(self.support.reshape(1, -1), x.shape)
        y = np.full_like(x, self.mean)
        y[inside] = self._about_grey(x[inside] - self.mean, x.size)
        return y

    def _about_grey(self, d: np.ndarray, total: int) -> np.ndarray:
        """Deviations `d` from grey of the pixels inside a support -> those pixels at the budget.

        Inside a support the clip is scaled about grey, `clip(mean + gain * d, 0, 1)`, with
        no offset: a pixel at grey stays at grey and the outside is untouched. A fit with an
        offset (as for whole clips) must darken or brighten every pixel it may move to hold
        the mean; inside a small envelope that drove the grey frames of a design to black or
        white. So here the mean is what the design makes it (a bright spot on grey raises it
        by the spot's share of the screen), and the gain is the one whose clip, outside
        included (`total` pixels), has RMS `rms`, or the most it can take: the budget is a
        ceiling.
        """
        if not np.any(d):
            return np.full_like(d, self.mean)

        def rms_at(gain: float) -> float:
            dev = np.clip(self.mean + gain * d, 0.0, 1.0) - self.mean
            first, second = float(dev.sum()) / total, float((dev * dev).sum()) / total
            return math.sqrt(max(second - first * first, 0.0))

        lo, hi = 0.0, self.rms / max(rms_at(1.0), 1e-12)
        saturated = 1e3 / max(float(np.abs(d).max()), 1e-12)  # past this every moved pixel is at 0 or 1
        while rms_at(hi) < self.rms and hi < saturated:
            lo, hi = hi, min(2.0 * hi, saturated)
        if rms_at(hi) >= self.rms:
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                got = rms_at(mid)
                if abs(got - self.rms) <= self.tolerance:
                    hi = mid
                    break
                lo, hi = (mid, hi) if got < self.rms else (lo, mid)
        return np.clip(self.mean + hi * d, 0.0, 1.0)

    def _cap(self, y: np.ndarray) -> np.ndarray:
        per_frame = np.sqrt(((y - self.mean) ** 2).mean(axis=1))
        scale = np.minimum(1.0, self.frame_rms / np.maximum(per_frame, 1e-12))
        return self.mean + (y - self.mean) * scale[:, None]

    def _one(self, x: np.ndarray, rms: float) -> np.ndarray:
        """One flattened clip `[n]` float64 -> `[n]` at mean `self.mean` and RMS `rms`."""
        spread = float(x.std())
        if spread <= 1e-12:
            return np.full_like(x, self.mean)
        z = (x - x.mean()) / spread
        # Fast path: Newton on the offset (the mean's slope is the unclipped fraction) and a
        # bounded multiplicative update of the gain; converges in a few steps unless most
        # pixels saturate.
        gain, offset = rms, self.mean
        for _ in range(50):
            y = np.clip(offset + gain * z, 0.0, 1.0)
            got_mean, got_rms = float(y.mean()), float(y.std())
            if abs(got_mean - self.mean) <= self.tolerance and abs(got_rms - rms) <= self.tolerance:
                return y
            free = np.count_nonzero((y > 0.0) & (y < 1.0)) / y.size
            if free < 0.05:
                break
            offset += (self.mean - got_mean) / free
            gain *= min(2.0, max(0.5, rms / max(got_rms, 1e-12)))
        return self._bisect(z, rms)

    def _bisect(self, z: np.ndarray, rms: float) -> np.ndarray:
        """Exact but slower: bisection on the gain, each with the offset solved by bisection."""
        z_min, z_max = float(z.min()), float(z.max())

        def at_mean(gain: float) -> np.ndarray:
            lo, hi = -gain * z_max, 1.0 - gain * z_min  # all black .. all white
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if float(np.clip(mid + gain * z, 0.0, 1.0).mean()) < self.mean:
                    lo = mid
                else:
                    hi = mid
            return np.clip(0.5 * (lo + hi) + gain * z, 0.0, 1.0)

        # Past this gain every pixel is saturated and the contrast cannot grow any more.
        g_lo, g_hi = 0.0, 1e3 / max(z_max - z_min, 1e-12)
        if float(at_mean(g_hi).std()) < rms:
            return at_mean(g_hi)  # infeasible for this clip: the most contrast it can take
        for _ in range(60):
            mid = 0.5 * (g_lo + g_hi)
            y = at_mean(mid)
            got = float(y.std())
            if abs(got - rms) <= self.tolerance:
                return y
            if got < rms:
                g_lo = mid
            else:
                g_hi = mid
        return at_mean(g_lo)

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """One clip `[T, H, W]` (float in [0, 1] or uint8) -> float64 `[T, H, W]` at the budget."""
        array = np.asarray(frames)
        x = array.astype(np.float64) / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)
        if not np.isfinite(x).all():
            raise InputError("the clip holds NaN or inf")
        return self._clip(x.reshape(x.shape[0], -1)).reshape(x.shape)


def clip_stats(frames: np.ndarray) -> tuple[float, float]:
    """`(mean, rms)` of a clip in units of the full range (uint8 or float in [0, 1])."""
    array = np.asarray(frames)
    x = array.astype(np.float64) / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)
    return float(x.mean()), float(x.std())

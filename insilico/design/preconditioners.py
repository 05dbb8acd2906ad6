"""Gradient preconditioners: reshape the gradient before the optimiser step.

A raw pixel gradient through a ViT is full of patch-grid and pixel-scale structure the
retina cannot see; smoothing it (sinzlab/mei's blurred gradient) or down-weighting its high
spatial frequencies (Lucid's decorrelated, 1/f parameterisation) steers the design towards
structure at the scale of receptive fields. Each preconditioner is a callable
`(grad [B, T, H, W], step, n_steps) -> [B, T, H, W]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from insilico.design.settings import PRECONDITIONERS
from stimuli.errors import InputError


def gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """1-D normalised Gaussian `[2r + 1]`, radius `r = ceil(3 sigma)`."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(frames: Tensor, sigma: float) -> Tensor:
    """Separable spatial Gaussian blur of `[B, T, H, W]` (reflect padding; sigma in pixels)."""
    if sigma <= 0:
        return frames
    b, t, h, w = frames.shape
    k = gaussian_kernel(sigma, frames.device, frames.dtype)
    r = (k.numel() - 1) // 2
    x = frames.reshape(b * t, 1, h, w)
    # Reflect padding needs the pad smaller than the side; replicate covers tiny screens.
    mode = "reflect" if r < min(h, w) else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x.reshape(b, t, h, w)


@dataclass(frozen=True)
class GaussianBlur:
    """Blur the gradient with a sigma annealed geometrically from `sigma_start` to `sigma_end`.

    Early steps shape the coarse layout; late steps, with a smaller sigma, refine details.
    """

    sigma_start: float = 3.0
    sigma_end: float = 1.0

    def __post_init__(self) -> None:
        if self.sigma_start < 0 or self.sigma_end < 0:
            raise InputError(f"blur sigmas must be >= 0, got {self.sigma_start}, {self.sigma_end}")

    def sigma(self, step: int, n_steps: int) -> float:
        if n_steps <= 1 or self.sigma_start == 0 or self.sigma_end == 0:
            return self.sigma_start if step == 0 or n_steps <= 1 else self.sigma_end
        frac = step / (n_steps - 1)
        return self.sigma_start * (self.sigma_end / self.sigma_start) ** frac

    def __call__(self, grad: Tensor, step: int, n_steps: int) -> Tensor:
        return blur(grad, self.sigma(step, n_steps))


@dataclass(frozen=True)
class FourierScaling:
    """Scale each spatial frequency of the gradient by `(f_min / max(f, f_min)) ** decay`.

    `f` is the radial spatial frequency in cycles per pixel and `f_min = 1 / max(H, W)`, so
    the mean and the coarsest structure keep their weight and finer structure is damped as
    `1/f^decay` (Lucid uses `decay = 1`).
    """

    decay: float = 1.0

    def __call__(self, grad: Tensor, step: int, n_steps: int) -> Tensor:
        h, w = grad.shape[-2:]
        fy = torch.fft.fftfreq(h, device=grad.device, dtype=grad.dtype)[:, None]
        fx = torch.fft.rfftfreq(w, device=grad.device, dtype=grad.dtype)[None, :]
        f_min = 1.0 / max(h, w)
        scale = (f_min / torch.sqrt(fy**2 + fx**2).clamp_min(f_min)) ** self.decay
        return torch.fft.irfft2(torch.fft.rfft2(grad) * scale, s=(h, w))


@dataclass(frozen=True)
class NoPreconditioner:
    def __call__(self, grad: Tensor, step: int, n_steps: int) -> Tensor:
        return grad


def unit_rms(grad: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale each stimulus's gradient `[B, ...]` to RMS 1, so a learning rate is a pixel step."""
    rms = grad.pow(2).mean(dim=tuple(range(1, grad.ndim)), keepdim=True).sqrt()
    return grad / (rms + eps)




def named_preconditioner(name: str, sigma_start: float = 3.0, sigma_end: float = 1.0):
    if name == "blur":
        return GaussianBlur(sigma_start, sigma_end)
    if name == "fourier":
        return FourierScaling()
    if name == "none":
        return NoPreconditioner()
    raise InputError(f"preconditioner must be one of {', '.join(PRECONDITIONERS)}, got {name!r}")

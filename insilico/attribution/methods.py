"""Captum's attribution methods, wrapped: one call per clip for a batch of cells.

Every method is Captum's own `method.attribute(inputs, target=..., baselines=...)`; this module
only chooses its arguments and checks Integrated Gradients' completeness
(attributions sum to f(x) - f(baseline)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from torch import Tensor, nn

from insilico.attribution.config import AttributionConfig
from stimuli.errors import InputError


@dataclass(frozen=True, eq=False)
class ClipAttribution:
    """Attributions of several cells' responses to one clip.

    Attributes:
        attributions: `[n, L, H, W]`, one map per target cell.
        response: `[n]` f(x), the response attributed.
        baseline_response: `[n]` f(baseline) (NaN for methods without a baseline).
        gap: `[n]` sum(attributions) - (f(x) - f(baseline)) (IG only, else NaN): Captum's
            convergence delta, from the two forward passes made here for the report anyway.
    """

    attributions: np.ndarray
    response: np.ndarray
    baseline_response: np.ndarray
    gap: np.ndarray


def attribute_clip(forward: nn.Module, frames: Tensor, targets: list[int], grey: float,
                   config: AttributionConfig) -> ClipAttribution:
    """Attribute the responses of cells `targets` (indices of `forward`'s output) to `frames`.

    Args:
        forward: `frames [B, L, H, W] -> responses [B, N]`.
        frames: `[L, H, W]` float in [0, 1], one clip.
        grey: the baseline's uniform luminance (the movie's mean grey).
    """
    if frames.ndim != 3:
        raise InputError(f"frames must be one clip [L, H, W], got {tuple(frames.shape)}")
    n = len(targets)
    inputs = frames[None].expand(n, *frames.shape).contiguous()
    baseline = torch.full_like(inputs, float(grey))
    target = torch.as_tensor(targets, dtype=torch.long, device=frames.device)
    nan = np.full(n, np.nan)
    if config.method == "ig":
        with torch.no_grad():
            # f(x) and f(baseline) in one pass: the clip is the same for every target.
            both = forward(torch.cat([inputs[:1], baseline[:1]]))[:, target]
        response, base = both[0], both[1]
        attr = _integrated_gradients(forward, inputs, baseline, target, config)
        gap = attr.flatten(1).double().sum(1) - (response - base).double()
        return ClipAttribution(_np(attr), _np(response), _np(base), _np(gap))
    with torch.no_grad():
        response = forward(inputs[:1])[0, target]
    if config.method == "saliency":
        attr = _saliency(forward, inputs, target, config)
    else:
        attr = _occlusion(forward, inputs, baseline, target, config)
    return ClipAttribution(_np(attr), _np(response), nan, nan)


def _integrated_gradients(forward: nn.Module, inputs: Tensor, baseline: Tensor, target: Tensor,
                          config: AttributionConfig) -> Tensor:
    ig = IntegratedGradients(forward)
    if config.noise_tunnel:
        attr = NoiseTunnel(ig).attribute(
            inputs, nt_type="smoothgrad", nt_samples=config.nt_samples, stdevs=config.nt_stdev,
            nt_samples_batch_size=1, baselines=baseline, target=target, n_steps=config.ig_steps,
            internal_batch_size=config.batch_size)
        return attr.detach()
    attr = ig.attribute(inputs, baselines=baseline, target=target, n_steps=config.ig_steps,
                        method="gausslegendre", internal_batch_size=config.batch_size)
    return attr.detach()


def _saliency(forward: nn.Module, inputs: Tensor, target: Tensor, config: AttributionConfig) -> Tensor:
    saliency = Saliency(forward)
    inputs = inputs.detach().clone().requires_grad_(True)
    out = []
    # Signed gradients: the sign says whether brightening a pixel raises the response.
    for lo in range(0, len(inputs), config.batch_size):
        x, t = inputs[lo:lo + config.batch_size], target[lo:lo + config.batch_size]
        if config.noise_tunnel:
            attr = NoiseTunnel(saliency).attribute(x, nt_type="smoothgrad", nt_samples=config.nt_samples,
                                                   stdevs=config.nt_stdev, target=t, abs=False)
        else:
            attr = saliency.attribute(x, target=t, abs=False)
        out.append(attr.detach())
    return torch.cat(out)


def _occlusion(forward: nn.Module, inputs: Tensor, baseline: Tensor, target: Tensor,
               config: AttributionConfig) -> Tensor:
    _, length, h, w = inputs.shape
    patch = (min(config.occlusion_frames, length), min(config.occlusion_pixels, h), min(config.occlusion_pixels, w))
    # One clip with no target: Captum attributes every output (cell) from the same occluded
    # forward passes, so the passes are shared by all cells instead of repeated per cell.
    attr = Occlusion(forward).attribute(inputs[:1], sliding_window_shapes=patch, strides=patch,
                                        baselines=baseline[:1], target=None,
                                        perturbations_per_eval=config.batch_size)
    return attr.detach()[target]


def _np(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()

"""The twin's attribution map of a cell over its best natural clips: where and when it looks.

A design needs a prior: where on the screen and when before the response window the cell
integrates. The white-noise STA gives one only where the recording has white noise, and
only for cells whose linear part does not cancel (an ON-OFF cell's ON and OFF halves average
out). The twin itself gives one for every cell: Captum's attribution of the cell's objective
to the pixels of the clips that drive it best (the natural clips the design ranks anyway).

For each clip k the attribution is a signed map `S_k [T, H, W]`:

* "saliency": Captum's `Saliency` (the input gradient, signed), one backward pass per clip;
* "ig": Captum's `IntegratedGradients` from mean grey, times the sign of the clip's contrast,
  `sign(x - grey) * IG = |x - grey| * mean path gradient`: the gradient's sign (which way
  a pixel should move) weighted by where the clip had contrast. Captum's completeness
  (attributions sum to f(x) - f(grey)) is checked and reported.

Two summaries, each denoised by its leading space-time SVD term (`[T, pixels]`):

* `direction`: the leading direction of the stack `[K, T*H*W]` of signed maps, oriented so
  that the clips agree with it (for an ON-OFF cell whose clips split into ON and OFF ones,
  one polarity, not their cancelling mean), then rank-1 in space-time: the start of the
  gradient design (`start = "attribution"`), the STA's role without white noise;
* `spatial`, `temporal`: the rank-1 fit of the mean |S_k|, non-negative: where the envelope
  and the parametric search's focus go (`envelope_source`).

For a linear cell with filter w every S_k of "saliency" is w, so the direction is w and the
spatial map |w|'s space part: the design starts where and when the filter is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients, Saliency
from torch import Tensor, nn

from insilico.design.envelope import MIN_RF_PEAK_SNR, rf_peak_snr
from insilico.design.objectives import Objective
from insilico.design.postprocess import ContrastBudget
from insilico.design.sta_start import rank_one
from stimuli.errors import InputError
from stimuli.recording.rf_geometry import rf_centre_and_size

GREY = 0.5
CLIPS_PER_PASS = 4


class _ObjectiveOfClip(nn.Module):
    """`frames [B, T, H, W] -> objective [B]`: what Captum attributes."""

    def __init__(self, response: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.response = response
        self.objective = objective

    def forward(self, frames: Tensor) -> Tensor:
        return self.objective(self.response(frames))


@dataclass(frozen=True, eq=False)
class AttributionPrior:
    """A cell's attribution map over its best natural clips (see module doc).

    Attributes:
        direction: `[T, H, W]` signed, rank-1 and blurred, unit RMS: the twin's "more of this".
        spatial: `[H, W]` >= 0, peak 1: where the cell looks.
        temporal: `[T]` >= 0, peak 1: when (clip frames).
        method: "saliency" or "ig".
        n_clips: clips attributed.
        agreement: the fraction of the clips' signed-map energy along `direction`'s
            (un-denoised) leading component: 1 when every clip says the same.
        completeness_gap: "ig": the largest |sum(attributions) - (f(x) - f(grey))| over the
            clips relative to |f(x) - f(grey)| (Captum's convergence delta); else None.
    """

    direction: np.ndarray
    spatial: np.ndarray
    temporal: np.ndarray
    method: str
    n_clips: int
    agreement: float
    completeness_gap: float | None

    @property
    def peak_snr(self) -> float:
        return rf_peak_snr(self.spatial)

    @property
    def locates_cell(self) -> bool:
        """Whether the spatial map has a peak above its noise (`envelope.MIN_RF_PEAK_SNR`)."""
        return self.peak_snr >= MIN_RF_PEAK_SNR

    def to_json(self) -> dict[str, object]:
        (cy, cx), sigma = rf_centre_and_size(self.spatial)
        return {"method": self.method, "clips": self.n_clips, "centre_yx": [round(cy, 2), round(cx, 2)],
                "sigma_px": round(sigma, 2), "peak_frame": int(np.argmax(self.temporal)),
                "peak_snr": round(self.peak_snr, 2), "locates_cell": self.locates_cell,
                "agreement": round(self.agreement, 3),
                "completeness_gap": None if self.completeness_gap is None else round(self.completeness_gap, 4)}


def attribution_prior(response: nn.Module, objective: Objective, clips: np.ndarray, method: str = "saliency",
                      ig_steps: int = 8) -> AttributionPrior:
    """The prior of the cell `objective` reads, from clips `[K, T, H, W]` (uint8 or float in [0, 1]).

    `response`: `frames [B, T, H, W] -> rates [B, T, N]`, differentiable (`TwinResponse`).
    """
    x = torch.as_tensor(np.asarray(clips))
    x = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
    if x.ndim != 4 or not len(x):
        raise InputError(f"clips must be [K, T, H, W] with K >= 1, got {list(x.shape)}")
    x = x.to(_device(response))
    forward = _ObjectiveOfClip(response, objective)
    gap = None
    if method == "saliency":
        saliency = Saliency(forward)
        # A few clips per backward pass: a batch of all of them holds every activation at once.
        signed = torch.cat([saliency.attribute(x[i:i + CLIPS_PER_PASS].clone().requires_grad_(True), abs=False)
                            .detach() for i in range(0, len(x), CLIPS_PER_PASS)])
    elif method == "ig":
        ig, parts, gaps = IntegratedGradients(forward), [], []
        for lo in range(0, len(x), CLIPS_PER_PASS):
            clip = x[lo:lo + CLIPS_PER_PASS]
            grey = torch.full_like(clip, GREY)
            attr, delta = ig.attribute(clip, baselines=grey, n_steps=ig_steps, method="gausslegendre",
                                       internal_batch_size=len(clip), return_convergence_delta=True)
            with torch.no_grad():
                change = (forward(clip) - forward(grey)).abs().clamp_min(1e-12)
            gaps.append(float((delta.detach().abs() / change).max()))
            parts.append(attr.detach() * torch.sign(clip - GREY))
        signed, gap = torch.cat(parts), max(gaps)
    else:
        raise InputError(f"unknown attribution method {method!r}: use saliency or ig")
    maps = signed.double().cpu().numpy()                    # [K, T, H, W]
    k, t, h, w = maps.shape
    flat = maps.reshape(k, -1)
    _, sv, vt = np.linalg.svd(flat, full_matrices=False)
    lead = vt[0] if float((flat @ vt[0]).sum()) >= 0 else -vt[0]
    agreement = float(sv[0] ** 2 / max(float((sv ** 2).sum()), 1e-300))
    direction = rank_one(lead.reshape(t, h, w))
    direction = direction / max(float(np.sqrt((direction ** 2).mean())), 1e-300)
    energy = np.abs(maps).mean(axis=0).reshape(t, h * w)
    u, _, vt_e = np.linalg.svd(energy, full_matrices=False)
    temporal, spatial = np.abs(u[:, 0]), np.abs(vt_e[0]).reshape(h, w)
    return AttributionPrior(
        direction=direction.astype(np.float32),
        spatial=(spatial / max(float(spatial.max()), 1e-300)).astype(np.float32),
        temporal=(temporal / max(float(temporal.max()), 1e-300)).astype(np.float32),
        method=method, n_clips=k, agreement=agreement, completeness_gap=gap)


def attribution_start(prior: AttributionPrior, response: nn.Module, objective: Objective,
                      budget: ContrastBudget) -> np.ndarray:
    """The start `[T, H, W]` in [0, 1]: grey plus the prior's direction or its negative,
    whichever the twin rates higher at the budget (the direction's sign is the clips'
    majority; an ON-OFF cell may be driven harder by the other polarity)."""
    both = torch.from_numpy(np.stack([GREY + prior.direction, GREY - prior.direction]).astype(np.float32))
    both = budget(both)
    with torch.no_grad():
        values = objective(response(both.to(_device(response)))).cpu().numpy()
    return both[int(np.argmax(values))].cpu().numpy().astype(np.float32)


def _device(module: nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")

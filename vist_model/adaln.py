"""3D AdaLN-Zero: receptive-field conditioning of the TCN output.

Our reading of the public Vi-ST code (`AdaLN_Zero3D`), tensors `[B, N, T, h, w]`
with N the number of cells (the TCN's output channels):

    shift, scale, gate = Conv1x1x1(SiLU(c)).chunk(3)     # each [., N, ., h, w]
    out = x + gate * f(x * (1 + scale) + shift)
    f   = Conv1x1x1(SiLU(.))                             # N -> N

Points worth stating because the name suggests otherwise:

* There is no LayerNorm before the modulation: x is modulated directly
  (the public `modulate(x, shift, scale)` takes x as is).
* f is "SiLU then a 1x1x1 conv" (N -> N), its weight drawn from N(0, 0.02),
  bias 0.
* The modulation conv (N -> 3N) is zero-initialised, weight and bias, so
  gate = 0 and the block is exactly the identity at initialisation ("Zero").
* The conditioning c has N channels. In the published model every channel is
  the same map, the sum of all cells' receptive fields on the feature grid
  (`rf_mask.sum(1)` repeated N times), i.e. mode "sum". Mode "per_cell" feeds
  each cell's own RF map as its channel, letting the modulation of cell k's
  channel depend on where cell k (and, through the 1x1x1 channel mixing, the
  other cells) look. Both modes have the same parameters.
* c is constant in time and across the batch, so the modulation is computed
  once on `[1, N, 1, h, w]` and broadcast; this equals the public code's
  repetition over B and T because the conv is 1x1x1.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from stimuli.errors import InputError

__all__ = ["AdaLNZero3D", "RFConditioning", "rf_conditioning_maps"]

RFConditioning = Literal["sum", "per_cell"]


def rf_conditioning_maps(rf_maps: Tensor, mode: RFConditioning, channels: int | None = None) -> Tensor:
    """Conditioning input for AdaLN-Zero from cells' RF maps on the feature grid.

    Args:
        rf_maps: `[N, h, w]`, one map per cell.
        mode: "sum" (published: every channel is the sum over cells) or
            "per_cell" (channel k is cell k's map).
        channels: channels of the summed map (default N, as published); ignored for "per_cell".

    Returns:
        `[1, N, 1, h, w]` (`[1, channels, 1, h, w]` for "sum"), broadcast later.
    """
    if rf_maps.ndim != 3:
        raise InputError(f"rf_maps must be [N, h, w], got shape {tuple(rf_maps.shape)}")
    if mode == "sum":
        n = rf_maps.shape[0] if channels is None else channels
        cond = rf_maps.sum(dim=0, keepdim=True).expand(n, -1, -1)
    elif mode == "per_cell":
        cond = rf_maps
    else:
        raise InputError(f"rf conditioning mode must be 'sum' or 'per_cell', got {mode!r}")
    return cond.unsqueeze(0).unsqueeze(2)


class AdaLNZero3D(nn.Module):
    """Adaptive modulation with a zero-initialised gate (starts as the identity).

    Args:
        channels: M, channels of x (N in the published model).
        cond_channels: channels of the conditioning c (default: M).

    Shapes: `forward(x [B, M, T, h, w], c [B|1, Mc, T|1, h, w]) -> [B, M, T, h, w]`.
    """

    def __init__(self, channels: int, cond_channels: int | None = None) -> None:
        super().__init__()
        cond_channels = channels if cond_channels is None else cond_channels
        if min(channels, cond_channels) < 1:
            raise InputError(f"channels must be >= 1, got {channels}, {cond_channels}")
        self.channels = channels
        self.cond_channels = cond_channels
        self.modulation = nn.Sequential(nn.SiLU(), nn.Conv3d(cond_channels, 3 * channels, 1))
        self.net = nn.Sequential(nn.SiLU(), nn.Conv3d(channels, channels, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)
        nn.init.normal_(self.net[1].weight, 0.0, 0.02)
        nn.init.zeros_(self.net[1].bias)

    def modulation_params(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(shift, scale, gate)`, each shaped like c."""
        if c.ndim != 5 or c.shape[1] != self.cond_channels:
            raise InputError(
                f"conditioning must be [B, {self.cond_channels}, T, h, w], got {tuple(c.shape)}"
            )
        shift, scale, gate = self.modulation(c).chunk(3, dim=1)
        return shift, scale, gate

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.modulation_params(c)
        return x + gate * self.net(torch.addcmul(shift, x, 1 + scale))

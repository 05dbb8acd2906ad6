"""Baseline retina models on raw frames: LN and the CNN of McIntosh et al. (2016).

Both map frames `[B, T, H, W]` in [0, 1] to rates `[B, T, N]` causally: the
rate at frame t reads frames t - n_lags + 1 .. t only. Frames are first
area-averaged to `resolution x resolution` and centred on grey
(`x - 0.5`); history before the first frame is grey (0.5), i.e. zero after
centring. Outputs go through softplus, so rates are > 0 and suit `PoissonLoss`.
Weight decay (the L2 penalties of McIntosh et al.) is left to the optimiser.

* `LNModel`: one spatiotemporal linear filter per cell over the whole
  downsampled screen (`n_lags x resolution x resolution` weights + bias),
  then a scaled softplus (`scale * softplus(drive)`). Defaults for a 64 x 64 screen:
  16 x 16 pixels, 20 frames. `vist_model.ln_fit.fit_ln` fits it as labs do (ridge
  filter, then the nonlinearity by Poisson likelihood).
* `McIntoshCNN`: a stack of the past `n_lags` frames as input channels ->
  conv (8 maps, 9 x 9) -> ReLU -> conv (8 maps, 7 x 7) -> ReLU -> dense to N
  -> softplus. McIntosh et al. used 40 frames of 50 x 50 px with 15 x 15 and
  11 x 11 kernels; we keep 40 frames and scale the kernels to a 32 x 32 input
  (a 64 x 64 screen pooled by 2). The first layer is written as a Conv3d with
  temporal kernel `n_lags` over a left-padded movie, which is the same as a
  Conv2d over a `n_lags`-frame channel stack at every t without building it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stimuli.errors import InputError

__all__ = ["CNNConfig", "LNConfig", "LNModel", "McIntoshCNN", "lagged_inputs"]

GREY = 0.5


def _prepare(frames: Tensor, resolution: int, n_lags: int, dtype: torch.dtype) -> Tensor:
    """`[B, T, H, W]` in [0, 1] -> centred, downsampled, left-padded `[B, 1, T + n_lags - 1, r, r]`."""
    if frames.ndim != 4:
        raise InputError(f"frames must be [B, T, H, W], got shape {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise InputError(f"frames must be float in [0, 1], got dtype {frames.dtype}")
    b, t, h, w = frames.shape
    x = frames.to(dtype).reshape(b * t, 1, h, w)
    if (h, w) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="area")
    x = (x - GREY).reshape(b, 1, t, resolution, resolution)
    # Grey history: zeros after centring, on the left (past) side only.
    return F.pad(x, (0, 0, 0, 0, n_lags - 1, 0))


def lagged_inputs(frames: Tensor, resolution: int, n_lags: int) -> Tensor:
    """`[B, T, H, W]` -> `[B, T, n_lags * r * r]`: at each t the centred, downsampled frames
    t - n_lags + 1 .. t (oldest first), in the order of `LNModel`'s filter weights."""
    x = _prepare(frames, resolution, n_lags, frames.dtype)[:, 0]  # [B, T + L - 1, r, r]
    windows = x.unfold(1, n_lags, 1)  # [B, T, r, r, L]
    b, t = windows.shape[:2]
    return windows.permute(0, 1, 4, 2, 3).reshape(b, t, -1)


@dataclass(frozen=True)
class LNConfig:
    """LN model size. `resolution`: downsampled screen side; `n_lags`: frames of history."""

    n_cells: int
    resolution: int = 16
    n_lags: int = 20

    def __post_init__(self) -> None:
        if min(self.n_cells, self.resolution, self.n_lags) < 1:
            raise InputError(f"LNConfig fields must be >= 1, got {self}")


class LNModel(nn.Module):
    """Linear-nonlinear model, one filter per cell. `[B, T, H, W] -> [B, T, N]`."""

    def __init__(self, config: LNConfig) -> None:
        super().__init__()
        self.config = config
        r = config.resolution
        self.filters = nn.Conv3d(1, config.n_cells, (config.n_lags, r, r))
        # Small filters: the initial rates sit near softplus(bias) for any movie.
        nn.init.normal_(self.filters.weight, 0.0, 0.01 / (config.n_lags * r * r) ** 0.5)
        nn.init.zeros_(self.filters.bias)
        # The output nonlinearity's amplitude per cell: `fit_ln` fits it, gradient training leaves it 1.
        self.register_buffer("scale", torch.ones(config.n_cells))

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        # LN twins saved before the output scale existed had a plain softplus: scale 1.
        state_dict.setdefault(prefix + "scale", torch.ones(self.config.n_cells))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def receptive_field(self) -> int:
        return self.config.n_lags

    def forward(self, frames: Tensor) -> Tensor:
        cfg = self.config
        x = _prepare(frames, cfg.resolution, cfg.n_lags, self.filters.weight.dtype)
        drive = self.filters(x)  # [B, N, T, 1, 1]
        return self.scale * F.softplus(drive.flatten(2).transpose(1, 2))


@dataclass(frozen=True)
class CNNConfig:
    """McIntosh et al. (2016) CNN size, scaled for a 64 x 64 screen pooled to 32 x 32."""

    n_cells: int
    resolution: int = 32
    n_lags: int = 40
    channels: tuple[int, int] = (8, 8)
    kernels: tuple[int, int] = (9, 7)

    def __post_init__(self) -> None:
        if min(self.n_cells, self.resolution, self.n_lags, *self.channels, *self.kernels) < 1:
            raise InputError(f"CNNConfig fields must be >= 1, got {self}")
        if self.feature_side < 1:
            raise InputError(
                f"kernels {self.kernels} are too large for a {self.resolution} px input"
            )

    @property
    def feature_side(self) -> int:
        """Spatial side after the two valid convolutions."""
        return self.resolution - (self.kernels[0] - 1) - (self.kernels[1] - 1)


class McIntoshCNN(nn.Module):
    """Two-layer CNN over the past `n_lags` frames + dense readout. `[B, T, H, W] -> [B, T, N]`."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        (c1, c2), (k1, k2) = config.channels, config.kernels
        self.conv1 = nn.Conv3d(1, c1, (config.n_lags, k1, k1))
        self.conv2 = nn.Conv3d(c1, c2, (1, k2, k2))
        side = config.feature_side
        self.dense = nn.Linear(c2 * side * side, config.n_cells)

    @property
    def receptive_field(self) -> int:
        return self.config.n_lags

    def forward(self, frames: Tensor) -> Tensor:
        cfg = self.config
        x = _prepare(frames, cfg.resolution, cfg.n_lags, self.conv1.weight.dtype)
        x = F.relu(self.conv1(x))  # [B, c1, T, r', r']
        x = F.relu(self.conv2(x))  # [B, c2, T, s, s]
        b, c, t, s, _ = x.shape
        flat = x.permute(0, 2, 1, 3, 4).reshape(b, t, c * s * s)
        return F.softplus(self.dense(flat))

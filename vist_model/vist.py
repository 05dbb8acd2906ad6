"""Vi-ST: the retina twin on top of frozen backbone features.

Data flow (Wu et al., ECCV 2024, Fig. 2 and the public code's `ViST.forward`):

    features [B, T, C, 16, 16]                       (backbone patch tokens)
      -> permute to [B, C, T, 16, 16]
      -> C3TCN          C -> width -> N              [B, N, T, 16, 16]
      -> AdaLN-Zero     conditioned on the cells' RF maps on the grid
      -> 4 CMST blocks  16 -> 14 -> 12 -> 10 -> 8    [B, N, T, 8, 8]
      -> flatten (N, 8, 8) per time step -> Linear   [B, T, N]

With `linear_maps` L > 0 (not published), the readout also reads L maps taken straight from
the features by causal temporal filters (`linear_lags` frames, no nonlinearity), beside the
core's M maps: a cell's readout can then be an LN model of the features at its RF, which the
deep maps need not rebuild.

Every stage is causal in time, so the rate at frame t depends on frames
<= t only; the temporal receptive field is TCN (127) + CMST (56) = 183 frames (the current one included)
for the published configuration. The published output is not forced to be >= 0 (the loss
penalises negative rates, as in the paper); `predict()` clamps at 0. `output="softplus"` (the
`cpu` preset) makes rates positive by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stimuli.errors import InputError
from vist_model.adaln import AdaLNZero3D, rf_conditioning_maps
from vist_model.backbone import Backbone
from vist_model.causal import CausalConv3d
from vist_model.cmst import CMST, PUBLISHED_KERNEL_SETS
from vist_model.readout import DoGReadout, FactorizedReadout, Readout, grid_centres
from vist_model.tcn import C3TCN

__all__ = ["MASKED_READOUTS", "OUTPUTS", "READOUTS", "VIST_PRESETS", "LinearMaps", "TwinWithBackbone", "ViST", "ViSTConfig", "vist_config"]

READOUTS = ("dense", "factorized", "dog")
MASKED_READOUTS = ("factorized", "dog")
"""The readouts with a spatial mask per cell, placed where the cell is."""
OUTPUTS = ("linear", "softplus")


@dataclass(frozen=True)
class ViSTConfig:
    """Architecture of a Vi-ST model.

    Attributes:
        n_cells: N, recorded cells (the TCN's output channels).
        in_channels: C, backbone feature channels (1024 for DINOv2-large).
        grid: feature grid side; CMST shrinks it by 2 per block (16 -> 8).
        tcn_width: hidden channels of the TCN (256 published).
        tcn_layers: TCN residual layers, dilations 1, 2, ..., 2**(layers-1).
        tcn_kernel_t: temporal kernel of the TCN's depthwise convs.
        dropout: TCN dropout and CMST Dropout3d rate.
        rf_conditioning: "sum" (published) or "per_cell", see `vist_model.adaln`.
        cmst_kernel_sets: temporal kernels of each CMST block.
        leaky_slope: negative slope of the CMST LeakyReLUs.
        map_channels: M, maps carried from the TCN through AdaLN and CMST to the readout.
            None means one map per cell (M = N), as published; the `cpu` preset sets a small
            fixed M so that the CMST cost (grouped long temporal convolutions, slow on CPUs)
            does not grow with the number of cells.
        readout: "dense" (published: one Linear over every map and position), "factorized"
            (a spatial mask and map weights per cell, masks starting at the cells' RF centres) or
            "dog" (factorized, each mask a difference of Gaussians); see `vist_model.readout`.
        cmst_padding: "valid" (published: each CMST block trims a position per side, 16 -> 8) or
            "same" (the maps are zero-padded by one position per block first, so the readout grid
            is the feature grid and covers the whole screen). With "valid" the readout's centres
            span only the middle half of the screen: a cell near the edge is read from a position
            up to a quarter of the screen away from its receptive field.
        spatial_kernel: spatial side of the TCN's and the CMST blocks' convolutions (3 published).
            Every 3 x 3 layer widens what one grid position sees by one position per side; the
            published stack (6 TCN layers, 4 CMST blocks) lets each position read the whole
            16 x 16 grid. 1 keeps the layers to time and channels, so a position sees only its own
            patch and each cell's locality is left to its readout mask.
        output: "linear" (published: the readout's value is the rate; the loss penalises negative
            rates) or "softplus" (rates are softplus of the readout, > 0 and expansive like a
            spiking nonlinearity, so strong stimuli can be predicted above the training range;
            trained on the Poisson likelihood, see `vist_model.fit_twin.loss_for`).
        linear_maps: L, maps the readout reads from the features through causal linear temporal
            filters (`LinearMaps`), beside the core's M; 0 (published) reads the core alone.
        linear_lags: frames of history of those filters (the current one included).
    """

    n_cells: int
    in_channels: int
    grid: int = 16
    tcn_width: int = 256
    tcn_layers: int = 6
    tcn_kernel_t: int = 3
    dropout: float = 0.25
    rf_conditioning: Literal["sum", "per_cell"] = "sum"
    cmst_kernel_sets: tuple[tuple[int, ...], ...] = PUBLISHED_KERNEL_SETS
    leaky_slope: float = 0.1
    map_channels: int | None = None
    readout: Literal["dense", "factorized", "dog"] = "dense"
    cmst_padding: Literal["valid", "same"] = "valid"
    spatial_kernel: int = 3
    output: Literal["linear", "softplus"] = "linear"
    linear_maps: int = 0
    linear_lags: int = 30

    def __post_init__(self) -> None:
        if self.n_cells < 1 or self.in_channels < 1:
            raise InputError(
                f"n_cells and in_channels must be >= 1, got {self.n_cells}, {self.in_channels}"
            )
        if self.spatial_kernel < 1 or self.spatial_kernel % 2 == 0:
            raise InputError(f"spatial_kernel must be an odd number >= 1, got {self.spatial_kernel}")
        if self.readout_grid < 1:
            raise InputError(
                f"grid {self.grid} is too small for {len(self.cmst_kernel_sets)} CMST blocks "
                f"with spatial kernel {self.spatial_kernel} (each block trims {self.spatial_kernel // 2} "
                f"position(s) per side)"
            )
        if self.map_channels is not None and self.map_channels < 1:
            raise InputError(f"map_channels must be >= 1 or None, got {self.map_channels}")
        if self.linear_maps < 0 or self.linear_lags < 1:
            raise InputError(f"linear_maps must be >= 0 and linear_lags >= 1, got {self.linear_maps}, "
                             f"{self.linear_lags}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rf_conditioning not in ("sum", "per_cell"):
            raise InputError(
                f"rf_conditioning must be 'sum' or 'per_cell', got {self.rf_conditioning!r}"
            )
        if self.cmst_padding not in ("valid", "same"):
            raise InputError(f"cmst_padding must be 'valid' or 'same', got {self.cmst_padding!r}")
        if self.output not in OUTPUTS:
            raise InputError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.readout not in READOUTS:
            raise InputError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")

    @property
    def maps(self) -> int:
        """M: channels between the TCN and the readout."""
        return self.n_cells if self.map_channels is None else self.map_channels

    @property
    def readout_maps(self) -> int:
        """M + L: the maps the readout reads (the core's, then the linear ones)."""
        return self.maps + self.linear_maps

    @property
    def cmst_trim(self) -> int:
        """Grid positions one side loses through the CMST blocks with valid padding (4 published)."""
        return len(self.cmst_kernel_sets) * (self.spatial_kernel // 2)

    @property
    def readout_grid(self) -> int:
        """Spatial side after the CMST blocks (8 for the published model)."""
        return self.grid - (0 if self.cmst_padding == "same" else 2 * self.cmst_trim)

    @property
    def receptive_field(self) -> int:
        """Frames of history that reach one output frame, the current frame included."""
        tcn = 1 + (self.tcn_kernel_t - 1) * (2**self.tcn_layers - 1)
        cmst = sum(max(ks) - 1 for ks in self.cmst_kernel_sets)
        return max(tcn + cmst, self.linear_lags if self.linear_maps else 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_cells": self.n_cells,
            "in_channels": self.in_channels,
            "grid": self.grid,
            "tcn_width": self.tcn_width,
            "tcn_layers": self.tcn_layers,
            "tcn_kernel_t": self.tcn_kernel_t,
            "dropout": self.dropout,
            "rf_conditioning": self.rf_conditioning,
            "cmst_kernel_sets": [list(ks) for ks in self.cmst_kernel_sets],
            "leaky_slope": self.leaky_slope,
            "map_channels": self.map_channels,
            "readout": self.readout,
            "cmst_padding": self.cmst_padding,
            "spatial_kernel": self.spatial_kernel,
            "output": self.output,
            "linear_maps": self.linear_maps,
            "linear_lags": self.linear_lags,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViSTConfig:
        fields = dict(data)
        if "cmst_kernel_sets" in fields:
            fields["cmst_kernel_sets"] = tuple(tuple(int(k) for k in ks) for ks in fields["cmst_kernel_sets"])
        return cls(**fields)


# Preset overrides on top of the defaults (which are the published model).
VIST_PRESETS: dict[str, dict[str, Any]] = {
    # Wu et al. 2024: TCN width 256, 6 layers, published CMST kernels.
    "vist": {},
    # Two-core CPU training. PyTorch's CPU kernels for grouped (depthwise) 3D
    # convolutions are slow, the backward pass most, and they are what the TCN
    # and CMST are made of; so: a narrow TCN with 4 layers (31-frame TCN
    # receptive field, 87 frames = 2.9 s at 30 Hz overall, ample for retinal
    # filters of ~0.5 s) and 8 maps through AdaLN and CMST instead of one per
    # cell, so the cost no longer grows with N. Published CMST kernels. A
    # factorized readout with difference-of-Gaussians masks on a "same"-padded
    # grid (each cell reads near its receptive field, anywhere on the screen; a
    # free mask's width and surround are what a movie constrains least,
    # docs/benchmarks.md, "A difference-of-Gaussians readout"), and a softplus output trained on
    # the Poisson likelihood, so that rates are positive, calibrated in the mean
    # and free to rise above the training range for strong stimuli
    # (docs/benchmarks.md, "The twin on a family of simulated retinas"). 8 linear maps beside the
    # core's 8: each cell's readout can be an LN model of the features at its RF, which the deep
    # maps learnt last, and worst, for ON cells (docs/benchmarks.md, "ON cells").
    "cpu": {"tcn_width": 32, "tcn_layers": 4, "map_channels": 8, "readout": "dog",
            "cmst_padding": "same", "output": "softplus", "linear_maps": 8},
}


def vist_config(preset: str, n_cells: int, in_channels: int, **overrides: Any) -> ViSTConfig:
    """A `ViSTConfig` from a preset name (`vist` or `cpu`) plus field overrides."""
    if preset not in VIST_PRESETS:
        raise InputError(f"unknown Vi-ST preset {preset!r}: use one of {sorted(VIST_PRESETS)}")
    base = ViSTConfig(n_cells=n_cells, in_channels=in_channels, **VIST_PRESETS[preset])
    return replace(base, **overrides) if overrides else base


class LinearMaps(nn.Module):
    """L maps linear in the features: `[B, C, T, g, g] -> [B, L, T, g, g]`, a causal conv over
    `lags` frames and the C channels at each position (no spatial extent, no nonlinearity)."""

    def __init__(self, in_channels: int, maps: int, lags: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(in_channels, maps, (lags, 1, 1))

    @property
    def receptive_field(self) -> int:
        return self.conv.receptive_field

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class ViST(nn.Module):
    """Vi-ST on precomputed backbone features.

    Args:
        config: architecture.
        rf_maps: `[N, grid, grid]` each cell's receptive field on the feature grid
            (kept as a buffer, saved in the state dict).

    `forward(features [B, T, C, grid, grid]) -> rates [B, T, N]` (unclamped).
    """

    def __init__(self, config: ViSTConfig, rf_maps: Tensor) -> None:
        super().__init__()
        n, g = config.n_cells, config.grid
        if tuple(rf_maps.shape) != (n, g, g):
            raise InputError(f"rf_maps must be [{n}, {g}, {g}], got {tuple(rf_maps.shape)}")
        if not torch.isfinite(rf_maps).all():
            raise InputError("rf_maps contain NaN or inf")
        self.config = config
        self.register_buffer("rf_maps", rf_maps.detach().to(torch.float32).clone())
        m = config.maps
        self.tcn = C3TCN(
            config.in_channels,
            m,
            width=config.tcn_width,
            num_layers=config.tcn_layers,
            dropout=config.dropout,
            kernel_t=config.tcn_kernel_t,
            kernel_s=config.spatial_kernel,
        )
        self.adaln = AdaLNZero3D(m, cond_channels=n if config.rf_conditioning == "per_cell" else m)
        self.cmst = CMST(
            m, config.cmst_kernel_sets, dropout=config.dropout, negative_slope=config.leaky_slope,
            kernel_s=config.spatial_kernel,
        )
        # Part of the core (`vist_model.multi.CORE_MODULES`); Identity, with no weights, when L = 0.
        self.linear = (LinearMaps(config.in_channels, config.linear_maps, config.linear_lags) if config.linear_maps
                       else nn.Identity())
        side = config.readout_grid
        if config.readout in MASKED_READOUTS:
            kind = FactorizedReadout if config.readout == "factorized" else DoGReadout
            self.readout = kind(n, side, side, config.readout_maps, self._readout_centres(self.rf_maps))
        else:
            self.readout = Readout(n, side, side, in_channels=config.readout_maps)

    def start_readout_at(self, maps: Tensor) -> None:
        """Restart a factorized or DoG readout's masks at the peaks of `maps` `[N, grid, grid]`
        (magnitudes on the feature grid, as `rf_to_grid` makes them): where the cells are when
        `rf_maps` cannot say (`vist_model.receptive_fields.cell_locations`). A dense readout has
        no masks to place."""
        if self.config.readout in MASKED_READOUTS:
            self.readout.start_at(self._readout_centres(maps))

    def _readout_centres(self, maps: Tensor) -> Tensor:
        """`[N, 2]` the readout-grid positions of the centres of `maps` `[N, grid, grid]`."""
        return grid_centres(maps, margin=(self.config.grid - self.config.readout_grid) // 2)

    @property
    def receptive_field(self) -> int:
        deep = self.tcn.receptive_field + self.cmst.receptive_field - 1
        return max(deep, self.linear.receptive_field) if self.config.linear_maps else deep

    def stimulus_shape(self, n_frames: int) -> tuple[int, int, int, int]:
        """Input shape of one sample: `(T, C, grid, grid)`."""
        if n_frames < 1:
            raise InputError(f"n_frames must be >= 1, got {n_frames}")
        c, g = self.config.in_channels, self.config.grid
        return (n_frames, c, g, g)

    def conditioning(self) -> Tensor:
        """AdaLN conditioning input from `rf_maps`, `[1, N or M, 1, grid, grid]`."""
        return rf_conditioning_maps(self.rf_maps, self.config.rf_conditioning, self.config.maps)

    def forward(self, features: Tensor) -> Tensor:
        """Rates `[B, T, N]` from features `[B, T, C, grid, grid]`."""
        return self.rates_from_maps(self.maps(features))

    def maps(self, features: Tensor) -> Tensor:
        """What the readout reads, `[B, M + L, T, side, side]`, from features `[B, T, C, grid, grid]`."""
        c, g = self.config.in_channels, self.config.grid
        if features.ndim != 5 or tuple(features.shape[2:]) != (c, g, g):
            raise InputError(
                f"features must be [B, T, {c}, {g}, {g}], got {tuple(features.shape)}"
            )
        inputs = features.permute(0, 2, 1, 3, 4)
        x = self.tcn(inputs)
        x = self.adaln(x, self.conditioning().to(x.dtype))
        trim = self.config.cmst_trim
        if self.config.cmst_padding == "same" and trim:
            x = F.pad(x, (trim,) * 4)
        x = self.cmst(x)
        if not self.config.linear_maps:
            return x
        linear = self.linear(inputs)
        if self.config.cmst_padding == "valid" and trim:
            linear = linear[..., trim:-trim, trim:-trim]
        return torch.cat((x, linear), dim=1)

    def rates_from_maps(self, maps: Tensor) -> Tensor:
        """Rates `[B, T, N]` (unclamped) from the maps `[B, M + L, T, side, side]` (the readout and output)."""
        rates = self.readout(maps)
        return F.softplus(rates) if self.config.output == "softplus" else rates

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Rates clamped at 0, without autograd; the train/eval mode is left as it is."""
        return self.forward(features).clamp_min(0.0)


class TwinWithBackbone(nn.Module):
    """Frames to rates end to end: frozen backbone then Vi-ST.

    Args:
        backbone: a frozen `Backbone` whose `spec.feature_shape` matches the
            ViST config's `(in_channels, grid, grid)`.
        vist: the trained model.
        frame_size: `(H, W)` of the stimuli this twin is driven with (any size
            works in `forward`; this one is reported by `stimulus_shape`).

    `forward(frames [B, T, H, W] in [0, 1]) -> rates [B, T, N]`, differentiable
    w.r.t. the frames.
    """

    def __init__(self, backbone: Backbone, vist: ViST, frame_size: tuple[int, int] = (64, 64)) -> None:
        super().__init__()
        cfg = vist.config
        if backbone.spec.feature_shape != (cfg.in_channels, cfg.grid, cfg.grid):
            raise InputError(
                f"backbone {backbone.spec.name!r} gives features {backbone.spec.feature_shape}, "
                f"the model expects {(cfg.in_channels, cfg.grid, cfg.grid)}"
            )
        self.backbone = backbone
        self.vist = vist
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))

    @property
    def n_cells(self) -> int:
        return self.vist.config.n_cells

    @property
    def receptive_field(self) -> int:
        # The backbone works frame by frame, so it adds no history.
        return self.vist.receptive_field

    def stimulus_shape(self, n_frames: int) -> tuple[int, int, int]:
        """Shape of one stimulus: `(T, H, W)`."""
        if n_frames < 1:
            raise InputError(f"n_frames must be >= 1, got {n_frames}")
        return (n_frames, *self.frame_size)

    def forward(self, frames: Tensor) -> Tensor:
        return self.vist(self.backbone(frames))

    @torch.no_grad()
    def predict(self, frames: Tensor) -> Tensor:
        """Rates `[B, T, N]` clamped at 0, without autograd."""
        return self.forward(frames).clamp_min(0.0)

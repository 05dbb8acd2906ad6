"""C3TCN: the causal dilated temporal convolution stage of Vi-ST.

Data flow (public code `SingleStage3DModel(causal=True)`), tensors `[B, C, T, H, W]`:

    1x1x1 conv  C -> width
    num_layers x residual layer i (temporal dilation 2**i):
        depthwise causal conv (3, 3, 3), 'same' in space
        BatchNorm3d -> ReLU -> 1x1x1 conv -> Dropout -> + input
    1x1x1 conv  width -> out_channels (N cells)

Each layer sees `2 * 2**i` past frames more, so six layers give a temporal
receptive field of `1 + 2 * (2**6 - 1) = 127` frames.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from stimuli.errors import InputError
from vist_model.causal import CausalConv3d

__all__ = ["C3TCN", "DilatedResidualCausalLayer"]


class DilatedResidualCausalLayer(nn.Module):
    """One residual layer of the C3TCN. Shapes: `[B, width, T, H, W]` kept."""

    def __init__(self, width: int, dilation: int, dropout: float, kernel_t: int = 3, kernel_s: int = 3) -> None:
        super().__init__()
        self.conv_dilated = CausalConv3d(
            width, width, (kernel_t, kernel_s, kernel_s), dilation=dilation, groups=width, same_spatial=True
        )
        self.norm = nn.BatchNorm3d(width)
        self.conv_1x1 = nn.Conv3d(width, width, 1)
        # Element-wise Dropout (not Dropout3d), as in the public code.
        self.dropout = nn.Dropout(dropout)

    @property
    def receptive_field(self) -> int:
        return self.conv_dilated.receptive_field

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm(self.conv_dilated(x)))
        return x + self.dropout(self.conv_1x1(out))


class C3TCN(nn.Module):
    """Causal 3D temporal convolution network.

    Args:
        in_channels: backbone feature channels C.
        out_channels: N cells.
        width: hidden channels (256 in the paper).
        num_layers: residual layers; layer i has temporal dilation 2**i.
        dropout: dropout after each layer's 1x1x1 conv (0.25 in the paper).
        kernel_t: temporal kernel of the depthwise convs (3 in the paper).
        kernel_s: their spatial side (3 in the paper; odd).

    Shapes: `[B, C, T, H, W] -> [B, N, T, H, W]`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        width: int = 256,
        num_layers: int = 6,
        dropout: float = 0.25,
        kernel_t: int = 3,
        kernel_s: int = 3,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, width, num_layers) < 1:
            raise InputError(
                "in_channels, out_channels, width and num_layers must be >= 1, got "
                f"{in_channels}, {out_channels}, {width}, {num_layers}"
            )
        self.conv_in = nn.Conv3d(in_channels, width, 1)
        self.layers = nn.ModuleList(
            DilatedResidualCausalLayer(width, 2**i, dropout, kernel_t, kernel_s) for i in range(num_layers)
        )
        self.conv_out = nn.Conv3d(width, out_channels, 1)

    @property
    def receptive_field(self) -> int:
        """Temporal receptive field in frames (127 for 6 layers, kernel 3)."""
        return 1 + sum(layer.receptive_field - 1 for layer in self.layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_in(x)
        for layer in self.layers:
            out = layer(out)
        return self.conv_out(out)

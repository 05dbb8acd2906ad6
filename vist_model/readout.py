"""Per-time-step linear readout of Vi-ST.

The CMST output `[B, N, T, h, w]` (h = w = 8 in the paper) is flattened per time
step in (cell, row, column) order, as the public code's
`rearrange(out, "b c t p q -> b t (c p q)")`, and a single Linear maps the
`N * h * w` values to N rates. Every cell can therefore read every cell's map at
every position; this layer holds most of the model's parameters
(8 * 8 * 90 * 90 + 90 = 518,490 for N = 90).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Readout"]


class Readout(nn.Module):
    """Linear `M * h * w -> N` per time step. Shapes: `[B, M, T, h, w] -> [B, T, N]`.

    M (`in_channels`) is the number of maps the CMST blocks carry; the published model has
    one map per cell (M = N, the default).
    """

    def __init__(self, n_cells: int, height: int, width: int, in_channels: int | None = None) -> None:
        super().__init__()
        in_channels = n_cells if in_channels is None else in_channels
        if min(n_cells, height, width, in_channels) < 1:
            raise ValueError(
                f"n_cells, height, width and in_channels must be >= 1, got {n_cells}, {height}, "
                f"{width}, {in_channels}"
            )
        self.n_cells, self.height, self.width = n_cells, height, width
        self.in_channels = in_channels
        self.linear = nn.Linear(in_channels * height * width, n_cells)

    def forward(self, x: Tensor) -> Tensor:
        b, n, t, h, w = x.shape
        if (n, h, w) != (self.in_channels, self.height, self.width):
            raise ValueError(
                f"readout expects [B, {self.in_channels}, T, {self.height}, {self.width}], "
                f"got {tuple(x.shape)}"
            )
        flat = x.permute(0, 2, 1, 3, 4).reshape(b, t, n * h * w)
        return self.linear(flat)

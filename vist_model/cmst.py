"""Causal multiscale spatio-temporal (CMST) blocks of Vi-ST.

One block (public code `CausalMultiscaleBlock`), tensors `[B, N, T, H, W]`:

    for each temporal kernel k in the block's set:
        branch_k = Dropout3d(LeakyReLU_0.1(CausalConv3d(N -> N, (k, 3, 3), no spatial pad)))
    out = Conv1x1x1(sum_k branch_k) + AvgPool(1, 3, 3; stride 1)(Conv1x1x1(x))

Branches with k > 1 are grouped per channel (groups = N, one temporal-spatial
filter per cell); the k = 1 branch is a full 3x3 spatial conv mixing all cells
(`groups = groups if window_size != 1 else 1` in the public code). Every
branch and the residual path shrink space by 2, so four blocks take the
16 x 16 grid to 8 x 8. Temporal padding is on the left only (causal).

Kernel sets of the four published blocks: (1, 25), (1, 13, 21), (1, 7, 9), (1, 3, 5);
each block adds `max(k) - 1` frames of history: 24 + 20 + 8 + 4 = 56 frames.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from stimuli.errors import InputError
from vist_model.causal import CausalConv3d

__all__ = ["PUBLISHED_KERNEL_SETS", "CMST", "CausalMultiscaleBlock"]

PUBLISHED_KERNEL_SETS: tuple[tuple[int, ...], ...] = ((1, 25), (1, 13, 21), (1, 7, 9), (1, 3, 5))


class CausalMultiscaleBlock(nn.Module):
    """One CMST block. Shapes: `[B, N, T, H, W] -> [B, N, T, H-2p, W-2p]`, p = kernel_s // 2.

    `kernel_s` is the spatial side of the branches and of the residual's average pool (3 as
    published, p = 1).
    """

    def __init__(
        self,
        channels: int,
        kernels_t: Sequence[int],
        *,
        dropout: float = 0.25,
        negative_slope: float = 0.1,
        kernel_s: int = 3,
    ) -> None:
        super().__init__()
        if kernel_s < 1 or kernel_s % 2 == 0:
            raise InputError(f"kernel_s must be an odd number >= 1, got {kernel_s}")
        if channels < 1:
            raise InputError(f"channels must be >= 1, got {channels}")
        if not kernels_t or min(kernels_t) < 1:
            raise InputError(f"kernels_t must be a non-empty list of ints >= 1, got {kernels_t}")
        self.kernels_t = tuple(int(k) for k in kernels_t)
        self.branches = nn.ModuleList(
            nn.Sequential(
                CausalConv3d(
                    channels,
                    channels,
                    (k, kernel_s, kernel_s),
                    groups=channels if k != 1 else 1,
                    same_spatial=False,
                ),
                nn.LeakyReLU(negative_slope),
                nn.Dropout3d(dropout),
            )
            for k in self.kernels_t
        )
        self.mapping = nn.Conv3d(channels, channels, 1)
        self.residual = nn.Conv3d(channels, channels, 1)
        self.kernel_s = kernel_s
        self.pool = nn.AvgPool3d((1, kernel_s, kernel_s), stride=1)

    @property
    def receptive_field(self) -> int:
        return max(self.kernels_t)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_s
        if x.shape[-1] < k or x.shape[-2] < k:
            raise InputError(f"CMST block needs H, W >= {k}, got {tuple(x.shape[-2:])}")
        total = self.branches[0](x)
        for branch in self.branches[1:]:
            total = total + branch(x)
        return self.mapping(total) + self.pool(self.residual(x))


class CMST(nn.Module):
    """A stack of L CMST blocks. Shapes: `[B, N, T, H, W] -> [B, N, T, H - 2pL, W - 2pL]`, p = kernel_s // 2."""

    def __init__(
        self,
        channels: int,
        kernel_sets: Sequence[Sequence[int]] = PUBLISHED_KERNEL_SETS,
        *,
        dropout: float = 0.25,
        negative_slope: float = 0.1,
        kernel_s: int = 3,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            CausalMultiscaleBlock(channels, ks, dropout=dropout, negative_slope=negative_slope, kernel_s=kernel_s)
            for ks in kernel_sets
        )

    @property
    def receptive_field(self) -> int:
        return 1 + sum(block.receptive_field - 1 for block in self.blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

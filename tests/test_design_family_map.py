"""The design benchmark's measure of a twin's map of a linear cell (`twin_map_match`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from design_family import twin_map_match  # noqa: E402

from rig_bridge.retina.recording import build_retina  # noqa: E402


class LinearCell(nn.Module):
    """`frames [B, T, H, W] -> [B, T, 1]`: one cell's linear drive, a spatial map then a causal temporal filter."""

    def __init__(self, spatial: np.ndarray, temporal: np.ndarray) -> None:
        super().__init__()
        self.spatial = torch.tensor(spatial, dtype=torch.float32)
        self.temporal = torch.tensor(temporal, dtype=torch.float32)

    def forward(self, frames: Tensor) -> Tensor:
        projected = torch.einsum("bthw,hw->bt", (frames - 0.5) * 2.0, self.spatial)
        k = self.temporal.numel()
        padded = nn.functional.pad(projected, (k - 1, 0))[:, None]          # causal: grey before the clip
        return nn.functional.conv1d(padded, self.temporal.flip(0).view(1, 1, -1))[:, 0, :, None]


def test_the_map_measure_tells_the_true_filter_from_a_shifted_or_a_smeared_one() -> None:
    retina = build_retina(3, 12, 24, 30.0)
    i = next(j for j in range(retina.n_cells) if retina.is_linear(j))
    spatial, temporal = retina.spatial_filter(i), retina.temporal_filter(i)
    space, time_ = twin_map_match(retina, LinearCell(spatial, temporal), i, 0, 30, (27, 30))
    assert space > 0.999 and time_ > 0.999
    shifted = np.roll(spatial, 3, axis=1)                                    # the map 3 px off
    space, time_ = twin_map_match(retina, LinearCell(shifted, temporal), i, 0, 30, (27, 30))
    assert space < 0.8 and time_ > 0.999
    slow = np.convolve(temporal, np.ones(4) / 4)[:temporal.size]            # the filter smeared in time
    space, time_ = twin_map_match(retina, LinearCell(spatial, slow), i, 0, 30, (27, 30))
    assert space > 0.999 and time_ < 0.9

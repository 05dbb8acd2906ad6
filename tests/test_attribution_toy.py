"""Attribution on toy models whose answer is known: a fixed spatial filter times a temporal filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from insilico.attribution.clips import Clip, clip_scores, random_clips, select_clips
from insilico.attribution.config import AttributionConfig, random_share
from insilico.attribution.methods import attribute_clip
from insilico.attribution.response import ClipResponse
from insilico.attribution.summaries import (
    effective_rf,
    map_correlation,
    rank_similarity,
    spatial_map,
    temporal_profile,
    to_resolution,
)
from vist_model.streaming import frozen

H = W = 16
LAGS = 6


class SeparableLN(nn.Module):
    """`frames [B, T, H, W] -> rates [B, T, N]`: softplus(sum_lag k[lag] <s_n, frame[t - lag] - 0.5>)."""

    def __init__(self, spatial: torch.Tensor, temporal: torch.Tensor) -> None:
        super().__init__()
        self.spatial = nn.Parameter(spatial.clone())  # [N, H, W]
        self.temporal = nn.Parameter(temporal.clone())  # [LAGS]

    @property
    def receptive_field(self) -> int:
        return len(self.temporal)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        drive = torch.einsum("bthw,nhw->btn", frames - 0.5, self.spatial)  # [B, T, N]
        padded = torch.nn.functional.pad(drive.transpose(1, 2), (len(self.temporal) - 1, 0))
        kernel = self.temporal.flip(0).view(1, 1, -1).expand(drive.shape[2], 1, -1)
        filtered = torch.nn.functional.conv1d(padded, kernel, groups=drive.shape[2])
        return torch.nn.functional.softplus(4.0 * filtered.transpose(1, 2))


def gaussian(cy: float, cx: float, sigma: float, sign: float = 1.0) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    g = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return sign * g / g.norm()


@pytest.fixture()
def toy() -> SeparableLN:
    spatial = torch.stack([gaussian(5, 6, 1.5), gaussian(10, 11, 2.0, -1.0)])
    temporal = torch.tensor([0.2, 0.6, 1.0, 0.3, -0.3, -0.2])
    return SeparableLN(spatial, temporal)


def flicker_clip(length: int, seed: int) -> torch.Tensor:
    """Full-field flicker plus a little pixel noise: `[L, H, W]` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    field = 0.5 + 0.3 * (torch.rand(length, 1, 1, generator=g) - 0.5) * 2
    return (field + 0.002 * torch.randn(length, H, W, generator=g)).clamp(0, 1)


def noise_clip(length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(length, H, W, generator=g) > 0.5).float() * 0.6 + 0.2


def attribute_toy(model: nn.Module, clips: list[torch.Tensor], targets: list[int], method: str,
                  history: int = LAGS) -> np.ndarray:
    """`[len(targets), clips, L, H, W]` attributions."""
    config = AttributionConfig(method=method, window_frames=clips[0].shape[0], response_frames=2, ig_steps=32,
                               occlusion_frames=2, occlusion_pixels=2)
    out = []
    with frozen(model):
        for clip in clips:
            forward = ClipResponse(model, None, torch.full((history, H, W), 0.5), config.response_frames)
            out.append(attribute_clip(forward, clip, targets, 0.5, config).attributions)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("method, make_clip", [("ig", flicker_clip), ("saliency", noise_clip)])
def test_spatial_map_recovers_the_known_filter(toy: SeparableLN, method: str, make_clip) -> None:
    # Saliency is k[lag] s[p] times a gain, on any stimulus. IG is (x - grey) times the path's
    # gradient, so its map is the filter only where the contrast is uniform in space: full-field
    # flicker. Each clip's map is checked (clips may drive a cell up or down).
    clips = [make_clip(12, seed) for seed in range(3)]
    a = attribute_toy(toy, clips, [0, 1], method)
    for cell in (0, 1):
        for k in range(len(clips)):
            r = map_correlation(spatial_map(a[cell, k:k + 1]), toy.spatial[cell].detach().numpy())
            assert abs(r) > 0.97, f"{method} cell {cell} clip {k}: r = {r:.3f}"


def test_occlusion_map_peaks_on_the_filter(toy: SeparableLN) -> None:
    a = attribute_toy(toy, [flicker_clip(12, 0)], [0, 1], "occlusion")
    for cell in (0, 1):
        erf = effective_rf(spatial_map(a[cell]))
        truth = effective_rf(toy.spatial[cell].detach().numpy())
        assert np.hypot(erf.centre[0] - truth.centre[0], erf.centre[1] - truth.centre[1]) < 1.5


def test_temporal_profile_follows_the_temporal_filter(toy: SeparableLN) -> None:
    a = attribute_toy(toy, [noise_clip(12, s) for s in range(3)], [0], "saliency")[0]
    spatial = spatial_map(a)
    profile = temporal_profile(a, spatial, radius=3)
    # Response summed over the last 2 frames: lag l gets k[l] + k[l - 1].
    k = toy.temporal.detach().numpy()
    expected = np.convolve(k, [1.0, 1.0])[:LAGS]
    r = np.corrcoef(profile[:LAGS], expected)[0, 1]
    assert abs(r) > 0.95
    assert np.allclose(profile[LAGS + 1:], 0, atol=1e-6 * np.abs(profile).max())  # beyond the filter: nothing


def test_random_share_keeps_a_top_clip() -> None:
    # The CLI and the benchmark take the same rule: two random clips, never all of them.
    assert [random_share(n) for n in (1, 2, 3, 6)] == [0, 1, 2, 2]


def test_integrated_gradients_are_complete(toy: SeparableLN) -> None:
    config = AttributionConfig(method="ig", window_frames=12, response_frames=2, ig_steps=32)
    with frozen(toy):
        forward = ClipResponse(toy, None, torch.full((LAGS, H, W), 0.5), 2)
        result = attribute_clip(forward, noise_clip(12, 1), [0, 1], 0.5, config)
    drive = np.abs(result.response - result.baseline_response)
    assert (drive > 1e-3).all()
    assert (np.abs(result.gap) < 0.02 * drive).all()
    # The gap is Captum's own convergence delta, which the report does not ask Captum to repeat.
    clip = noise_clip(12, 1)[None].expand(2, -1, -1, -1)
    with frozen(toy):
        delta = IntegratedGradients(forward).compute_convergence_delta(
            torch.from_numpy(result.attributions), start_point=torch.full_like(clip, 0.5), end_point=clip,
            target=torch.tensor([0, 1]))
    assert np.allclose(result.gap, delta.numpy(), atol=1e-3 * drive.max())


def test_sanity_check_tells_trained_from_randomised(toy: SeparableLN) -> None:
    torch.manual_seed(3)
    randomised = SeparableLN(torch.randn_like(toy.spatial) * 0.1, torch.randn_like(toy.temporal))
    clips = [noise_clip(12, s) for s in range(2)]
    trained = attribute_toy(toy, clips, [0, 1], "saliency")
    again = attribute_toy(toy, clips, [0, 1], "saliency")
    random = attribute_toy(randomised, clips, [0, 1], "saliency")
    for cell in (0, 1):
        same = rank_similarity(spatial_map(trained[cell]), spatial_map(again[cell]))
        different = rank_similarity(spatial_map(trained[cell]), spatial_map(random[cell]))
        assert same > 0.99
        assert different < 0.5


def test_effective_rf_of_a_gaussian() -> None:
    erf = effective_rf(gaussian(4.0, 9.0, 2.0).numpy())
    assert erf.centre == pytest.approx((4.0, 9.0), abs=0.05)
    # Squared Gaussian has sigma / sqrt(2) per axis; RMS radius over two axes = sigma.
    assert erf.sigma == pytest.approx(2.0, rel=0.05)


def test_clip_selection_picks_the_peaks() -> None:
    response = np.zeros(100)
    response[[30, 70, 71]] = [5.0, 3.0, 3.0]
    scores = clip_scores(response, window=10, response_frames=2)
    assert np.isnan(scores[:10]).all() and scores[72] == 6.0
    shared = random_clips(100, 10, 2, seed=0)
    clips = select_clips(response, 10, 2, 2, shared)
    assert [c.kind for c in clips] == ["top", "top", "random", "random"]
    assert {clips[0].end, clips[1].end} == {72, 31}
    assert all(c.start >= 0 and c.end <= 100 for c in clips)
    assert random_clips(100, 10, 2, seed=0) == shared


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        AttributionConfig(method="gradcam")
    with pytest.raises(ValueError, match="response_frames"):
        AttributionConfig(window_frames=4, response_frames=5)
    with pytest.raises(ValueError, match="fewer than"):
        select_clips(np.zeros(5), 10, 2, 1, [])


def test_clip_type() -> None:
    assert Clip(end=30, window=10, kind="top").start == 20


def test_spatial_map_survives_a_biphasic_filter_that_a_time_sum_cancels() -> None:
    """Attributions `k[t] s[h, w]` with sum(k) = 0 (a balanced biphasic cell), plus noise."""
    rng = np.random.default_rng(0)
    s = gaussian(7, 8, 2.0).numpy()
    k = np.array([0.0, 0.5, 1.0, 0.4, -0.6, -0.8, -0.5])
    k -= k.mean()
    a = k[None, :, None, None] * s[None, None] + 0.01 * rng.standard_normal((5, len(k), H, W))
    assert abs(map_correlation(a.sum(axis=1).mean(axis=0), s)) < 0.5  # what a time sum would give
    spatial = spatial_map(a)
    assert map_correlation(spatial, s) > 0.99
    # Signed at the lag that matters most (k's largest |value| is positive here): an ON centre stays positive.
    assert spatial[7, 8] > 0
    flipped = spatial_map(-a)
    assert map_correlation(flipped, s) < -0.99


def test_maps_at_the_twins_resolution_drop_the_patch_pattern() -> None:
    """A smooth filter seen through 4-px patches whose embedding adds a fixed +-1 pattern."""
    s = gaussian(7, 8, 2.5).numpy()
    pattern = np.tile(np.array([[1.0, -1.0], [-1.0, 1.0]]), (H // 2, W // 2))
    a = np.stack([np.stack([s * (1.0 + 3.0 * pattern)] * 3)] * 2)  # [clips, L, H, W]
    raw = map_correlation(spatial_map(a), s)
    seen = map_correlation(spatial_map(to_resolution(a, H // 4)), s)
    assert raw < 0.5 < 0.8 < seen  # block averaging costs a smooth filter a little: r 0.85
    blocks = to_resolution(np.arange(16.0).reshape(1, 4, 4), 2)[0]
    assert blocks.tolist() == [[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5], [10.5, 10.5, 12.5, 12.5],
                               [10.5, 10.5, 12.5, 12.5]]
    assert np.array_equal(to_resolution(a, None), a)

"""The factorized readout and the "same" CMST padding: where each cell's readout looks."""

from __future__ import annotations

import pytest
import torch

from vist_model.readout import FactorizedReadout, grid_centres
from vist_model.vist import ViST, ViSTConfig, vist_config

N_CELLS, CHANNELS, GRID = 3, 4, 16


def _point_maps(points: list[tuple[int, int]], grid: int = GRID) -> torch.Tensor:
    maps = torch.zeros(len(points), grid, grid)
    for k, (r, c) in enumerate(points):
        maps[k, r, c] = 1.0
    return maps


def _model(points: list[tuple[int, int]], **overrides: object) -> ViST:
    torch.manual_seed(0)
    cfg = vist_config("cpu", len(points), CHANNELS, tcn_width=8, readout="factorized", **overrides)
    return ViST(cfg, _point_maps(points)).eval()


def _argmax(mask: torch.Tensor) -> tuple[int, int]:
    r, c = divmod(int(mask.argmax()), mask.shape[-1])
    return r, c


def test_grid_centres_are_rf_centres_shifted_by_the_margin() -> None:
    maps = _point_maps([(5, 6), (0, 15)])
    flat = torch.zeros(1, GRID, GRID)
    centres = grid_centres(torch.cat([maps, flat]), margin=4)
    torch.testing.assert_close(centres[:2], torch.tensor([[1.0, 2.0], [-4.0, 11.0]]))
    assert centres[2].tolist() == [3.5, 3.5]  # a flat map: the middle of the screen


def test_grid_centres_are_not_pulled_to_the_middle_by_the_noise_floor() -> None:
    """An STA's magnitude is positive everywhere; the centre must stay at the peak near the edge."""
    rng = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    peak = torch.exp(-((rows - 1.0) ** 2 + (cols - 14.0) ** 2) / (2 * 0.8**2))
    noisy = peak + 0.15 * torch.rand(GRID, GRID, generator=rng)
    centre = grid_centres(noisy[None], margin=0)[0]
    assert torch.allclose(centre, torch.tensor([1.0, 14.0]), atol=0.35)


def test_factorized_masks_start_at_the_rf_and_sum_to_one() -> None:
    valid = _model([(5, 6), (12, 3), (0, 15)], cmst_padding="valid")
    assert valid.readout.spatial.shape == (3, 8, 8)
    # Valid padding: readout position p is feature position p + 4; edges clamp onto the grid.
    assert [_argmax(m) for m in valid.readout.spatial] == [(1, 2), (7, 0), (0, 7)]
    same = _model([(5, 6), (12, 3), (0, 15)], cmst_padding="same")
    assert same.readout.spatial.shape == (3, GRID, GRID)
    assert [_argmax(m) for m in same.readout.spatial] == [(5, 6), (12, 3), (0, 15)]
    torch.testing.assert_close(same.readout.spatial.sum(dim=(1, 2)), torch.ones(3))


def test_factorized_readout_is_mask_then_map_weights() -> None:
    readout = FactorizedReadout(2, 4, 5, 3, torch.tensor([[1.0, 1.0], [2.0, 3.0]]))
    with torch.no_grad():
        readout.features.normal_()
        readout.bias.normal_()
    x = torch.randn(2, 3, 6, 4, 5)
    out = readout(x)
    assert out.shape == (2, 6, 2)
    n, t = 1, 4
    expected = sum(readout.features[n, m] * (x[:, m, t] * readout.spatial[n]).sum(dim=(1, 2)) for m in range(3))
    torch.testing.assert_close(out[:, t, n], expected + readout.bias[n])
    assert sum(p.numel() for p in readout.parameters()) == 2 * (4 * 5 + 3 + 1)


def test_factorized_readout_refuses_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="centres"):
        FactorizedReadout(2, 4, 4, 3, torch.zeros(3, 2))
    readout = FactorizedReadout(2, 4, 4, 3, torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\[B, 3, T, 4, 4\]"):
        readout(torch.zeros(1, 2, 5, 4, 4))


def test_same_padding_lets_an_edge_cell_read_its_own_corner() -> None:
    """A cell in the screen's corner: with "same" padding its input gradient peaks in that corner."""
    peaks = {}
    for padding in ("valid", "same"):
        model = _model([(0, 0)], cmst_padding=padding)
        feats = torch.randn(1, 90, CHANNELS, GRID, GRID, requires_grad=True)
        model(feats)[0, -1, 0].backward()
        peaks[padding] = _argmax(feats.grad[0].abs().sum(dim=(0, 1)))
    assert peaks["same"] == (0, 0)
    assert min(peaks["valid"]) >= 2  # read from the nearest readout position, centred 4 inwards


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_spatial_kernel_one_keeps_each_cell_to_its_mask(padding: str) -> None:
    """With 1 x 1 spatial kernels a cell's output reads features only where its readout mask is."""
    model = _model([(5, 6)], cmst_padding=padding, spatial_kernel=1)
    assert model.config.readout_grid == GRID  # nothing to trim
    with torch.no_grad():
        model.readout.spatial.zero_()
        model.readout.spatial[0, 9, 2] = 1.0
    feats = torch.randn(1, 90, CHANNELS, GRID, GRID, requires_grad=True)
    model(feats)[0, -1, 0].backward()
    reach = feats.grad[0].abs().sum(dim=(0, 1))
    assert reach[9, 2] > 0
    reach[9, 2] = 0
    assert float(reach.max()) == 0.0
    wide = _model([(5, 6)], cmst_padding=padding)  # published 3 x 3: the same mask reads a wide area
    with torch.no_grad():
        wide.readout.spatial.zero_()
        wide.readout.spatial[0, 5, 5] = 1.0
    feats.grad = None
    wide(feats)[0, -1, 0].backward()
    assert int((feats.grad[0].abs().sum(dim=(0, 1)) > 0).sum()) > 100


def test_spatial_kernel_must_be_odd() -> None:
    with pytest.raises(ValueError, match="spatial_kernel must be an odd number"):
        vist_config("cpu", N_CELLS, CHANNELS, spatial_kernel=2)
    with pytest.raises(ValueError, match="too small for 4 CMST blocks with spatial kernel 5"):
        vist_config("vist", N_CELLS, CHANNELS, spatial_kernel=5)  # valid padding: 16 - 2 * 4 * 2 = 0
    cfg = vist_config("vist", N_CELLS, CHANNELS, cmst_padding="same", spatial_kernel=5)
    assert (cfg.cmst_trim, cfg.readout_grid) == (8, GRID)
    assert ViSTConfig.from_dict(cfg.to_dict()) == cfg


def test_cpu_preset_reads_out_per_cell_over_the_whole_screen() -> None:
    cfg = vist_config("cpu", N_CELLS, CHANNELS)
    assert (cfg.readout, cfg.cmst_padding, cfg.readout_grid) == ("dog", "same", GRID)
    published = vist_config("vist", N_CELLS, CHANNELS)
    assert (published.readout, published.cmst_padding, published.readout_grid) == ("dense", "valid", 8)


def test_new_fields_round_trip_and_old_configs_load_as_published() -> None:
    cfg = vist_config("cpu", N_CELLS, CHANNELS, readout="factorized", cmst_padding="same")
    assert ViSTConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["readout"], old["cmst_padding"]  # a checkpoint saved before these existed
    loaded = ViSTConfig.from_dict(old)
    assert (loaded.readout, loaded.cmst_padding) == ("dense", "valid")
    with pytest.raises(ValueError, match="readout must be one of dense, factorized, dog"):
        vist_config("cpu", N_CELLS, CHANNELS, readout="gaussian")
    with pytest.raises(ValueError, match="cmst_padding"):
        vist_config("cpu", N_CELLS, CHANNELS, cmst_padding="reflect")


@pytest.mark.parametrize("readout", ["factorized", "dog"])
def test_sanity_check_redraws_the_rf_placed_masks(readout: str) -> None:
    """The randomised twin of Adebayo's check must not inherit the recorded RFs through its masks."""
    from insilico.attribution.sanity import randomised_network
    from vist_model.backbone import load_backbone
    from vist_model.twin import Twin, TwinMetadata, backbone_metadata, build_network

    points = [(8, 8), (20, 40), (50, 12), (60, 60)]
    rf = torch.zeros(len(points), 64, 64)
    for k, (r, c) in enumerate(points):
        rf[k, r - 2:r + 3, c - 2:c + 3] = 1.0
    backbone = load_backbone("pixels")
    network = vist_config("cpu", len(points), backbone.spec.hidden_size, tcn_width=8, readout=readout,
                          cmst_padding="same")
    meta = TwinMetadata(kind="vist", cell_ids=(0, 1, 2, 3), frame_rate=30.0, frame_shape=(64, 64),
                        rf=rf.numpy(), rf_source="test", network=network.to_dict(),
                        backbone=backbone_metadata(backbone))
    twin = Twin(build_network(meta), meta, backbone)
    placed = [_argmax(m) for m in twin.network.readout.spatial]
    assert placed == [(r // 4, c // 4) for r, c in points]
    random = randomised_network(twin).readout.spatial.detach()
    assert [_argmax(m) for m in random] != placed
    if readout == "factorized":
        assert float((random.sum(dim=(1, 2)) - 1).abs().min()) > 1e-3  # no longer unit-sum Gaussians

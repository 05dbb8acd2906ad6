"""Vi-ST blocks, the full model, the backbones and the Vi-ST loss (tiny sizes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vist_model.adaln import AdaLNZero3D, rf_conditioning_maps
from vist_model.backbone import (
    BACKBONE_PRESETS,
    BackboneUnavailableError,
    DinoV2Backbone,
    PixelBackbone,
    _tiny_encoder,
    load_backbone,
)
from vist_model.causal import CausalConv3d
from vist_model.cmst import CMST, CausalMultiscaleBlock
from vist_model.loss import PoissonLoss, ViSTLoss
from vist_model.readout import Readout
from vist_model.tcn import C3TCN
from vist_model.vist import TwinWithBackbone, ViST, ViSTConfig, vist_config

N_CELLS, CHANNELS, GRID = 3, 4, 16


def _rf_maps(n: int = N_CELLS, grid: int = GRID) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, grid, grid, generator=gen)


def _tiny_vist(**overrides: object) -> ViST:
    torch.manual_seed(0)
    cfg = vist_config("cpu", N_CELLS, CHANNELS, tcn_width=8, **overrides)
    return ViST(cfg, _rf_maps()).eval()


# --- blocks -----------------------------------------------------------------


def test_tcn_shapes_and_receptive_field() -> None:
    tcn = C3TCN(CHANNELS, N_CELLS, width=8, num_layers=6)
    out = tcn(torch.randn(2, CHANNELS, 5, GRID, GRID))
    assert out.shape == (2, N_CELLS, 5, GRID, GRID)
    assert tcn.receptive_field == 127


def test_cmst_blocks_shrink_16_to_8() -> None:
    cmst = CMST(N_CELLS)
    x = torch.randn(1, N_CELLS, 7, GRID, GRID)
    sides = []
    for block in cmst.blocks:
        x = block(x)
        sides.append(tuple(x.shape[-2:]))
    assert sides == [(14, 14), (12, 12), (10, 10), (8, 8)]
    assert x.shape[:3] == (1, N_CELLS, 7)
    assert cmst.receptive_field == 1 + 24 + 20 + 8 + 4


def test_cmst_branch_grouping_follows_public_code() -> None:
    block = CausalMultiscaleBlock(5, (1, 7))
    full, depthwise = (branch[0].conv for branch in block.branches)
    assert full.groups == 1 and full.weight.shape == (5, 5, 1, 3, 3)
    assert depthwise.groups == 5 and depthwise.weight.shape == (5, 1, 7, 3, 3)


@pytest.mark.parametrize("kernel_t, dilation, same", [(3, 1, True), (3, 8, True), (5, 2, False), (25, 1, False)])
def test_depthwise_convolutions_on_cpu_match_conv3d_values_and_gradients(kernel_t: int, dilation: int,
                                                                         same: bool) -> None:
    conv = CausalConv3d(4, 4, (kernel_t, 3, 3), dilation=dilation, groups=4, same_spatial=same).double()
    x = torch.randn(2, 4, 40, 9, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 4, 40, *(9, 9) if same else (7, 7), dtype=torch.float64)
    grads = []
    for forward in (conv, lambda v: conv.conv(torch.nn.functional.pad(v, conv._pad))):  # the fast path, nn.Conv3d
        x.grad = None
        conv.zero_grad()
        out = forward(x)
        (out * weight).sum().backward()
        grads.append((out.detach(), x.grad.clone(), conv.conv.weight.grad.clone(), conv.conv.bias.grad.clone()))
    for fast, reference in zip(*grads, strict=True):
        torch.testing.assert_close(fast, reference)


def test_readout_flattens_cell_row_column_per_frame() -> None:
    readout = Readout(2, 8, 8)
    x = torch.randn(3, 2, 4, 8, 8)
    expected = readout.linear(x[:, :, 1].reshape(3, -1))
    torch.testing.assert_close(readout(x)[:, 1], expected)


def test_adaln_zero_starts_as_identity_and_then_modulates() -> None:
    block = AdaLNZero3D(N_CELLS)
    x = torch.randn(2, N_CELLS, 5, GRID, GRID)
    cond = rf_conditioning_maps(_rf_maps(), "sum")
    assert torch.equal(block(x, cond), x)
    torch.nn.init.normal_(block.modulation[1].weight, 0.0, 0.5)
    assert not torch.allclose(block(x, cond), x)


def test_rf_conditioning_modes() -> None:
    maps = _rf_maps()
    summed = rf_conditioning_maps(maps, "sum")
    per_cell = rf_conditioning_maps(maps, "per_cell")
    assert summed.shape == per_cell.shape == (1, N_CELLS, 1, GRID, GRID)
    for k in range(N_CELLS):
        torch.testing.assert_close(summed[0, k, 0], maps.sum(0))
        torch.testing.assert_close(per_cell[0, k, 0], maps[k])
    with pytest.raises(ValueError, match="per_cell"):
        rf_conditioning_maps(maps, "mean")  # type: ignore[arg-type]


# --- full model ---------------------------------------------------------------


def test_published_parameter_count() -> None:
    model = ViST(vist_config("vist", 90, 1024), _rf_maps(90))
    assert sum(p.numel() for p in model.parameters()) == 1_702_952  # public torchinfo summary
    assert model.receptive_field == 127 + 56


def test_vist_forward_shape_and_predict_clamps() -> None:
    model = _tiny_vist()
    feats = torch.randn(2, 6, CHANNELS, GRID, GRID)
    rates = model(feats)
    assert rates.shape == (2, 6, N_CELLS)
    assert model.stimulus_shape(6) == (6, CHANNELS, GRID, GRID)
    pred = model.predict(feats)
    assert (pred >= 0).all()
    torch.testing.assert_close(pred, rates.clamp_min(0).detach())


@pytest.mark.parametrize("maps", [None, 8])  # one map per cell (published), or the cpu preset's 8
@pytest.mark.parametrize("mode", ["sum", "per_cell"])
@pytest.mark.parametrize("readout, padding", [("dense", "valid"), ("factorized", "same"), ("dense", "same"),
                                              ("factorized", "valid")])
def test_vist_is_causal_for_a_step_input(mode: str, maps: int | None, readout: str, padding: str) -> None:
    model = _tiny_vist(rf_conditioning=mode, map_channels=maps, readout=readout, cmst_padding=padding)
    assert model.readout.in_channels == (N_CELLS if maps is None else maps) + model.config.linear_maps
    t, step = 20, 11
    before = torch.zeros(1, t, CHANNELS, GRID, GRID)
    after = before.clone()
    after[:, step:] = 1.0
    with torch.no_grad():
        base, moved = model(before), model(after)
    torch.testing.assert_close(moved[:, :step], base[:, :step], rtol=0, atol=1e-6)
    assert (moved[:, step:] - base[:, step:]).abs().amax(dim=-1).min() > 1e-4


def test_vist_gradient_support_is_its_receptive_field() -> None:
    model = _tiny_vist()
    rf = model.receptive_field
    assert rf == model.config.receptive_field == 1 + 2 * (2**4 - 1) + 56  # cpu preset: 4 TCN layers
    t_out = rf + 3
    feats = torch.randn(1, rf + 6, CHANNELS, GRID, GRID, requires_grad=True)
    model(feats)[0, t_out].sum().backward()
    per_frame = feats.grad.abs().sum(dim=(0, 2, 3, 4))
    assert per_frame[t_out + 1 :].sum() == 0
    assert per_frame[: t_out - rf + 1].sum() == 0
    assert per_frame[t_out - rf + 1] > 0 and per_frame[t_out] > 0


def test_bad_inputs_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="rf_maps"):
        ViST(vist_config("cpu", N_CELLS, CHANNELS), torch.rand(N_CELLS + 1, GRID, GRID))
    with pytest.raises(ValueError, match="features"):
        _tiny_vist()(torch.randn(1, 4, CHANNELS + 1, GRID, GRID))
    with pytest.raises(ValueError, match="grid"):
        ViSTConfig(n_cells=2, in_channels=2, grid=8)
    with pytest.raises(ValueError, match="preset"):
        vist_config("huge", 2, 2)


def test_config_round_trips_through_dict() -> None:
    cfg = vist_config("cpu", 5, 7, rf_conditioning="per_cell")
    assert ViSTConfig.from_dict(cfg.to_dict()) == cfg


# --- backbones ----------------------------------------------------------------


def test_tiny_backbone_shapes_frozen_and_deterministic() -> None:
    backbone = load_backbone("tiny")
    assert isinstance(backbone, DinoV2Backbone)
    assert backbone.spec.feature_shape == (32, 16, 16) and not backbone.spec.pretrained
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not backbone.encoder.training
    frames = torch.rand(2, 3, 64, 64)
    feats = backbone(frames)
    assert feats.shape == (2, 3, 32, 16, 16)
    torch.testing.assert_close(load_backbone("tiny")(frames), feats)


def test_tiny_backbone_keeps_luminance_magnitude() -> None:
    # Uniform screens from black to white: the centre token must follow the luminance
    # linearly, not only its sign against grey (the default LayerNorm eps gave that).
    levels = torch.linspace(0, 1, 11)
    screens = levels[:, None, None].expand(11, 32, 32)[None].contiguous()

    def linearity(backbone: DinoV2Backbone) -> float:
        with torch.no_grad():
            tokens = backbone(screens)[0, :, :, 8, 8].numpy()
        x = np.c_[np.ones(11), levels.numpy()]
        fit = x @ np.linalg.lstsq(x, tokens, rcond=None)[0]
        return 1 - ((tokens - fit) ** 2).sum() / ((tokens - tokens.mean(0)) ** 2).sum()

    tiny = load_backbone("tiny")
    default_eps = DinoV2Backbone(BACKBONE_PRESETS["tiny"], _tiny_encoder(1e-6))  # Dinov2Config's own eps
    assert linearity(tiny) > 0.97
    assert linearity(default_eps) < 0.85


def test_backbone_is_differentiable_wrt_frames() -> None:
    backbone = load_backbone("tiny")
    frames = torch.rand(1, 2, 48, 48, requires_grad=True)
    backbone(frames).square().sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0


def test_extract_matches_forward_and_is_float32() -> None:
    backbone = load_backbone("tiny")
    movie = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32), dtype=np.uint8)
    cached = backbone.extract(movie, batch_size=2)
    assert cached.shape == (5, 32, 16, 16) and cached.dtype == np.float32
    with torch.no_grad():
        direct = backbone(torch.from_numpy(movie).float().div(255).unsqueeze(0))[0]
    np.testing.assert_allclose(cached, direct.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        backbone.extract(movie.astype(np.float32))


def test_pixels_backbone_pools_luminance_and_contrast() -> None:
    backbone = load_backbone("pixels")
    assert isinstance(backbone, PixelBackbone) and backbone.spec.feature_shape == (2, 16, 16)
    frames = torch.full((1, 2, 64, 64), 0.5)
    frames[0, 1, :, ::2] = 1.0  # vertical stripes: same mean everywhere, high contrast
    frames[0, 1, :, 1::2] = 0.0
    feats = backbone(frames)
    assert feats.shape == (1, 2, 2, 16, 16)
    lum, contrast = feats[0, :, 0], feats[0, :, 1]
    torch.testing.assert_close(lum[1], lum[0])  # both frames average to grey
    assert contrast[0].max() < 1e-2 < contrast[1].min()
    frames.requires_grad_()
    backbone(frames).sum().backward()
    assert frames.grad.abs().sum() > 0


def test_patches_backbone_keeps_what_lies_inside_a_grid_cell() -> None:
    # A bright pixel at a grid cell's top-left corner and the same pixel at its bottom-right: the
    # same mean and contrast (pixels cannot tell them apart), not the same sub-grid.
    pixels, patches = load_backbone("pixels"), load_backbone("patches")
    assert patches.spec.feature_shape == (17, 16, 16)
    frames = torch.full((1, 2, 64, 64), 0.5)
    frames[0, 0, 20, 20] = 1.0  # grid cell (5, 5) covers pixels 20..23
    frames[0, 1, 23, 23] = 1.0
    coarse, fine = pixels(frames)[0], patches(frames)[0]
    torch.testing.assert_close(coarse[0], coarse[1])
    torch.testing.assert_close(fine[0, 16], fine[1, 16])  # its contrast channel is pixels' own
    torch.testing.assert_close(fine[:, :16].mean(dim=1), coarse[:, 0])  # the sub-grid averages to pixels' mean
    lit = fine[:, :16, 5, 5].argmax(dim=1)  # the brightest sub-position: row-major over the 4 x 4 sub-grid
    assert lit.tolist() == [0, 15]
    small = patches(torch.rand(1, 1, 32, 32))  # a screen smaller than the sub-grid: repeated, same shape
    assert small.shape == (1, 1, 17, 16, 16)


def test_missing_pretrained_weights_give_a_clear_error(tmp_path) -> None:
    # Neither exists on any machine, so this holds with or without a filled cache.
    for missing in ("insilico-tests/dinov2-absent", str(tmp_path / "no-such-folder" / "dino")):
        with pytest.raises(BackboneUnavailableError, match="tiny"):
            load_backbone(missing)
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("resnet")


def test_backbone_loads_from_a_local_folder(tmp_path) -> None:
    tiny = load_backbone("tiny")
    tiny.encoder.save_pretrained(tmp_path / "dino")
    local = load_backbone(str(tmp_path / "dino"))
    assert local.spec.feature_shape == (32, 16, 16)
    frames = torch.rand(1, 2, 32, 32)
    torch.testing.assert_close(local(frames), tiny(frames))


def test_twin_with_backbone_maps_frames_to_rates_with_gradients() -> None:
    torch.manual_seed(0)
    vist = ViST(vist_config("cpu", N_CELLS, 32, tcn_width=8), _rf_maps()).eval()
    twin = TwinWithBackbone(load_backbone("tiny"), vist, frame_size=(32, 32))
    assert twin.stimulus_shape(4) == (4, 32, 32)
    frames = torch.full((1, 4, 32, 32), 0.5, requires_grad=True)
    rates = twin(frames)
    assert rates.shape == (1, 4, N_CELLS)
    rates[0, -1].sum().backward()
    assert frames.grad[0, -1].abs().sum() > 0
    with pytest.raises(ValueError, match="expects"):
        TwinWithBackbone(load_backbone("pixels"), vist)


# --- loss ---------------------------------------------------------------------


def _loss_pair(b: int = 2, t: int = 40, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    pred = torch.randn(b, t, n, generator=gen, dtype=torch.float64)
    target = torch.rand(b, t, n, generator=gen, dtype=torch.float64)
    return pred, target


def test_loss_terms_are_all_active() -> None:
    pred, target = _loss_pair()
    terms = ViSTLoss().terms(pred, target)
    assert len(terms.dtw) == 2
    for value in (terms.rmse, terms.negative, *terms.dtw):
        assert value.item() > 0
    torch.testing.assert_close(terms.total, terms.rmse + terms.negative + sum(terms.dtw))
    assert ViSTLoss()(target, target).item() == pytest.approx(0.0, abs=1e-12)


def test_loss_is_invariant_to_batch_and_cell_duplication() -> None:
    pred, target = _loss_pair()
    base = ViSTLoss().terms(pred, target).to_floats()
    batch_dup = ViSTLoss().terms(torch.cat([pred, pred]), torch.cat([target, target])).to_floats()
    cell_dup = ViSTLoss().terms(torch.cat([pred, pred], -1), torch.cat([target, target], -1)).to_floats()
    for name, value in base.items():
        assert batch_dup[name] == pytest.approx(value, rel=1e-9), name
        assert cell_dup[name] == pytest.approx(value, rel=1e-9), name


def test_loss_weights_scale_each_error_in_the_rmse() -> None:
    pred, target = _loss_pair()
    ones = torch.ones_like(target)
    for loss, rates in ((ViSTLoss(), pred), (PoissonLoss(), pred.abs())):
        torch.testing.assert_close(loss(rates, target, ones), loss(rates, target))
    # One wrong element, counted 100 times: the RMSE is what 100 copies of it make.
    wrong = target.clone()
    wrong[0, 5, 1] += 2.0
    weights = ones.clone()
    weights[0, 5, 1] = 100.0
    plain, stressed = ViSTLoss().terms(wrong, target), ViSTLoss().terms(wrong, target, weights)
    n = target.numel()
    assert plain.rmse.item() == pytest.approx(0.1 * math.sqrt(4 / n))
    assert stressed.rmse.item() == pytest.approx(0.1 * math.sqrt(400 / (n + 99)))
    assert stressed.dtw == plain.dtw
    with pytest.raises(ValueError, match="shaped like the target"):
        ViSTLoss()(pred, target, ones[:, :10])


def test_negative_penalty_only_sees_negative_rates() -> None:
    target = torch.rand(1, 40, 2)
    loss = ViSTLoss().terms(target + 1.0, target)
    assert loss.negative.item() == 0.0
    assert ViSTLoss().terms(target - 5.0, target).negative.item() > 0


def test_loss_rejects_short_or_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="T >= 40"):
        ViSTLoss()(torch.zeros(1, 30, 2), torch.zeros(1, 30, 2))
    with pytest.raises(ValueError, match="B, T, N"):
        ViSTLoss()(torch.zeros(1, 40, 2), torch.zeros(1, 40, 3))


def test_poisson_loss_is_minimal_at_the_target_and_scale_free() -> None:
    target = torch.rand(2, 10, 3) + 0.1
    loss = PoissonLoss()
    best = loss(target, target)
    assert loss(target * 1.2, target) > best and loss(target * 0.8, target) > best
    dup = loss(torch.cat([target, target], -1), torch.cat([target, target], -1))
    torch.testing.assert_close(dup, best)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_linear_maps_are_linear_in_the_features_and_causal(padding: str) -> None:
    torch.manual_seed(0)
    config = vist_config("cpu", 3, 2, linear_maps=2, linear_lags=5, cmst_padding=padding)
    net = ViST(config, torch.rand(3, 16, 16)).eval()
    assert ViSTConfig.from_dict(config.to_dict()) == config
    assert config.readout_maps == config.maps + 2
    a, b = torch.randn(2, 1, 12, 2, 16, 16)
    m = config.maps
    lin = lambda x: net.maps(x)[:, m:]  # noqa: E731
    zero = lin(torch.zeros_like(a))  # the filters' biases
    torch.testing.assert_close(lin(a + b) - zero, (lin(a) - zero) + (lin(b) - zero), atol=1e-5, rtol=1e-4)
    later = a.clone()
    later[:, 7:] += 1.0  # a change at frame 7 leaves frames 0..6 alone
    torch.testing.assert_close(net(later)[:, :7], net(a)[:, :7])
    # A checkpoint's config written before linear maps existed reads as none.
    old = {k: v for k, v in vist_config("cpu", 3, 2).to_dict().items() if not k.startswith("linear")}
    assert ViSTConfig.from_dict(old).linear_maps == 0

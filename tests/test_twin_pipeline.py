"""Data split, feature cache, training loop, checkpoints and evaluation of the twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stimuli.recording import open_recording
from vist_model.backbone import DINOV2_RENAMES, load_backbone
from vist_model.data import (
    Block,
    LossFocus,
    WindowDataset,
    focus_weights,
    make_split,
    shared_out,
)
from vist_model.evaluate import evaluate_twin, write_evaluation
from vist_model.features import FeatureCache, backbone_fingerprint, state_fingerprint
from vist_model.fit_twin import TwinSpec, finetune_twin, train_twin
from vist_model.train import TrainConfig, fit, lr_at
from vist_model.twin import CheckpointError, Twin


def test_split_holds_validation_out_of_training_and_never_touches_test(tiny_recording: Path) -> None:
    with open_recording(tiny_recording) as rec:
        split = make_split(rec, ["mov1", "noise"], ["mov2"], val_fraction=0.1)
        mov1 = rec.segment("mov1")
        with pytest.raises(ValueError, match="both training and test"):
            make_split(rec, ["mov1", "mov2"], ["mov2"])
    train = {r.name: r for r in split.train}
    val = {r.name: r for r in split.val}
    assert train["mov1"].start == mov1.start and train["mov1"].stop == val["mov1"].start
    assert val["mov1"].stop == mov1.stop
    assert [r.name for r in split.test] == ["mov2"]
    assert all(r.name != "mov2" for r in split.train + split.val)


def test_windows_are_reproducible_per_epoch() -> None:
    blocks = [Block(np.arange(300, dtype=np.float32)[:, None], np.zeros((300, 2), np.float32))]
    a, b = WindowDataset(blocks, window=50, seed=3), WindowDataset(blocks, window=50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert [a[i][0][0].item() for i in range(len(a))] == [b[i][0][0].item() for i in range(len(b))]
    b.set_epoch(5)
    assert [a[i][0][0].item() for i in range(len(a))] != [b[i][0][0].item() for i in range(len(b))]
    with pytest.raises(ValueError, match="no block holds a 400-frame window"):
        WindowDataset(blocks, window=400)


def test_shares_set_where_windows_come_from() -> None:
    def block(n: int, tag: float) -> Block:
        return Block(np.full((n, 1), tag, np.float32), np.zeros((n, 2), np.float32))

    movie, clips = [block(3000, 0.0)], [block(60, 1.0), block(60, 2.0)]
    # By length, the clips hold 42 of the 2963 window starts.
    for shares, expected in (([None, None], 42 / 2963), ([None, 0.5], 0.5), ([0.8, None], 0.2)):
        data = WindowDataset(shared_out([movie, clips], shares, 40), window=40, seed=0, coverage=40)
        from_clips = np.mean([data[i][0][0, 0].item() > 0 for i in range(len(data))])
        assert from_clips == pytest.approx(expected, abs=0.02)
    with pytest.raises(ValueError, match="leave nothing"):
        shared_out([movie, clips, clips], [0.5, 0.5, None], 40)
    with pytest.raises(ValueError, match=r"shares must be in \(0, 1\)"):
        shared_out([movie, clips], [None, 1.0], 40)


def test_focus_weights_land_on_the_focused_cell_and_frames() -> None:
    targets = np.zeros((50, 4), np.float32)
    focus = [LossFocus("clip", 2, 45, 48), LossFocus("clip", 0, 0, 3)]
    w = focus_weights(40, targets, focus, 30.0)  # a block from frame 40 of its segment
    assert w is not None and w.shape == targets.shape
    assert (w[5:8, 2] == 30).all() and w.sum() == targets.size + 3 * 29
    assert focus_weights(100, targets, focus, 30.0) is None  # no focus in frames 100..149
    with pytest.raises(ValueError, match="loss weights must be >= 0"):
        Block(targets, targets, loss_weights=-np.ones_like(targets))


def test_loss_weights_pull_the_fit_towards_the_focused_targets() -> None:
    # One input, two regimes: most frames say y = x, a short clip says y = 3x. Focusing the
    # clip's frames moves the fitted slope towards 3.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    x[:, 1:] = 0
    movie = Block(x[:340], x[:340, :1].copy())
    clip_targets = 3 * x[340:, :1]
    slopes = {}
    for weight in (1.0, 50.0):
        clip = Block(x[340:], clip_targets, loss_weights=np.full_like(clip_targets, weight))
        torch.manual_seed(0)
        model = _Linear()
        cfg = TrainConfig(epochs=30, window=20, batch_size=8, warmup_epochs=0, lr=0.05, final_lr=0.01,
                          weight_decay=0.0, patience=100, coverage=4.0)
        fit(model, _weighted_mse, [movie, clip], [], cfg, device=torch.device("cpu"))
        slopes[weight] = model.readout.weight[0, 0].item()
    assert slopes[1.0] < 1.6 and slopes[50.0] > slopes[1.0] + 0.7


def _weighted_mse(p: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    w = torch.ones_like(t) if w is None else w
    return (w * (p - t) ** 2).sum() / w.sum()


def test_learning_rate_schedule_follows_the_paper() -> None:
    cfg = TrainConfig(epochs=20, warmup_epochs=5, warmup_start_lr=5e-5, lr=8e-4, final_lr=1e-4)
    assert lr_at(0, 10, cfg) == pytest.approx(5e-5)
    assert lr_at(50, 10, cfg) == pytest.approx(8e-4)
    assert lr_at(199, 10, cfg) == pytest.approx(1e-4, rel=0.01)
    lrs = [lr_at(s, 10, cfg) for s in range(50, 200)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:], strict=False))


def test_feature_cache_reuses_and_never_serves_stale_features(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    tiny, pixels = load_backbone("tiny"), load_backbone("pixels")
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32), dtype=np.uint8)
    first = cache.features(tiny, frames)
    assert first.shape == (6, 32, 16, 16) and len(list(tmp_path.glob("*.h5"))) == 1
    np.testing.assert_array_equal(cache.features(tiny, frames), first)  # a hit
    assert len(list(tmp_path.glob("*.h5"))) == 1
    changed = frames.copy()
    changed[3, 0, 0] ^= 1
    assert not np.array_equal(cache.features(tiny, changed)[3], first[3])
    assert cache.features(pixels, frames).shape == (6, 2, 16, 16)
    assert len(list(tmp_path.glob("*.h5"))) == 3
    # Same spec, different weights: a different fingerprint, so a different cache entry.
    other = load_backbone("tiny")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert backbone_fingerprint(other) != backbone_fingerprint(tiny)


class _Linear(torch.nn.Module):
    receptive_field = 1

    def __init__(self) -> None:
        super().__init__()
        self.readout = torch.nn.Linear(3, 1)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.readout(inp)


def _mse(p: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    return ((p - t) ** 2).mean()


def test_fit_learns_and_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)).astype(np.float32)
    y = np.maximum(0, x @ np.array([[1.0], [-0.5], [0.2]], np.float32) + 1)
    train, val = [Block(x[:500], y[:500])], [Block(x[500:], y[500:])]
    cfg = TrainConfig(epochs=12, window=50, batch_size=8, warmup_epochs=1, lr=0.05, final_lr=0.01,
                      weight_decay=0.0, patience=100, coverage=8.0)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    straight = _Linear()
    result = fit(straight, _mse, train, val, cfg, device=cpu)
    assert result.best_val_loss < 0.1 * result.val_loss[0]

    calls = 0

    def crashing(p: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 50:  # mid-epoch 4 (10 batches + 1 validation call per epoch)
            raise KeyboardInterrupt
        return _mse(p, t)

    state = tmp_path / "state.pt"
    torch.manual_seed(0)
    model = _Linear()
    with pytest.raises(KeyboardInterrupt):
        fit(model, crashing, train, val, cfg, device=cpu, state_path=state)
    assert torch.load(state, weights_only=False)["epoch"] == 3  # epochs 0..3 finished
    resumed = fit(_Linear(), _mse, train, val, cfg, device=cpu, state_path=state)
    assert resumed.val_loss == pytest.approx(result.val_loss)
    assert resumed.epochs_run == result.epochs_run


def test_readout_only_finetuning_leaves_the_rest_untouched(tiny_recording: Path, tiny_twin_dir: Path,
                                                           feature_cache_dir: Path, tmp_path: Path) -> None:
    twin = Twin.load(tiny_twin_dir)
    before = {k: v.clone() for k, v in twin.network.state_dict().items()}
    cfg = TrainConfig(epochs=1, warmup_epochs=1, readout_only=True)
    run = finetune_twin(twin, [(tiny_recording, ["mov1"]), (tiny_recording, ["noise"])], tmp_path / "ft",
                        config=cfg, cache=FeatureCache(feature_cache_dir), shares=[None, 0.5],
                        focus=[[], [LossFocus("noise", 3, 10, 13)]], focus_weight=20.0)
    after = run.twin.network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("readout.") for k in changed)
    reloaded = Twin.load(tmp_path / "ft")
    (history,) = reloaded.metadata.training["finetune"]
    assert history["shares"] == [None, 0.5] and history["focus_weight"] == 20.0
    assert history["focus"] == [[], [{"segment": "noise", "cell_index": 3, "start": 10, "stop": 13}]]


def test_checkpoint_round_trip_carries_its_metadata(tiny_recording: Path, tiny_twin_dir: Path) -> None:
    twin = Twin.load(tiny_twin_dir)
    meta = twin.metadata
    with open_recording(tiny_recording) as rec:
        assert meta.cell_ids == tuple(int(i) for i in rec.cell_ids)
        assert meta.frame_rate == rec.frame_rate and meta.pixel_size_um == rec.pixel_size_um
        np.testing.assert_array_equal(meta.rf, rec.rf)
        frames = rec.frames("mov2")
    assert meta.frame_shape == (32, 32) and meta.backbone["name"] == "tiny"
    assert meta.backbone["pretrained"] is False and "fingerprint" in meta.backbone
    assert meta.training["train_segments"] == ["mov1"]
    again = Twin.load(tiny_twin_dir / "model.pt")
    np.testing.assert_allclose(twin.predict(frames), again.predict(frames), rtol=1e-6)
    with pytest.raises(ValueError, match="trained on 32x32"):
        twin.predict(np.zeros((5, 16, 16), np.uint8))


def test_a_checkpoint_from_another_transformers_release_loads(tiny_recording: Path, tiny_twin_dir: Path,
                                                              tmp_path: Path) -> None:
    payload = torch.load(tiny_twin_dir / "model.pt", weights_only=False)
    here = payload["backbone_state"]

    def other_naming(key: str) -> str:
        for old, new in DINOV2_RENAMES:
            if old in key:
                return key.replace(old, new)
            if new in key:
                return key.replace(new, old)
        return key

    # What the same twin looks like saved beside a release that names the attention otherwise.
    there = {other_naming(k): v for k, v in here.items()}
    assert set(there) != set(here)
    spec = load_backbone("tiny").spec
    payload["backbone_state"] = there
    payload["metadata"]["backbone"]["fingerprint"] = state_fingerprint(spec, there)
    torch.save(payload, tmp_path / "other.pt")
    with open_recording(tiny_recording) as rec:
        frames = rec.frames("mov2")[:60]
    other = Twin.load(tmp_path / "other.pt")
    np.testing.assert_allclose(other.predict(frames), Twin.load(tiny_twin_dir).predict(frames), rtol=1e-6)
    other.save(tmp_path / "again.pt")  # e.g. fine-tuned here: saved under this release's names
    np.testing.assert_allclose(Twin.load(tmp_path / "again.pt").predict(frames), other.predict(frames), rtol=1e-6)

    payload["backbone_state"] = {k: v for k, v in there.items() if "layer.1." not in k}
    payload["metadata"]["backbone"]["fingerprint"] = state_fingerprint(spec, payload["backbone_state"])
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="broken.pt: backbone weights do not fit 'tiny'.*missing"):
        Twin.load(tmp_path / "broken.pt")


def test_bad_checkpoints_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nonsense")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        Twin.load(junk)
    torch.save({"format": "something"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an insilico twin"):
        Twin.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no twin checkpoint"):
        Twin.load(tmp_path / "absent")


@pytest.mark.parametrize("kind", ["ln", "cnn"])
def test_baselines_train_and_evaluate_on_the_same_pipeline(kind: str, tiny_recording: Path, tmp_path: Path) -> None:
    run = train_twin(tiny_recording, ["mov1"], tmp_path / kind, spec=TwinSpec(kind=kind),
                     config=TrainConfig(epochs=2, warmup_epochs=1))
    assert run.twin.backbone is None and run.twin.metadata.describe_backbone().startswith("none")
    result = evaluate_twin(Twin.load(tmp_path / kind), tiny_recording, "mov2")
    assert result.metrics.n_repeats == 5 and np.isfinite(result.metrics.cc).all()


def test_train_then_evaluate_end_to_end(tiny_recording: Path, tiny_twin_dir: Path, tmp_path: Path) -> None:
    assert (tiny_twin_dir / "loss_curve.png").stat().st_size > 1000
    summary = json.loads((tiny_twin_dir / "train.json").read_text())
    assert summary["kind"] == "vist" and summary["epochs_run"] == 2
    result = evaluate_twin(Twin.load(tiny_twin_dir), tiny_recording, "mov2", traces_png=tmp_path / "t.png")
    write_evaluation(result, tmp_path / "e.json", tmp_path / "c.csv")
    data = json.loads((tmp_path / "e.json").read_text())
    for key in ("cc_mean", "feve_mean", "noise_ceiling_mean", "sd_kl_mean", "model", "backbone"):
        assert key in data
    assert [c["id"] for c in data["per_cell"]] == list(Twin.load(tiny_twin_dir).metadata.cell_ids)
    assert (tmp_path / "c.csv").read_text().startswith("id,cc,feve,sd_kl")
    assert (tmp_path / "t.png").stat().st_size > 1000

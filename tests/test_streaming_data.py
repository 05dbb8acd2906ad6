"""The streamed data path: windows read from the feature cache and the recording, never a segment.

The in-memory path these compare against is the one training used before (issue 24): whole
segments' features as float32 arrays, trial averages as arrays, validation in one pass.
"""

from __future__ import annotations

import io
import pickle
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from insilico.console import LineProgress, progress
from rig_bridge.retina.recording import SimulationConfig, simulate_recording
from stimuli.recording import open_recording
from vist_model.data import Block, RecordingFrames, TrialAverage, make_split, trial_average
from vist_model.features import CachedFeatures, FeatureCache, frames_hash
from vist_model.fit_twin import TwinSpec, new_twin, train_twin, twin_loss
from vist_model.receptive_fields import receptive_fields
from vist_model.train import TrainConfig, evaluate_loss, fit

# Short windows (the Vi-ST loss needs 40 frames) keep an epoch to seconds on a loaded CPU.
CONFIG = TrainConfig(epochs=1, warmup_epochs=1, window=40, batch_size=2, coverage=0.3)


def _in_memory_blocks(twin, rec, ranges, cache: FeatureCache) -> list[Block]:
    """Blocks as training built them before streaming: whole arrays in memory."""
    blocks = []
    for r in ranges:
        seg = rec.segment(r.name)
        inputs = np.asarray(twin.inputs(rec.frames(r.name), cache))
        blocks.append(Block(inputs[r.start - seg.start:r.stop - seg.start], trial_average(rec, r)))
    return blocks


def test_one_streamed_epoch_gives_the_losses_of_the_in_memory_path(
        tiny_recording: Path, feature_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(feature_cache_dir)
    spec = TwinSpec(kind="vist", preset="cpu", backbone="tiny")
    streamed = train_twin(tiny_recording, ["mov1"], tmp_path / "run", spec=spec, config=CONFIG,
                          device="cpu", cache=cache).result
    with open_recording(tiny_recording) as rec:
        split = make_split(rec, ["mov1"], [])
        rfs = receptive_fields(rec)
        torch.manual_seed(CONFIG.seed)  # as train_twin seeds the network's initial weights
        twin = new_twin(rec, spec, rfs.maps, rfs.source)
        train = _in_memory_blocks(twin, rec, split.train, cache)
        val = _in_memory_blocks(twin, rec, split.val, cache)
    in_memory = fit(twin.network, twin_loss(twin), train, val, CONFIG, device=torch.device("cpu"))
    assert streamed.train_loss == pytest.approx(in_memory.train_loss, rel=1e-5)
    assert streamed.val_loss == pytest.approx(in_memory.val_loss, rel=1e-5)
    # ... and validation in pieces (here 3 of 128 frames) gives the loss of one pass over the block.
    monkeypatch.setattr("vist_model.train.EVAL_CHUNK_BYTES", 128 * 32 * 16 * 16 * 4)  # 128 `tiny` frames
    network, loss = twin.network.eval(), twin_loss(twin)
    long = Block(train[0].inputs[:300], train[0].targets[:300])
    with torch.no_grad():
        one_pass = float(loss(network(torch.from_numpy(long.inputs)[None]), torch.from_numpy(long.targets)[None]))
    assert evaluate_loss(network, loss, [long], torch.device("cpu")) == pytest.approx(one_pass, rel=1e-5)


def _peak_training_bytes(path: Path, out: Path, cache: FeatureCache) -> int:
    tracemalloc.start()
    try:
        train_twin(path, ["mov1"], out, spec=TwinSpec(kind="vist", preset="cpu", backbone="pixels"),
                   config=replace(CONFIG, coverage=0.1), device="cpu", cache=cache)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_training_memory_does_not_grow_with_the_movie(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # numpy's buffers are traced. The old path held a segment's float32 features and its
    # trial average (2,160 training frames here: 5 MB of `pixels` features, 4x that of the
    # short movie); the streamed one holds a window, a batch of extraction and a validation
    # piece, which shorter pieces keep below both movies' validation blocks.
    monkeypatch.setattr("vist_model.train.EVAL_CHUNK_BYTES", 16 * 2 * 16 * 16 * 4, raising=False)  # 16 frames
    cache = FeatureCache(tmp_path / "features")
    recordings = {}
    for seconds in (20, 80):
        config = SimulationConfig(n_cells=12, size=32, train_seconds=seconds, test_seconds=2, noise_seconds=4)
        recordings[seconds] = simulate_recording(tmp_path / f"rec{seconds}.h5", config)
    _peak_training_bytes(recordings[20], tmp_path / "warm-up", cache)  # first-call imports and caches
    peaks = {s: _peak_training_bytes(path, tmp_path / f"run{s}", cache) for s, path in recordings.items()}
    assert peaks[80] < 1.25 * peaks[20], peaks


def test_lazy_sources_read_what_the_file_holds_and_survive_pickling(tiny_recording: Path, tmp_path: Path) -> None:
    from vist_model.backbone import load_backbone

    with open_recording(tiny_recording) as rec:
        seg = rec.segment("mov2")
        frames, counts = rec.frames("mov2"), rec.counts("mov2")
    lazy = RecordingFrames(tiny_recording, seg.start, seg.stop)
    assert lazy.shape == frames.shape and frames_hash(lazy) == frames_hash(frames)  # one cache entry
    np.testing.assert_array_equal(lazy[5:40], frames[5:40])
    targets = TrialAverage(tiny_recording, seg.start, seg.stop)
    np.testing.assert_allclose(targets[3:9], np.nanmean(counts[:, 3:9], axis=0))
    features = FeatureCache(tmp_path).features(load_backbone("pixels"), lazy, batch_size=7)
    assert isinstance(features, CachedFeatures) and features.shape == (len(frames), 2, 16, 16)
    copy = pickle.loads(pickle.dumps(features))  # as a DataLoader worker gets it
    np.testing.assert_array_equal(copy[10:20], features[10:20])
    assert pickle.loads(pickle.dumps(lazy))[3].shape == frames.shape[1:]
    with pytest.raises(IndexError, match="contiguous"):
        lazy[::2]


def test_a_log_gets_a_line_per_epoch_with_elapsed_time_and_an_estimate() -> None:
    out = io.StringIO()
    with progress(Console(file=out)) as bar:  # not a terminal
        assert isinstance(bar, LineProgress)
        epochs = bar.add_task("train", total=3, status="")
        bar.update(epochs, advance=1, status="loss 0.5000 val 0.6000")
        assert out.getvalue().splitlines() == ["train 1/3 loss 0.5000 val 0.6000 | elapsed 0:00:00, left ~0:00:00"]
        frames = bar.add_task("features", total=1000, status="")
        for _ in range(0, 1000, 10):
            bar.update(frames, advance=10)
    lines = out.getvalue().splitlines()
    assert len([line for line in lines if line.startswith("features")]) == 20  # every 5%, not every batch
    assert lines[-1] == "features 1000/1000 | elapsed 0:00:00"

"""Train, fine-tune and save a twin from recording files: what `insilico train` calls."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from stimuli.errors import InputError
from stimuli.files import write_json
from stimuli.recording import Recording, open_recording
from vist_model.accuracy import HeldOutAccuracy, held_out_segment
from vist_model.backbone import DEFAULT_BACKBONE, load_backbone
from vist_model.data import (
    Block,
    DataSplit,
    FrameRange,
    LossFocus,
    RecordingFrames,
    TrialAverage,
    close_rows,
    focus_weights,
    make_split,
    read_rows,
    row_range,
    shared_out,
)
from vist_model.evaluate import evaluate_twin
from vist_model.features import FeatureCache
from vist_model.ln_fit import fit_ln
from vist_model.loss import PoissonLoss, ViSTLoss
from vist_model.metrics import pearson_per_cell
from vist_model.plots import plot_loss_curve
from vist_model.provenance import data_record
from vist_model.receptive_fields import (
    ReceptiveFields,
    cell_locations,
    receptive_fields,
    rf_to_grid,
)
from vist_model.train import (
    TrainConfig,
    TrainResult,
    evaluate_loss,
    fit,
    is_main_process,
    predict_rows,
    training_for,
)
from vist_model.twin import (
    MODEL_KINDS,
    TRAIN_STATE,
    Twin,
    TwinMetadata,
    backbone_metadata,
    baseline_config,
    build_network,
)
from vist_model.vist import MASKED_READOUTS, ViST, vist_config


@dataclass(frozen=True)
class TwinSpec:
    """What to build: model kind, Vi-ST preset and backbone, RF conditioning, readout and padding.

    `readout` ("dense", "factorized" or "dog", `vist_model.readout`), `cmst_padding` ("valid" or
    "same"), `spatial_kernel` (odd) and `output` ("linear" or "softplus",
    `vist_model.vist.ViSTConfig`), `map_channels` (the maps the core carries to the readout) and
    `linear_maps` (maps the readout reads linearly from the features) override the preset's when
    given. `loss` ("vist", the paper's composite loss, or "poisson") overrides the default that
    `loss_for` picks.
    """

    kind: str = "vist"
    preset: str = "cpu"
    backbone: str = DEFAULT_BACKBONE
    rf_conditioning: str = "sum"
    readout: str | None = None
    cmst_padding: str | None = None
    spatial_kernel: int | None = None
    output: str | None = None
    loss: str | None = None
    map_channels: int | None = None
    linear_maps: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise InputError(f"model kind must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        if self.loss is not None and self.loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")


@dataclass(frozen=True)
class TrainedRun:
    twin: Twin
    result: TrainResult
    split: DataSplit
    run_dir: Path
    rf_source: str


DEFAULT_SPEC = TwinSpec()
# Fine-tuning starts from a trained twin: a shorter warm-up and a lower peak rate.
DEFAULT_FINETUNING = TrainConfig(epochs=20, warmup_epochs=2, lr=3e-4, patience=6)


def resolve_device(device: str | None) -> torch.device:
    """`auto` (or None) picks CUDA when present; an unavailable device is refused clearly."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: no CUDA GPU is visible to torch on this machine")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        # Under torchrun each process drives its own GPU of this machine.
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return torch.device(device)


LOSSES = ("vist", "poisson")


def default_loss(kind: str, network: dict[str, Any]) -> str:
    """The loss a network trains on unless told otherwise.

    A linear Vi-ST output (published) trains on the paper's composite loss, which penalises
    negative rates; rates that are positive by construction (Vi-ST's softplus output, the LN
    and CNN baselines as in McIntosh et al. 2016) train on the Poisson likelihood of the counts.
    """
    linear = kind == "vist" and network.get("output", "linear") == "linear"
    return "vist" if linear else "poisson"


def loss_for(kind: str, network: dict[str, Any], loss: str | None = None) -> nn.Module:
    """The training loss module for a network (`loss` None: `default_loss`)."""
    name = loss or default_loss(kind, network)
    if name == "poisson" and kind == "vist" and network.get("output", "linear") == "linear":
        raise InputError("loss 'poisson' needs positive rates: use output 'softplus' with it")
    return ViSTLoss() if name == "vist" else PoissonLoss()


def twin_loss(twin: Twin) -> nn.Module:
    """The loss a twin was trained on (fine-tuning keeps it)."""
    spec = (twin.metadata.training or {}).get("spec", {})
    return loss_for(twin.metadata.kind, twin.metadata.network, spec.get("loss"))


def _blocks(twin: Twin, rec: Recording, ranges: tuple[FrameRange, ...], cache: FeatureCache,
            focus: Sequence[LossFocus] = (), focus_weight: float = 1.0) -> list[Block]:
    """Training or validation blocks whose inputs and targets are read from their files per window."""
    blocks = []
    for segment in sorted({r.name for r in ranges}):
        seg = rec.segment(segment)
        # Features are cached per whole segment, so train/val cuts and fine-tuning share them.
        frames = RecordingFrames(rec.path, seg.start, seg.stop)
        inputs = twin.inputs(frames, cache)
        frames.close()  # pixel inputs reopen it when a window is read
        here = [f for f in focus if f.segment == segment]
        for r in (r for r in ranges if r.name == segment):
            targets = TrialAverage(rec.path, r.start, r.stop)
            weights = focus_weights(r.start - seg.start, targets, here, focus_weight) if here else None
            blocks.append(Block(row_range(inputs, r.start - seg.start, r.stop - seg.start), targets,
                                loss_weights=weights))
    return blocks


def _release(blocks: Sequence[Block]) -> None:
    # Lazy blocks hold their files open; closed here so that a recording can be appended to
    # (the closed loop adds each round's segments to it) once training is over.
    for b in blocks:
        close_rows(b.inputs)
        close_rows(b.targets)


def new_twin(rec: Recording, spec: TwinSpec, rf_maps: np.ndarray, rf_source: str) -> Twin:
    """An untrained twin shaped for a recording's cells and screen."""
    _, h, w = rec.shape
    backbone = load_backbone(spec.backbone) if spec.kind == "vist" else None
    n = rec.n_cells
    if spec.kind == "vist":
        overrides = {k: v for k, v in (("readout", spec.readout), ("cmst_padding", spec.cmst_padding),
                                       ("spatial_kernel", spec.spatial_kernel), ("output", spec.output),
                                       ("map_channels", spec.map_channels), ("linear_maps", spec.linear_maps))
                     if v is not None}
        network = vist_config(spec.preset, n, backbone.spec.hidden_size, grid=backbone.spec.grid,
                              rf_conditioning=spec.rf_conditioning, **overrides).to_dict()
    else:
        network = baseline_config(spec.kind, n_cells=n, height=h, width=w)
    meta = TwinMetadata(
        kind=spec.kind, cell_ids=tuple(int(i) for i in rec.cell_ids), frame_rate=rec.frame_rate,
        frame_shape=(h, w), rf=rf_maps, rf_source=rf_source, network=network,
        pixel_size_um=rec.pixel_size_um,
        cell_types=tuple(rec.cell_types) if rec.cell_types else None,
        backbone=backbone_metadata(backbone) if backbone is not None else None,
    )
    return Twin(build_network(meta), meta, backbone)


def start_readout(twin: Twin, rec: Recording, rfs: ReceptiveFields, train: Sequence[FrameRange]) -> str:
    """Start a Vi-ST readout's masks where the cells are (`cell_locations`: the RFs, or without
    them the training movie's STA); returns what they were placed by. A network without
    readout masks is left alone, and the movie is not read for it."""
    network = twin.network
    if not (isinstance(network, ViST) and network.config.readout in MASKED_READOUTS):
        return "no readout masks to place"
    located = cell_locations(rec, rfs, train)
    if located is not rfs:
        network.start_readout_at(rf_to_grid(located.maps, network.config.grid))
    return located.source


def train_twin(
    data: str | Path,
    train_segments: list[str],
    out_dir: str | Path,
    *,
    spec: TwinSpec = DEFAULT_SPEC,
    config: TrainConfig | None = None,
    device: str | None = None,
    cache: FeatureCache | None = None,
    noise_segment: str | None = None,
    test_segments: list[str] = (),
    val_fraction: float = 0.1,
    progress: Progress | None = None,
) -> TrainedRun:
    """Train a twin on a recording's training segments and save it to `out_dir/model.pt`.

    `config` defaults to the preset's training (`vist_model.train.training_for`).

    Training state is saved after every epoch (`out_dir/train_state.pt`): the same call after an
    interruption continues where it stopped.
    """
    out = Path(out_dir)
    dev = resolve_device(device)
    cache = cache or FeatureCache()
    config = config or training_for(spec.preset)
    with open_recording(data) as rec:
        if not rec.has_responses:
            raise InputError(f"{data}: a stimulus-only file has no responses to train on")
        split = make_split(rec, train_segments, list(test_segments), val_fraction=val_fraction)
        rfs = receptive_fields(rec, noise_segment)
        torch.manual_seed(config.seed)  # the network's initial weights follow the run's seed
        twin = new_twin(rec, spec, rfs.maps, rfs.source).to(dev)
        readout_start = start_readout(twin, rec, rfs, split.train)
        train_blocks = _blocks(twin, rec, split.train, cache)
        val_blocks = _blocks(twin, rec, split.val, cache)
    loss = loss_for(spec.kind, twin.metadata.network, spec.loss)
    try:
        if spec.kind == "ln":
            result = _fit_ln_run(twin.network, loss, train_blocks, val_blocks, dev, rfs.maps)
        else:
            result = fit(twin.network, loss, train_blocks, val_blocks, config, device=dev,
                         state_path=out / TRAIN_STATE, progress=progress)
        accuracy = measure_accuracy(twin, data, list(train_segments), val_blocks, cache)
    finally:
        _release(train_blocks + val_blocks)
    training = {
        **data_record(data), "train_segments": list(train_segments), "split": asdict(split),
        "spec": asdict(spec), "config": asdict(config), "result": asdict(result),
        "device": str(dev), "torch": torch.__version__, "readout_start": readout_start,
    }
    twin.metadata = replace(twin.metadata, training=training, accuracy=accuracy)
    if is_main_process():  # under torchrun every rank trained the same twin
        _save_run(twin, result, out)
    return TrainedRun(twin, result, split, out, rfs.source)


def measure_accuracy(twin: Twin, data: str | Path, seen: Sequence[str], val_blocks: Sequence[Block],
                     cache: FeatureCache) -> HeldOutAccuracy:
    """Per-cell accuracy on the longest repeated segment not in `seen`, else on the validation frames."""
    with open_recording(data) as rec:
        segment = held_out_segment(rec, seen)
    if segment is not None:
        m = evaluate_twin(twin, data, segment, cache=cache).metrics
        return HeldOutAccuracy.from_metrics(segment, twin.metadata.cell_ids, m.cc, m.noise_ceiling,
                                            m.n_repeats, m.n_frames)
    n = twin.metadata.n_cells
    if not val_blocks:
        return HeldOutAccuracy.from_metrics("none", twin.metadata.cell_ids, np.full(n, np.nan),
                                            np.full(n, np.nan), 0, 0)
    with torch.no_grad():
        twin.network.eval()
        prediction = np.concatenate([predict_rows(twin.network, b.inputs, twin.device).clamp_min(0).cpu().numpy()
                                     for b in val_blocks])
    target = np.concatenate([read_rows(b.targets) for b in val_blocks])
    return HeldOutAccuracy.from_metrics("validation", twin.metadata.cell_ids, pearson_per_cell(prediction, target),
                                        np.full(n, np.nan), 1, len(target))


def _remeasure(twin: Twin, recordings: Sequence[tuple[str | Path, list[str]]], val_blocks: Sequence[Block],
               cache: FeatureCache) -> HeldOutAccuracy:
    """After fine-tuning: on the training recording's held-out segment again where it is still there."""
    data = twin.metadata.training.get("data")
    if data is not None and Path(data).is_file():
        seen = list(twin.metadata.training.get("train_segments", []))
        seen += [s for p, segs in recordings if Path(p).resolve() == Path(data).resolve() for s in segs]
        return measure_accuracy(twin, data, seen, val_blocks, cache)
    return measure_accuracy(twin, recordings[0][0], [s for _, segs in recordings for s in segs], val_blocks, cache)


def _fit_ln_run(model: nn.Module, loss: nn.Module, train: list[Block], val: list[Block],
                device: torch.device, rf_maps: np.ndarray | None = None) -> TrainResult:
    """The LN baseline's closed-form fit (`vist_model.ln_fit`), reported like a training run."""
    t0 = time.perf_counter()
    fit_ln(model.cpu(), train, val, rf_maps)
    model.to(device)
    train_loss = evaluate_loss(model, loss, train, device)
    val_loss = evaluate_loss(model, loss, val, device) if val else train_loss
    return TrainResult(train_loss=(train_loss,), val_loss=(val_loss,), best_epoch=0, best_val_loss=val_loss,
                       epochs_run=1, seconds=time.perf_counter() - t0, stopped_early=False)


def finetune_twin(
    twin: Twin,
    recordings: list[tuple[str | Path, list[str]]],
    out_dir: str | Path,
    *,
    config: TrainConfig = DEFAULT_FINETUNING,
    cache: FeatureCache | None = None,
    val_fraction: float = 0.1,
    shares: Sequence[float | None] | None = None,
    focus: Sequence[Sequence[LossFocus]] | None = None,
    focus_weight: float = 1.0,
    progress: Progress | None = None,
) -> TrainedRun:
    """Continue training a twin on new recordings (readout only if `config.readout_only`).

    `shares`, one per recording: the fraction of training windows drawn from it; recordings
    given None split the rest by length (all None, the default: by length alone).
    `focus`, one list per recording: cells and frames whose errors count `focus_weight` times
    in the loss (a designed clip's cell over its objective window, say).
    """
    out = Path(out_dir)
    cache = cache or FeatureCache()
    if shares is not None and len(shares) != len(recordings):
        raise InputError(f"{len(shares)} shares for {len(recordings)} recordings")
    if focus is not None and len(focus) != len(recordings):
        raise InputError(f"{len(focus)} focus lists for {len(recordings)} recordings")
    if not focus_weight > 0:
        raise InputError(f"focus_weight must be > 0, got {focus_weight}")
    groups: list[list[Block]] = []
    val_blocks: list[Block] = []
    split = None
    for k, (path, segments) in enumerate(recordings):
        here = focus[k] if focus is not None else ()
        with open_recording(path) as rec:
            ids = tuple(int(i) for i in rec.cell_ids)
            if ids != twin.metadata.cell_ids:
                raise InputError(f"{path}: its cells {ids[:5]}... are not the twin's cells {twin.metadata.cell_ids[:5]}...")
            split = make_split(rec, segments, val_fraction=val_fraction, min_val_frames=min(32, config.window))
            groups.append(_blocks(twin, rec, split.train, cache, here, focus_weight))
            val_blocks += _blocks(twin, rec, split.val, cache)
    train_blocks = shared_out(groups, shares or [None] * len(groups), config.window)
    try:
        result = fit(twin.network, twin_loss(twin), train_blocks, val_blocks, config,
                     device=twin.device, state_path=out / TRAIN_STATE, progress=progress)
        accuracy = _remeasure(twin, recordings, val_blocks, cache)
    finally:
        _release(train_blocks + val_blocks)
    history = list(twin.metadata.training.get("finetune", []))
    history.append({"recordings": [[str(Path(p).resolve()), s] for p, s in recordings], "config": asdict(config),
                    "shares": list(shares) if shares is not None else None,
                    "focus": [[asdict(f) for f in fs] for fs in focus] if focus is not None else None,
                    "focus_weight": focus_weight, "result": asdict(result)})
    twin.metadata = replace(twin.metadata, training={**twin.metadata.training, "finetune": history},
                            accuracy=accuracy)
    if is_main_process():  # under torchrun every rank trained the same twin
        _save_run(twin, result, out)
    return TrainedRun(twin, result, split, out, twin.metadata.rf_source)


def _save_run(twin: Twin, result: TrainResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    twin.save(out / "model.pt")
    summary: dict[str, Any] = {
        "kind": twin.metadata.kind, "backbone": twin.metadata.describe_backbone(),
        "cells": twin.metadata.n_cells, "rf_source": twin.metadata.rf_source,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"), **asdict(result),
    }
    write_json(out / "train.json", summary)
    plot_loss_curve(result.train_loss, result.val_loss, result.best_epoch, out / "loss_curve.png",
                    title=f"{twin.metadata.kind} ({twin.metadata.describe_backbone()})")
    (out / TRAIN_STATE).unlink(missing_ok=True)  # finished: a rerun starts afresh

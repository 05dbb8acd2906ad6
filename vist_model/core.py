"""A new retina on a trained core: fit only its readout, in minutes, from a short recording.

`fit_on_core` takes the core (TCN -> AdaLN -> CMST, `vist_model.multi.CORE_MODULES`) of a
shared-core run (`vist_model.multi.train_shared_core`) or of any single-recording Vi-ST twin
whose core does not depend on its cells (`check_shareable`), builds a network for the new
recording's cells (its RF maps condition AdaLN, and each cell's readout mask starts at its
RF centre, or without RFs where its STA of the training movie peaks, `start_readout`), copies the core
in bit for bit and trains the readout alone with the core frozen: the core's maps are
computed once over the recording (eval mode: BatchNorm statistics and dropout frozen too) and
the readout is trained on them, so a step costs a readout, not a pass through the core. `finetune_core` then trains the whole network briefly at a small
learning rate. The result is a normal single-recording twin: `optimize`, `attribute` and
`run` take it as they take any other.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor, nn

from stimuli.errors import InputError
from stimuli.recording import open_recording
from vist_model.core_index import is_shared_core
from vist_model.data import Block, Rows, make_split, read_rows
from vist_model.features import FeatureCache
from vist_model.fit_twin import (
    TrainedRun,
    _blocks,
    _release,
    _save_run,
    measure_accuracy,
    resolve_device,
    start_readout,
    twin_loss,
)
from vist_model.multi import SharedCoreTwin, check_shareable, copy_core
from vist_model.provenance import data_record
from vist_model.receptive_fields import receptive_fields
from vist_model.train import CPU_TRAINING, TrainConfig, TrainResult, fit
from vist_model.twin import Twin, TwinMetadata, build_network
from vist_model.vist import ViST

__all__ = ["CORE_FITTING", "CORE_FINETUNING", "LoadedCore", "fit_on_core", "load_core"]

CORE_FITTING = replace(CPU_TRAINING, epochs=20, coverage=16.0, lr=2e-2, final_lr=2e-3, patience=5)
"""Fitting a readout on a frozen core's maps (computed once, `_fit_readout`): steps are cheap, so
many more of them than the `cpu` preset's, at a higher rate (a readout is a few thousand
parameters, starting from equal weights over the maps)."""

CORE_FINETUNING = replace(CPU_TRAINING, epochs=4, warmup_epochs=1, lr=2e-4, final_lr=5e-5, patience=2)
"""The optional second stage (`finetune_core`): the whole network, a few epochs at a small rate."""


@dataclass(frozen=True)
class LoadedCore:
    twin: Twin  # a Vi-ST twin whose network's tcn, adaln and cmst are the core
    path: Path
    recordings: tuple[str, ...]  # the recordings the core was trained on


def load_core(path: str | Path, device: str | torch.device = "cpu") -> LoadedCore:
    """The core of a shared-core run folder (`core.json`) or of a Vi-ST twin (`model.pt` or its folder)."""
    path = Path(path)
    if path.is_dir() and is_shared_core(path):
        shared = SharedCoreTwin.load(path, device=device)
        return LoadedCore(shared.twin(shared.names[0]), path, shared.names)
    twin = Twin.load(path, device=device)
    if twin.metadata.kind != "vist":
        raise InputError(f"{path}: a {twin.metadata.kind} twin has no core to fit a new retina onto (a Vi-ST twin has)")
    check_shareable(twin.network.config, str(path))
    data = twin.metadata.training.get("data")
    return LoadedCore(twin, path, (Path(data).stem,) if data else ())


def fit_on_core(
    core: str | Path | LoadedCore,
    data: str | Path,
    train_segments: Sequence[str],
    out_dir: str | Path,
    *,
    config: TrainConfig = CORE_FITTING,
    finetune_core: bool = False,
    finetune_config: TrainConfig = CORE_FINETUNING,
    device: str | None = None,
    cache: FeatureCache | None = None,
    noise_segment: str | None = None,
    test_segments: Sequence[str] = (),
    val_fraction: float = 0.1,
    progress: Progress | None = None,
) -> TrainedRun:
    """Fit a new recording's readout onto a trained core; save the twin to `out_dir/model.pt`.

    Stages: load the core -> a network for the new cells, the core copied in -> fit the readout
    on the frozen core's maps (`config`) -> with `finetune_core`, train everything
    (`finetune_config`) -> measure held-out accuracy -> save.
    """
    out = Path(out_dir)
    dev = resolve_device(device)
    cache = cache or FeatureCache()
    source = core if isinstance(core, LoadedCore) else load_core(core, device=dev)
    with open_recording(data) as rec:
        if not rec.has_responses:
            raise InputError(f"{data}: a stimulus-only file has no responses to train on")
        if abs(float(rec.frame_rate) - source.twin.metadata.frame_rate) > 1e-6:
            raise InputError(f"{data}: frame rate {rec.frame_rate:g} Hz; the core ({source.path}) was trained at "
                             f"{source.twin.metadata.frame_rate:g} Hz and its filters are in frames")
        split = make_split(rec, list(train_segments), list(test_segments), val_fraction=val_fraction,
                           min_val_frames=min(32, config.window))
        rfs = receptive_fields(rec, noise_segment)
        _, h, w = rec.shape
        meta = TwinMetadata(
            kind="vist", cell_ids=tuple(int(i) for i in rec.cell_ids), frame_rate=rec.frame_rate,
            frame_shape=(h, w), rf=rfs.maps, rf_source=rfs.source,
            network={**source.twin.metadata.network, "n_cells": rec.n_cells}, pixel_size_um=rec.pixel_size_um,
            cell_types=tuple(rec.cell_types) if rec.cell_types else None, backbone=source.twin.metadata.backbone,
        )
        torch.manual_seed(config.seed)  # the readout's initial weights (its masks start at the RFs)
        twin = Twin(build_network(meta), meta, source.twin.backbone).to(dev)
        copy_core(source.twin.network, twin.network)
        readout_start = start_readout(twin, rec, rfs, split.train)
        train_blocks = _blocks(twin, rec, split.train, cache)
        val_blocks = _blocks(twin, rec, split.val, cache)
    loss = twin_loss(source.twin)
    stages: list[TrainResult] = []
    try:
        stages.append(_fit_readout(twin.network, loss, train_blocks, val_blocks, config, dev, out, progress))
        if finetune_core:
            stages.append(fit(twin.network, loss, train_blocks, val_blocks, replace(finetune_config, readout_only=False),
                              device=dev, progress=progress))
        accuracy = measure_accuracy(twin, data, list(train_segments), val_blocks, cache)
    finally:
        _release(train_blocks + val_blocks)
    result = _combined(stages)
    training = {
        **data_record(data), "train_segments": list(train_segments), "split": asdict(split),
        "spec": dict(source.twin.metadata.training.get("spec") or {}), "config": asdict(config),
        "readout_start": readout_start,
        "result": asdict(result), "device": str(dev), "torch": torch.__version__,
        "core": {"path": str(source.path.resolve()), "recordings": list(source.recordings),
                 "finetune_core": finetune_core, "stages": [asdict(s) for s in stages],
                 **({"finetune_config": asdict(finetune_config)} if finetune_core else {})},
    }
    twin.metadata = replace(twin.metadata, training=training, accuracy=accuracy)
    _save_run(twin, result, out)
    return TrainedRun(twin, result, split, out, rfs.source)


class _ReadoutOnMaps(nn.Module):
    """A network from its core's maps on: `maps [B, T, M, s, s] -> rates [B, T, N]` (readout and output).

    Only the readout is a submodule (the core is held outside the module tree), so training
    this trains the readout and nothing else.
    """

    def __init__(self, network: ViST) -> None:
        super().__init__()
        self.readout = network.readout
        self._network = (network,)

    def forward(self, maps: Tensor) -> Tensor:
        return self._network[0].rates_from_maps(maps.permute(0, 2, 1, 3, 4))


def _fit_readout(network: ViST, loss: nn.Module, train: list[Block], val: list[Block], config: TrainConfig,
                 device: torch.device, out: Path, progress: Progress | None) -> TrainResult:
    """Train the readout on the frozen core's maps, run once over the data instead of once per window.

    The maps go to temporary files beside the run (memory does not grow with the recording) and
    each is computed with the whole history before it (`_core_maps`), as `predict` runs the twin.
    """
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".core_maps-", dir=out) as tmp:
        t0 = time.perf_counter()
        maps = [replace(b, inputs=_core_maps(network, b.inputs, Path(tmp) / f"{k}.npy", device))
                for k, b in enumerate([*train, *val])]
        seconds = time.perf_counter() - t0
        result = fit(_ReadoutOnMaps(network), loss, maps[:len(train)], maps[len(train):],
                     replace(config, readout_only=False), device=device, progress=progress)
        del maps  # the memory maps close before their folder goes
    return replace(result, seconds=result.seconds + seconds)


@torch.no_grad()
def _core_maps(network: ViST, inputs: Rows, path: Path, device: torch.device, chunk: int = 512) -> np.ndarray:
    """The core's maps `[t, M, s, s]` of a block of inputs `[t, ...]`, in a memory-mapped file.

    Computed `chunk` frames at a time, each with the `receptive_field - 1` frames before it, so
    the maps equal one causal pass over the whole block.
    """
    network.eval()
    context = network.receptive_field - 1
    n = len(inputs)
    out: np.ndarray | None = None
    for start in range(0, n, chunk):
        lo = max(0, start - context)
        x = torch.from_numpy(read_rows(inputs, lo, min(n, start + chunk)))[None].to(device)
        m = network.maps(x)[0, :, start - lo:].permute(1, 0, 2, 3).float().cpu().numpy()
        if out is None:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *m.shape[1:]))
        out[start:start + len(m)] = m
    out.flush()
    return out


def _combined(stages: Sequence[TrainResult]) -> TrainResult:
    """One record of the stages run one after the other (the last stage's best epoch, counted overall)."""
    last = stages[-1]
    before = sum(s.epochs_run for s in stages[:-1])
    return TrainResult(
        train_loss=tuple(v for s in stages for v in s.train_loss), val_loss=tuple(v for s in stages for v in s.val_loss),
        best_epoch=before + last.best_epoch, best_val_loss=last.best_val_loss,
        epochs_run=before + last.epochs_run, seconds=sum(s.seconds for s in stages), stopped_early=last.stopped_early,
    )


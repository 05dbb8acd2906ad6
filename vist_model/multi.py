"""One Vi-ST core trained on several recordings, a readout per recording.

    features [B, T, C, g, g]  --  core: TCN -> AdaLN -> CMST (one set of weights)  -->  maps [B, M, T, g, g]
                                  recording A: its cells' RF maps (AdaLN's conditioning) and readout -> [B, T, N_A]
                                  recording B: ...                                                  -> [B, T, N_B]

The core does not depend on a recording's cells when the maps it carries are fixed in number
(`ViSTConfig.map_channels`, set by the `cpu` preset) and AdaLN is conditioned on the summed RF
map (`rf_conditioning="sum"`): then every recording's network is a plain `ViST` whose `tcn`,
`adaln` and `cmst` are the same modules, and only `readout` and the `rf_maps` buffer are its own.

A run folder of a shared core holds one normal twin per recording (`OUT/<name>/model.pt`, the
core and that recording's readout, its cells under their own ids) and `OUT/core.json` naming
them. Cells are namespaced by recording as `name:id` (`SharedCoreTwin.cell_labels`,
`SharedCoreTwin.locate("A:42")`); a stimulus is shown to one retina, so designing and
attributing work on one recording's twin: `insilico optimize --model OUT --cell A:42` (or
`--model OUT/A --cell 42`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from stimuli.errors import InputError, NotFoundError
from stimuli.files import atomic_path, write_json
from stimuli.recording import Recording, open_recording
from vist_model.accuracy import HeldOutAccuracy
from vist_model.core_index import CORE_INDEX
from vist_model.data import Block, DataSplit, WindowDataset, make_split, window_starts
from vist_model.features import FeatureCache
from vist_model.fit_twin import (
    DEFAULT_SPEC,
    TwinSpec,
    _blocks,
    _release,
    loss_for,
    measure_accuracy,
    new_twin,
    resolve_device,
    start_readout,
)
from vist_model.plots import plot_loss_curve
from vist_model.provenance import data_record
from vist_model.receptive_fields import receptive_fields
from vist_model.train import (
    LossFn,
    TrainConfig,
    TrainResult,
    evaluate_loss,
    lr_at,
    parameter_groups,
    seed_everything,
    training_for,
)
from vist_model.twin import TRAIN_STATE, Twin, build_network
from vist_model.vist import ViST, ViSTConfig

__all__ = ["CORE_MODULES", "SharedCoreRun", "SharedCoreTwin", "balanced_windows", "batch_order",
           "check_shareable", "copy_core", "core_recordings", "fit_shared", "recording_name",
           "tie_cores", "train_shared_core"]

CORE_MODULES = ("tcn", "adaln", "cmst", "linear")
"""The submodules of `ViST` that make up the core; `readout` and the `rf_maps` buffer are per recording."""

def check_shareable(config: ViSTConfig, where: str) -> None:
    """Refuse a Vi-ST config whose core depends on its recording's cells."""
    if config.map_channels is None:
        raise InputError(f"{where}: the network carries one map per cell (map_channels None), so its core depends "
                         "on the recording's cells; a shared core needs a fixed number of maps (the cpu preset)")
    if config.rf_conditioning != "sum":
        raise InputError(f"{where}: rf_conditioning {config.rf_conditioning!r} conditions AdaLN on each cell's map; "
                         "a shared core needs rf_conditioning 'sum'")


def recording_name(path: str | Path) -> str:
    """The name a recording goes by in a shared core: its file name without the suffix."""
    name = Path(path).stem
    if not name or ":" in name or name.startswith("."):
        raise InputError(f"{path}: a recording in a shared core is named by its file name, which must not "
                         "contain ':' (cells are named 'recording:id') or start with '.'")
    return name


def core_config(config: ViSTConfig) -> dict[str, Any]:
    """The fields of a config the core depends on (all but the number of cells)."""
    return {k: v for k, v in config.to_dict().items() if k != "n_cells"}


def tie_cores(networks: Sequence[ViST]) -> None:
    """Make every network use the first one's core modules (the same objects, so the same weights)."""
    first = networks[0]
    for net in networks[1:]:
        if core_config(net.config) != core_config(first.config):
            raise InputError("networks that share a core must have the same config apart from n_cells")
        for name in CORE_MODULES:
            setattr(net, name, getattr(first, name))


def copy_core(source: ViST, target: ViST) -> None:
    """Load `source`'s core weights into `target` (same config apart from n_cells), bit for bit."""
    if core_config(source.config) != core_config(target.config):
        raise InputError("the core's config differs from the network's (apart from n_cells)")
    for name in CORE_MODULES:
        getattr(target, name).load_state_dict(getattr(source, name).state_dict())


class SharedCoreTwin:
    """The twins of several recordings sharing one core: `twin(name)` is a normal `Twin` of one recording."""

    def __init__(self, twins: Mapping[str, Twin]) -> None:
        if not twins:
            raise InputError("a shared core needs at least one recording")
        for name, twin in twins.items():
            if twin.metadata.kind != "vist":
                raise InputError(f"recording {name!r}: a shared core is a Vi-ST core, got a {twin.metadata.kind} twin")
            check_shareable(twin.network.config, f"recording {name!r}")
        fingerprints = {t.fingerprint for t in twins.values()}
        if len(fingerprints) > 1:
            raise InputError("the twins of a shared core must use the same backbone weights")
        self.twins = dict(twins)
        tie_cores([t.network for t in self.twins.values()])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.twins)

    def twin(self, name: str) -> Twin:
        if name not in self.twins:
            raise NotFoundError(f"the core has no recording {name!r} (its recordings: {', '.join(self.names)})")
        return self.twins[name]

    @property
    def core(self) -> ViST:
        """A network whose `tcn`, `adaln` and `cmst` are the core (the first recording's)."""
        return next(iter(self.twins.values())).network

    @property
    def cell_labels(self) -> tuple[str, ...]:
        """Every cell as `recording:id`, recording by recording."""
        return tuple(f"{name}:{i}" for name, t in self.twins.items() for i in t.metadata.cell_ids)

    def locate(self, label: str) -> tuple[str, int]:
        """`"A:42"` -> `("A", 42)`, checked against the recording's cells."""
        name, sep, cell = str(label).rpartition(":")
        if not sep or not cell.strip().lstrip("-").isdigit():
            raise InputError(f"cell {label!r}: name a cell of a shared core as recording:id, e.g. "
                             f"{self.cell_labels[0] if self.cell_labels else 'A:42'}")
        twin = self.twin(name)
        twin.metadata.cell_index(int(cell))  # a KeyError naming the recording's ids if it has no such cell
        return name, int(cell)

    def save(self, out_dir: str | Path, summary: Mapping[str, Any] | None = None) -> Path:
        """One twin per recording (`OUT/<name>/model.pt`), then `OUT/core.json` naming them."""
        out = Path(out_dir)
        for name, twin in self.twins.items():
            twin.save(out / name / "model.pt")
        index = {"recordings": [{"name": name, "twin": f"{name}/model.pt", "cells": t.metadata.n_cells,
                                 "data": t.metadata.training.get("data")} for name, t in self.twins.items()],
                 **(summary or {})}
        write_json(out / CORE_INDEX, index)
        return out

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> SharedCoreTwin:
        """The twins a shared-core run folder names, with their cores tied again."""
        run = Path(run_dir)
        twins = {name: Twin.load(path, device=device) for name, path in core_recordings(run).items()}
        _check_same_core([t.network for t in twins.values()], run)
        return cls(twins)


def core_recordings(run_dir: str | Path) -> dict[str, Path]:
    """The recordings a shared-core run folder names -> each one's twin (`OUT/<name>/model.pt`)."""
    run = Path(run_dir)
    index_path = run / CORE_INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"{run}: no shared core here ({CORE_INDEX} is missing)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        return {str(r["name"]): run / str(r["twin"]) for r in index["recordings"]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{index_path}: not a shared-core index ({type(err).__name__}: {err})") from None


def _check_same_core(networks: Sequence[ViST], where: Path) -> None:
    # The core is saved once per recording's twin; copies that differ mean files from different runs.
    first = {k: v for k, v in networks[0].state_dict().items() if k.split(".")[0] in CORE_MODULES}
    for net in networks[1:]:
        other = {k: v for k, v in net.state_dict().items() if k.split(".")[0] in CORE_MODULES}
        if first.keys() != other.keys() or any(not torch.equal(first[k], other[k]) for k in first):
            raise InputError(f"{where}: its recordings' twins hold different cores (files of different runs?)")


@dataclass(frozen=True)
class SharedCoreRun:
    core: SharedCoreTwin
    result: TrainResult
    splits: dict[str, DataSplit]
    run_dir: Path


def train_shared_core(
    recordings: Sequence[tuple[str | Path, Sequence[str]]],
    out_dir: str | Path,
    *,
    spec: TwinSpec = DEFAULT_SPEC,
    config: TrainConfig | None = None,
    device: str | None = None,
    cache: FeatureCache | None = None,
    noise_segment: str | None = None,
    val_fraction: float = 0.1,
    progress: Progress | None = None,
) -> SharedCoreRun:
    """Train one core and a readout per recording; save one twin per recording under `out_dir`.

    `recordings`: `(file, training segments)` per recording, named by file name. Each epoch
    draws as many windows from every recording (balanced, however long each is), each batch
    from one recording. Every recording's twin is evaluated on its own held-out segment.
    Training state is saved after every epoch (`out_dir/train_state.pt`): the same call
    after an interruption continues where it stopped.
    """
    if spec.kind != "vist":
        raise InputError(f"a shared core is a Vi-ST core: model kind {spec.kind!r} has none")
    if len(recordings) < 1:
        raise InputError("name at least one recording")
    names = [recording_name(p) for p, _ in recordings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"recordings {twice} are named twice: a shared core names recordings by file name")
    out = Path(out_dir)
    dev = resolve_device(device)
    cache = cache or FeatureCache()
    config = config or training_for(spec.preset)
    twins: dict[str, Twin] = {}
    splits: dict[str, DataSplit] = {}
    train_blocks: dict[str, list[Block]] = {}
    val_blocks: dict[str, list[Block]] = {}
    readout_start: dict[str, str] = {}
    rates: set[float] = set()
    torch.manual_seed(config.seed)  # the core's initial weights follow the run's seed
    first: Twin | None = None
    try:
        for name, (path, segments) in zip(names, recordings, strict=True):
            with open_recording(path) as rec:
                if not rec.has_responses:
                    raise InputError(f"{path}: a stimulus-only file has no responses to train on")
                rates.add(float(rec.frame_rate))
                if len(rates) > 1:
                    raise InputError(f"{path}: frame rate {rec.frame_rate:g} Hz differs from the other recordings' "
                                     "(the core's filters are in frames): resample to one rate first")
                splits[name] = make_split(rec, list(segments), val_fraction=val_fraction)
                rfs = receptive_fields(rec, noise_segment)
                twin = _member_twin(rec, spec, rfs.maps, rfs.source, first)
                check_shareable(twin.network.config, str(path))
                twins[name] = twin.to(dev)
                readout_start[name] = start_readout(twin, rec, rfs, splits[name].train)
                first = first or twin
                train_blocks[name] = _blocks(twin, rec, splits[name].train, cache)
                val_blocks[name] = _blocks(twin, rec, splits[name].val, cache)
        shared = SharedCoreTwin(twins)
        loss = loss_for(spec.kind, first.metadata.network, spec.loss)
        result = fit_shared({n: t.network for n, t in twins.items()}, loss, train_blocks, val_blocks, config,
                            device=dev, state_path=out / TRAIN_STATE, progress=progress)
        accuracy = {n: measure_accuracy(twins[n], path, list(segs), val_blocks[n], cache)
                    for n, (path, segs) in zip(names, recordings, strict=True)}
    finally:
        _release([b for bs in (*train_blocks.values(), *val_blocks.values()) for b in bs])
    members = [{"name": n, "data": str(Path(p).resolve()), "cells": twins[n].metadata.n_cells}
               for n, (p, _) in zip(names, recordings, strict=True)]
    for name, (path, segments) in zip(names, recordings, strict=True):
        training = {
            **data_record(path), "train_segments": list(segments), "split": asdict(splits[name]),
            "spec": asdict(spec), "config": asdict(config), "result": asdict(result), "device": str(dev),
            "torch": torch.__version__, "readout_start": readout_start[name],
            "shared_core": {"recording": name, "recordings": members},
        }
        twins[name].metadata = replace(twins[name].metadata, training=training, accuracy=accuracy[name])
    summary = {"result": asdict(result), "accuracy": {n: _accuracy_summary(a) for n, a in accuracy.items()},
               "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
    shared.save(out, summary)
    plot_loss_curve(result.train_loss, result.val_loss, result.best_epoch, out / "loss_curve.png",
                    title=f"shared core of {len(names)} recordings ({first.metadata.describe_backbone()})")
    (out / TRAIN_STATE).unlink(missing_ok=True)  # finished: a rerun starts afresh
    return SharedCoreRun(shared, result, splits, out)


def _accuracy_summary(acc: HeldOutAccuracy) -> dict[str, Any]:
    ceilings = [c.noise_ceiling for c in acc.cells if c.noise_ceiling]
    return {"segment": acc.segment, "median_cc": acc.median_cc(), "cells": len(acc.cells),
            "median_noise_ceiling": float(np.median(ceilings)) if ceilings else None}


def _member_twin(rec: Recording, spec: TwinSpec, rf_maps: np.ndarray, rf_source: str, first: Twin | None) -> Twin:
    """An untrained twin of one recording; after the first, on the first's backbone and core config."""
    if first is None:
        return new_twin(rec, spec, rf_maps, rf_source)
    _, h, w = rec.shape
    network = {**first.metadata.network, "n_cells": rec.n_cells}
    meta = replace(first.metadata, cell_ids=tuple(int(i) for i in rec.cell_ids), frame_rate=rec.frame_rate,
                   frame_shape=(h, w), rf=rf_maps, rf_source=rf_source, network=network,
                   pixel_size_um=rec.pixel_size_um, cell_types=tuple(rec.cell_types) if rec.cell_types else None,
                   training={}, accuracy=None)
    return Twin(build_network(meta), meta, first.backbone)


def fit_shared(
    networks: Mapping[str, nn.Module],
    loss_fn: LossFn,
    train: Mapping[str, Sequence[Block]],
    val: Mapping[str, Sequence[Block]],
    cfg: TrainConfig,
    *,
    device: torch.device,
    state_path: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train networks that share modules (`tie_cores`), each on its own recording's blocks, in place.

    The schedule is `vist_model.train.fit`'s (AdamW, warm-up then cosine per step, early
    stopping on validation, best weights kept) with sampling balanced over recordings: an epoch
    holds about `coverage` x (all training frames / window) windows, split equally between the
    recordings, and each batch comes from one recording (their cells differ), in an order drawn
    from `(seed, epoch)`. The validation loss is the mean over recordings. One process only.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("training a shared core on several recordings runs in one process (not under torchrun)")
    names = list(networks)
    model = nn.ModuleDict(networks).to(device)  # tied modules are one set of parameters
    seed_everything(cfg.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameter_groups(model, trainable, cfg.weight_decay), lr=cfg.warmup_start_lr)
    data = balanced_windows(train, cfg)
    steps_per_epoch = sum(math.ceil(len(d) / cfg.batch_size) for d in data.values())
    bf16 = cfg.bf16 and device.type == "cuda"
    history_train: list[float] = []
    history_val: list[float] = []
    best: tuple[float, int] = (math.inf, -1)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_epoch = bad_epochs = step = 0
    seconds_before = 0.0
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        history_train, history_val = list(state["train_loss"]), list(state["val_loss"])
        best, best_state = tuple(state["best"]), state["best_state"]
        start_epoch, bad_epochs, step = state["epoch"] + 1, state["bad_epochs"], state["step"]
        seconds_before = state["seconds"]
        torch.set_rng_state(state["torch_rng"])
    t0 = time.perf_counter()
    task = progress.add_task("train", total=cfg.epochs, completed=start_epoch, status="") if progress else None
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        if bad_epochs >= cfg.patience:
            stopped_early = True
            break
        model.train()
        loaders = {}
        for n in names:
            data[n].set_epoch(epoch)
            loaders[n] = iter(torch.utils.data.DataLoader(data[n], batch_size=cfg.batch_size,
                                                          num_workers=cfg.num_workers))
        losses = []
        for n in batch_order(data, cfg.batch_size, cfg.seed, epoch):
            x, y, w = (t.to(device) for t in next(loaders[n]))
            for group in optimiser.param_groups:
                group["lr"] = lr_at(step, steps_per_epoch, cfg)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                pred = model[n](x)
            loss = loss_fn(pred.float(), y, w)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            step += 1
        history_train.append(float(np.mean(losses)))
        val_loss = float(np.mean([evaluate_loss(model[n], loss_fn, val[n], device) if val.get(n)
                                  else history_train[-1] for n in names]))
        history_val.append(val_loss)
        if val_loss < best[0]:
            best = (val_loss, epoch)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if state_path is not None:
            _save_state(state_path, {
                "model": model.state_dict(), "optimiser": optimiser.state_dict(), "train_loss": history_train,
                "val_loss": history_val, "best": best, "best_state": best_state, "epoch": epoch,
                "bad_epochs": bad_epochs, "step": step, "seconds": seconds_before + time.perf_counter() - t0,
                "torch_rng": torch.get_rng_state(), "config": asdict(cfg),
            })
        if progress is not None:
            progress.update(task, advance=1, status=f"loss {history_train[-1]:.4f} val {val_loss:.4f}")
    model.load_state_dict(best_state)
    return TrainResult(train_loss=tuple(history_train), val_loss=tuple(history_val), best_epoch=best[1],
                       best_val_loss=best[0], epochs_run=len(history_train),
                       seconds=seconds_before + time.perf_counter() - t0, stopped_early=stopped_early)


def balanced_windows(train: Mapping[str, Sequence[Block]], cfg: TrainConfig) -> dict[str, WindowDataset]:
    """Each recording's windows: as many per recording, about `coverage` x (all frames / window) in all."""
    usable = {n: sum(len(b.inputs) for b in blocks if window_starts(b, cfg.window)) for n, blocks in train.items()}
    for n, frames in usable.items():
        if not frames:
            raise InputError(f"recording {n!r}: no training block holds a {cfg.window}-frame window")
    total = max(len(usable), int(round(cfg.coverage * sum(usable.values()) / cfg.window)))
    per = math.ceil(total / len(usable))
    # The coverage at which each recording draws `per` windows (WindowDataset rounds coverage x frames / window).
    return {n: WindowDataset(train[n], window=cfg.window, seed=cfg.seed + k, coverage=per * cfg.window / usable[n])
            for k, n in enumerate(train)}


def batch_order(data: Mapping[str, WindowDataset], batch_size: int, seed: int, epoch: int) -> list[str]:
    """Which recording each of an epoch's batches comes from, shuffled from `(seed, epoch)`."""
    order = [n for n, d in data.items() for _ in range(math.ceil(len(d) / batch_size))]
    np.random.default_rng((seed, epoch)).shuffle(order)
    return order


def _save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


"""The training loop shared by Vi-ST and the baselines.

Random 128-frame windows, AdamW, linear warm-up then cosine decay (per step), early stopping
on held-out validation blocks, optional SWA, bf16 autocast on GPU, resumable from the state
saved after every epoch. Under `torchrun` it runs data-parallel (DistributedDataParallel) with
no change by the user: each rank draws its share of the same windows (`batch_size` windows a
step each, so a step sees world x batch_size), gradients are averaged, every rank validates
on the same blocks, the recorded training loss is the mean over all ranks, and rank 0 writes.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import Progress
from torch import Tensor, nn

from stimuli.errors import InputError
from stimuli.files import atomic_path
from vist_model.data import Block, Rows, WindowDataset, read_rows

LossFn = Callable[..., Tensor]  # (prediction, target[, weights]) -> scalar, all [B, T, N]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults follow Wu et al. 2024."""

    epochs: int = 60
    window: int = 128
    batch_size: int = 16
    lr: float = 8e-4
    weight_decay: float = 0.1
    warmup_epochs: int = 5
    warmup_start_lr: float = 5e-5
    final_lr: float = 1e-4
    patience: int = 12
    swa: bool = False
    swa_start: float = 0.75  # fraction of epochs after which SWA averages weights
    seed: int = 0
    coverage: float = 1.0  # windows per epoch, relative to (training frames / window)
    readout_only: bool = False  # fine-tuning: train only parameters under `readout`
    bf16: bool = True  # autocast on CUDA only
    num_workers: int = 0


CPU_TRAINING = TrainConfig(epochs=16, batch_size=4, coverage=4.0, lr=2e-3, final_lr=2e-4, warmup_epochs=1,
                           patience=4)
"""Training for the `cpu` preset. The published batch of 16 windows, one pass over the frames
per epoch, is sized for hours of recording on a GPU: on two minutes of recording it makes
two optimiser steps an epoch, and a CPU budget of epochs leaves the twin untrained. Batches
of 4, four passes an epoch and a higher peak rate give 28 steps an epoch on that recording
(docs/benchmarks.md, "Training settings of the `cpu` preset"). 16 epochs, not 8: at 8 the
validation loss was still falling and ON cells were the least learnt (docs/benchmarks.md, "ON cells")."""


def training_for(preset: str) -> TrainConfig:
    """The training defaults of a Vi-ST preset (`cpu`: `CPU_TRAINING`; `vist`: Wu et al. 2024)."""
    return CPU_TRAINING if preset == "cpu" else TrainConfig()


@dataclass(frozen=True)
class TrainResult:
    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    seconds: float
    stopped_early: bool


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate at an optimiser step: linear warm-up, then cosine down to `final_lr`."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = max(cfg.epochs * steps_per_epoch, warm + 1)
    if step < warm:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1 + math.cos(math.pi * progress))


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        return dist.get_rank(), world
    return 0, 1


def trainable_parameters(model: nn.Module, readout_only: bool) -> list[nn.Parameter]:
    if not readout_only:
        return [p for p in model.parameters() if p.requires_grad]
    params = [p for n, p in model.named_parameters() if n.split(".")[0] == "readout"]
    if not params:
        raise InputError("readout-only fine-tuning needs a model with a `readout` module")
    return params


def parameter_groups(model: nn.Module, params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW groups of `params`: weight decay on all but the shape parameters a module names in
    `SHAPE_PARAMETERS` (a DoG readout's centres, log-widths and surround weights), which decay
    would pull towards arbitrary values rather than towards a small model."""
    shape = {id(getattr(m, name)) for m in model.modules() for name in getattr(m, "SHAPE_PARAMETERS", ())}
    groups = [{"params": [p for p in params if id(p) not in shape], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) in shape], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _train_mode(model: nn.Module, readout_only: bool) -> None:
    model.train()
    if readout_only:
        # Frozen layers keep their BatchNorm statistics and dropout off, not only their weights.
        for name, child in model.named_children():
            if name != "readout":
                child.eval()


# Validation runs a block of any length in pieces (plus the network's history before each), so
# a block is never all in memory: at most this many bytes of float32 inputs (256 frames of
# DINOv2-large features) and at most `EVAL_CHUNK_FRAMES` frames (what the network's own
# activations allow: about the frames of a training batch). Long pieces keep the history that
# is run twice small against the piece (87 frames for the `cpu` preset).
EVAL_CHUNK_BYTES = 256 << 20
EVAL_CHUNK_FRAMES = 1024


@torch.no_grad()
def predict_rows(model: nn.Module, inputs: Rows, device: torch.device, chunk: int | None = None) -> Tensor:
    """Rates `[t, N]` of a causal model over inputs `[t, ...]`, `chunk` frames at a time
    (default: `EVAL_CHUNK_BYTES` of inputs).

    Each piece is run with the `receptive_field - 1` frames before it, so the rates equal one
    pass over the whole block; a model without `receptive_field` is run in one pass.
    """
    frame_bytes = 4 * int(np.prod(tuple(inputs.shape)[1:], dtype=np.int64))
    chunk = chunk or max(1, min(EVAL_CHUNK_FRAMES, EVAL_CHUNK_BYTES // max(1, frame_bytes)))
    context = getattr(model, "receptive_field", None)
    if context is None:
        chunk, context = len(inputs), 1
    context = int(context) - 1
    out = []
    for start in range(0, len(inputs), chunk):
        lo = max(0, start - context)
        x = torch.from_numpy(read_rows(inputs, lo, min(len(inputs), start + chunk)))[None].to(device)
        out.append(model(x)[0, start - lo:])
    return torch.cat(out)


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn: LossFn, blocks: Sequence[Block], device: torch.device) -> float:
    """Mean loss over whole validation blocks (each run once, start to end, in pieces)."""
    model.eval()
    losses = []
    for b in blocks:
        pred = predict_rows(model, b.inputs, device)[None]
        y = torch.from_numpy(read_rows(b.targets))[None].to(device)
        losses.append(float(loss_fn(pred, y)))
    return float(np.mean(losses)) if losses else float("nan")


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train: Sequence[Block],
    val: Sequence[Block],
    cfg: TrainConfig,
    *,
    device: torch.device,
    state_path: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train `model` in place; on return it holds the best (or SWA-averaged) weights.

    With `state_path`, the full training state is saved there after each epoch, and a run that
    finds it continues from the next epoch (same windows, same learning rates). Stages:
    set-up (optimiser, windows, DDP, SWA) -> resume -> one `_train_epoch` per epoch, each
    followed by validation, the SWA average and the saved state -> the final weights.
    """
    run = _Run.set_up(model, train, cfg, device)
    state = _FitState.initial(model)
    if state_path is not None and state_path.exists():
        state = _FitState.resume(state_path, run, device)
    t0 = time.perf_counter()
    task = progress.add_task("train", total=cfg.epochs, completed=state.epoch, status="") if progress else None
    stopped_early = False
    for epoch in range(state.epoch, cfg.epochs):
        if state.bad_epochs >= cfg.patience:
            stopped_early = True
            break
        state.train_loss.append(_train_epoch(run, state, loss_fn, epoch))
        val_loss = evaluate_loss(model, loss_fn, val, device) if val else state.train_loss[-1]
        state.end_epoch(epoch, val_loss, model)
        if run.swa is not None and epoch >= int(cfg.swa_start * cfg.epochs):
            run.swa.update_parameters(model)
        if state_path is not None and run.rank == 0:
            _save_state(state_path, state.checkpoint(run, epoch, time.perf_counter() - t0))
        if progress is not None:
            progress.update(task, advance=1, status=f"loss {state.train_loss[-1]:.4f} val {val_loss:.4f}")

    if run.swa is not None and run.swa.n_averaged.item() > 0:
        _swa_batchnorm(run.swa, run.loader, device)
        model.load_state_dict(run.swa.module.state_dict())
    else:
        model.load_state_dict(state.best_state)
    return TrainResult(
        train_loss=tuple(state.train_loss), val_loss=tuple(state.val_loss), best_epoch=state.best[1],
        best_val_loss=state.best[0], epochs_run=len(state.train_loss),
        seconds=state.seconds_before + time.perf_counter() - t0, stopped_early=stopped_early,
    )


@dataclass(frozen=True, eq=False)
class _Run:
    """What stays fixed through a training run: the model, its optimiser, windows, DDP and SWA wrappers."""

    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper under torchrun
    optimiser: torch.optim.Optimizer
    data: WindowDataset
    loader: torch.utils.data.DataLoader
    swa: torch.optim.swa_utils.AveragedModel | None
    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    bf16: bool  # autocast the forward pass to bfloat16 (CUDA only)

    @classmethod
    def set_up(cls, model: nn.Module, train: Sequence[Block], cfg: TrainConfig, device: torch.device) -> _Run:
        rank, world = _distributed()
        seed_everything(cfg.seed + rank)
        model.to(device)
        params = trainable_parameters(model, cfg.readout_only)
        if cfg.readout_only:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
        optimiser = torch.optim.AdamW(parameter_groups(model, params, cfg.weight_decay), lr=cfg.warmup_start_lr)
        data = WindowDataset(train, window=cfg.window, seed=cfg.seed, coverage=cfg.coverage)
        sampler = torch.utils.data.DistributedSampler(data, world, rank, shuffle=False) if world > 1 else None
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, sampler=sampler,
                                             num_workers=cfg.num_workers, drop_last=False)
        net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        swa = torch.optim.swa_utils.AveragedModel(model) if cfg.swa else None
        return cls(model=model, net=net, optimiser=optimiser, data=data, loader=loader, swa=swa, cfg=cfg,
                   device=device, rank=rank, world=world, bf16=cfg.bf16 and device.type == "cuda")


@dataclass
class _FitState:
    """What changes epoch by epoch (and what a resumed run reads back from `state_path`)."""

    train_loss: list[float]
    val_loss: list[float]
    best: tuple[float, int]  # (validation loss, epoch)
    best_state: dict[str, Tensor]
    epoch: int = 0  # the next epoch to run
    bad_epochs: int = 0
    step: int = 0
    seconds_before: float = 0.0  # wall time of the epochs run before a resume

    @classmethod
    def initial(cls, model: nn.Module) -> _FitState:
        return cls([], [], (math.inf, -1), {k: v.detach().clone() for k, v in model.state_dict().items()})

    @classmethod
    def resume(cls, path: Path, run: _Run, device: torch.device) -> _FitState:
        state = torch.load(path, map_location=device, weights_only=False)
        run.model.load_state_dict(state["model"])
        run.optimiser.load_state_dict(state["optimiser"])
        if run.swa is not None and state.get("swa") is not None:
            run.swa.load_state_dict(state["swa"])
        torch.set_rng_state(state["torch_rng"])
        return cls(list(state["train_loss"]), list(state["val_loss"]), tuple(state["best"]), state["best_state"],
                   epoch=state["epoch"] + 1, bad_epochs=state["bad_epochs"], step=state["step"],
                   seconds_before=state["seconds"])

    def end_epoch(self, epoch: int, val_loss: float, model: nn.Module) -> None:
        """Record an epoch's validation loss; keep the best weights (early stopping counts the rest)."""
        self.val_loss.append(val_loss)
        if val_loss < self.best[0]:
            self.best = (val_loss, epoch)
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1

    def checkpoint(self, run: _Run, epoch: int, seconds: float) -> dict:
        """The full state after `epoch`, as `state_path` holds it."""
        return {
            "model": run.model.state_dict(), "optimiser": run.optimiser.state_dict(),
            "train_loss": self.train_loss, "val_loss": self.val_loss, "best": self.best,
            "best_state": self.best_state, "epoch": epoch, "bad_epochs": self.bad_epochs, "step": self.step,
            "seconds": self.seconds_before + seconds,
            "swa": run.swa.state_dict() if run.swa is not None else None,
            "torch_rng": torch.get_rng_state(), "config": asdict(run.cfg),
        }


def _train_epoch(run: _Run, state: _FitState, loss_fn: LossFn, epoch: int) -> float:
    """One pass over the epoch's windows; returns the mean training loss (over every rank)."""
    cfg, device = run.cfg, run.device
    run.data.set_epoch(epoch)
    _train_mode(run.model, cfg.readout_only)
    losses = []
    steps_per_epoch = len(run.loader)
    for x, y, w in run.loader:
        for group in run.optimiser.param_groups:
            group["lr"] = lr_at(state.step, steps_per_epoch, cfg)
        x, y, w = x.to(device), y.to(device), w.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.bf16):
            pred = run.net(x)
        loss = loss_fn(pred.float(), y, w)
        run.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        run.optimiser.step()
        losses.append(loss.item())
        state.step += 1
    return _mean_over_ranks(losses, run.world)


def _mean_over_ranks(losses: list[float], world: int) -> float:
    """The epoch's mean batch loss over every rank's batches (this rank's alone without torchrun)."""
    if world == 1:
        return float(np.mean(losses))
    # Each rank saw its share of the epoch's windows; the record is the whole epoch's.
    total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total[0] / total[1])


def is_main_process() -> bool:
    """Rank 0 under torchrun (the one that writes files), and any process started alone."""
    return not dist.is_initialized() or dist.get_rank() == 0


@torch.no_grad()
def _swa_batchnorm(swa: torch.optim.swa_utils.AveragedModel, loader, device: torch.device) -> None:
    # Averaged weights need fresh BatchNorm statistics.
    torch.optim.swa_utils.update_bn(((x.to(device)) for x, *_ in loader), swa, device=device)


def _save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)

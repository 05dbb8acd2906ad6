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


CPU_TRAINING = TrainConfig(epochs=8, batch_size=4, coverage=4.0, lr=2e-3, final_lr=2e-4, warmup_epochs=1,
                           patience=4)
"""Training for the `cpu` preset. The published batch of 16 windows, one pass over the frames
per epoch, is sized for hours of recording on a GPU: on two minutes of recording it makes
two optimiser steps an epoch, and a CPU budget of epochs leaves the twin untrained. Batches
of 4, four passes an epoch and a higher peak rate give 28 steps an epoch on that recording
(docs/benchmarks.md, "Training settings of the `cpu` preset")."""


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
    finds it continues from the next epoch (same windows, same learning rates).
    """
    rank, world = _distributed()
    seed_everything(cfg.seed + rank)
    model.to(device)
    params = trainable_parameters(model, cfg.readout_only)
    if cfg.readout_only:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=cfg.warmup_start_lr, weight_decay=cfg.weight_decay)
    data = WindowDataset(train, window=cfg.window, seed=cfg.seed, coverage=cfg.coverage)
    sampler = torch.utils.data.DistributedSampler(data, world, rank, shuffle=False) if world > 1 else None
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.num_workers, drop_last=False)
    steps_per_epoch = len(loader)
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    swa = torch.optim.swa_utils.AveragedModel(model) if cfg.swa else None
    use_bf16 = cfg.bf16 and device.type == "cuda"

    history_train: list[float] = []
    history_val: list[float] = []
    best = (math.inf, -1)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_epoch, bad_epochs, step = 0, 0, 0
    elapsed_before = 0.0
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        history_train, history_val = list(state["train_loss"]), list(state["val_loss"])
        best, best_state = tuple(state["best"]), state["best_state"]
        start_epoch, bad_epochs, step = state["epoch"] + 1, state["bad_epochs"], state["step"]
        elapsed_before = state["seconds"]
        if swa is not None and state.get("swa") is not None:
            swa.load_state_dict(state["swa"])
        torch.set_rng_state(state["torch_rng"])
    t0 = time.perf_counter()
    task = progress.add_task("train", total=cfg.epochs, completed=start_epoch, status="") if progress else None
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        if bad_epochs >= cfg.patience:
            stopped_early = True
            break
        data.set_epoch(epoch)
        _train_mode(model, cfg.readout_only)
        epoch_losses = []
        for x, y, w in loader:
            for group in optimiser.param_groups:
                group["lr"] = lr_at(step, steps_per_epoch, cfg)
            x, y, w = x.to(device), y.to(device), w.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                pred = net(x)
            loss = loss_fn(pred.float(), y, w)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            epoch_losses.append(loss.item())
            step += 1
        history_train.append(_mean_over_ranks(epoch_losses, world))
        val_loss = evaluate_loss(model, loss_fn, val, device) if val else history_train[-1]
        history_val.append(val_loss)
        if val_loss < best[0]:
            best = (val_loss, epoch)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
        if swa is not None and epoch >= int(cfg.swa_start * cfg.epochs):
            swa.update_parameters(model)
        if state_path is not None and rank == 0:
            _save_state(state_path, {
                "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "train_loss": history_train, "val_loss": history_val, "best": best,
                "best_state": best_state, "epoch": epoch, "bad_epochs": bad_epochs, "step": step,
                "seconds": elapsed_before + time.perf_counter() - t0,
                "swa": swa.state_dict() if swa is not None else None,
                "torch_rng": torch.get_rng_state(), "config": asdict(cfg),
            })
        if progress is not None:
            progress.update(task, advance=1, status=f"loss {history_train[-1]:.4f} val {val_loss:.4f}")
    else:
        stopped_early = False

    if swa is not None and swa.n_averaged.item() > 0:
        _swa_batchnorm(swa, loader, device)
        model.load_state_dict(swa.module.state_dict())
    else:
        model.load_state_dict(best_state)
    return TrainResult(
        train_loss=tuple(history_train), val_loss=tuple(history_val), best_epoch=best[1],
        best_val_loss=best[0], epochs_run=len(history_train),
        seconds=elapsed_before + time.perf_counter() - t0, stopped_early=stopped_early,
    )


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

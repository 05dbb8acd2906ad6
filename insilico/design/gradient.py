"""Gradient-based design: pixel clips optimised through the whole twin, backbone included.

One step is a fixed sequence of small stages (sinzlab/mei, Lucid)::

    transform (jitter, time shift) -> objective -> regularizers -> backward
      -> precondition (blur / Fourier scaling, then unit RMS) -> optimizer step
      -> post-process (mean grey, RMS budget, [0, 1])

A batch of clips, one per seed, is optimised in one pass; each member draws its start and
its transforms from its own generator, so the same seed gives the same clip. A run can also
start from a given clip (`start`, e.g. last round's design in a closed loop): the first member
starts exactly there, the others from it plus their seed's noise. An optional
diversity term rewards batch members for differing from each other. Every step is recorded
(objective, RMS contrast and gradient norm per seed) and `GradientRun.plot` draws them.

The optimizer is plain SGD on a gradient scaled to unit RMS per clip, so the learning rate
is the RMS pixel change of one step (before post-processing), falling by a cosine schedule
from `lr` to `lr / 10`. Because the post-processor projects every step back onto the budget,
this is projected gradient ascent: for a near-linear cell it turns the clip towards the
budget-constrained optimum within a few steps, which is what keeps CPU designs short.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from insilico.design.objectives import Objective
from insilico.design.postprocess import ContrastBudget
from insilico.design.preconditioners import blur, named_preconditioner, unit_rms
from insilico.design.regularizers import TemporalSmoothness, TotalVariation
from insilico.design.settings import GradientConfig
from insilico.design.transforms import Compose, Jitter, TimeShift
from stimuli.errors import InputError
from stimuli.files import atomic_path


@dataclass(frozen=True)
class StepRecord:
    """State after one step; per-seed values are `[B]` tuples."""

    step: int
    objective: tuple[float, ...]
    contrast: tuple[float, ...]
    grad_norm: tuple[float, ...]
    seconds: float


@dataclass(frozen=True, eq=False)
class GradientRun:
    """A finished gradient design.

    Attributes:
        stimuli: `[B, T, H, W]` float32 in [0, 1], one clip per seed, at the budget.
        objective: `[B]` objective of each final clip (no transforms, no penalties).
        seeds: the seed of each batch member.
        history: one record per step (step 0 is the random start).
        seconds: wall time.
    """

    stimuli: np.ndarray
    objective: np.ndarray
    seeds: tuple[int, ...]
    history: tuple[StepRecord, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    @property
    def best(self) -> int:
        """Batch position of the best clip."""
        return int(np.argmax(self.objective))

    def curves(self) -> dict[str, np.ndarray]:
        """`{"step": [S], "objective" | "contrast" | "grad_norm": [S, B]}` for plotting."""
        return {
            "step": np.array([r.step for r in self.history]),
            "objective": np.array([r.objective for r in self.history]),
            "contrast": np.array([r.contrast for r in self.history]),
            "grad_norm": np.array([r.grad_norm for r in self.history]),
        }

    def plot(self, path: str | Path) -> Path:
        """Objective, contrast and gradient norm per step, one line per seed, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        c = self.curves()
        fig, axes = plt.subplots(1, 3, figsize=(11, 3), constrained_layout=True)
        for ax, key in zip(axes, ("objective", "contrast", "grad_norm"), strict=True):
            for b, seed in enumerate(self.seeds):
                ax.plot(c["step"], c[key][:, b], label=f"seed {seed}")
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(key.replace("_", " "))
            # Plain numbers: the contrast is held at its budget, and the default offset
            # notation turned its flat line into an axis of "1e-7 + 1.99815e-1".
            ax.ticklabel_format(axis="y", useOffset=False, style="plain")
            values = np.asarray(c[key], dtype=np.float64)
            centre = float(np.nanmean(values))
            if centre != 0 and np.nanmax(values) - np.nanmin(values) <= 1e-3 * abs(centre):
                # Flat to 0.1 %: autoscaling would blow float noise up into steep swings.
                ax.set_ylim(centre * 0.9, centre * 1.1)
        axes[0].legend(fontsize=7)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return Path(path)


def random_start(shape: tuple[int, int, int], seed: int, config: GradientConfig, budget: ContrastBudget,
                 device: torch.device, envelope: Tensor | None = None) -> Tensor:
    """The start `[T, H, W]` of one clip (see `GradientConfig.init`), fully determined by `seed`."""
    gen = torch.Generator().manual_seed(int(seed))
    noise = blur(torch.randn((1, *shape), generator=gen, dtype=torch.float32), config.init_sigma)
    if envelope is not None:
        noise = noise * envelope.cpu()
    if config.init == "noise":
        return budget(noise)[0].to(device)
    noise = noise / noise.std().clamp_min(1e-12)
    return (budget.mean + config.init_scale * budget.rms * noise)[0].clamp(0.0, 1.0).to(device)


def given_start(start: np.ndarray | Tensor, member: int, seed: int, config: GradientConfig,
                budget: ContrastBudget, device: torch.device, envelope: Tensor | None = None) -> Tensor:
    """A start `[T, H, W]` from a given clip in [0, 1], inside the envelope, at the budget.

    The clip's contrast is weighted by the envelope first, as every gradient step is: a
    start outside it would keep its contrast there to the end (the STA start's last frames
    covered the whole screen before this). Member > 0 adds its seed's smooth noise
    (`init_scale` times the budget's RMS, inside the envelope) so a batch explores around it.
    """
    x = torch.as_tensor(np.asarray(start, dtype=np.float32) if not isinstance(start, Tensor) else start,
                        dtype=torch.float32).cpu()
    if envelope is not None:
        x = budget.mean + (x - budget.mean) * envelope.cpu()
    if member > 0:
        x = x + random_start(tuple(x.shape), seed, replace(config, init="grey"), budget,
                             torch.device("cpu"), None if envelope is None else envelope.cpu()) - budget.mean
    return budget(x[None])[0].to(device)


def near(x: Tensor, anchors: Sequence[Tensor | None], distance: float, budget: ContrastBudget,
         rounds: int = 3) -> Tensor:
    """`x [B, T, H, W]` with each member that has an anchor pulled to within `distance` (RMS
    pixel distance) of it, and at the budget: the two projections alternate `rounds` times
    and the budget comes last, so the budget holds exactly and the distance nearly."""
    for _ in range(rounds):
        pulled = []
        for b, anchor in enumerate(anchors):
            if anchor is None:
                pulled.append(x[b])
                continue
            d = x[b] - anchor
            rms = float(d.pow(2).mean().sqrt())
            pulled.append(anchor + d * min(1.0, distance / max(rms, 1e-12)))
        x = budget(torch.stack(pulled))
    return x


def diversity(frames: Tensor) -> Tensor:
    """`[B]` mean RMS distance of each clip to the others (0 for a batch of one)."""
    b = frames.shape[0]
    if b < 2:
        return frames.new_zeros(b)
    flat = frames.reshape(b, -1)
    d = torch.cdist(flat[None], flat[None])[0] / math.sqrt(flat.shape[1])
    return d.sum(dim=1) / (b - 1)


def optimize_gradient(
    response: Callable[[Tensor], Tensor],
    objective: Objective,
    shape: tuple[int, int, int],
    budget: ContrastBudget,
    seeds: Sequence[int] = (0,),
    config: GradientConfig | None = None,
    device: torch.device | str = "cpu",
    on_step: Callable[[StepRecord], None] | None = None,
    envelope: np.ndarray | Tensor | None = None,
    start: np.ndarray | Tensor | Sequence[np.ndarray | None] | None = None,
    anchors: Sequence[np.ndarray | None] | None = None,
    max_distance: float | None = None,
) -> GradientRun:
    """Design one clip per seed that maximises `objective(response(clip))` within `budget`.

    Args:
        response: `frames [B, T, H, W] -> rates [B, T, N]`, differentiable
            (`insilico.design.response.TwinResponse`).
        objective: what to maximise (`insilico.design.objectives`).
        shape: `(T, H, W)` of a clip.
        budget: the post-processor every step ends with.
        seeds: one batch member per seed.
        config: step settings (None: the defaults).
        device: where the clips live (the twin's device).
        on_step: called with each step's record (progress display).
        envelope: `[H, W]` weights in [0, 1] for the start and every gradient step
            (`insilico.design.envelope.rf_envelope`); None leaves the whole screen free.
            Give `budget` the envelope's support too (`ContrastBudget(support=envelope > 0)`)
            so that no pixel outside it moves from grey.
        start: `[T, H, W]` in [0, 1] to refine instead of starting from grey (`given_start`),
            or one start per member (None: grey); a member whose start is the same object as
            an earlier member's adds its seed's noise to it.
        anchors: per member, a clip `[T, H, W]` the member stays within `max_distance` (RMS
            pixel distance) of (`near`; feature accentuation of a natural clip), or None.
    """
    if not seeds:
        raise InputError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must differ, got {list(seeds)}")
    started = time.perf_counter()
    config = config or GradientConfig()
    device = torch.device(device)
    gens = [torch.Generator().manual_seed(int(s) + 1_000_003) for s in seeds]
    env = None if envelope is None else torch.as_tensor(envelope, dtype=torch.float32, device=device)
    if env is not None and tuple(env.shape) != tuple(shape[1:]):
        raise InputError(f"the envelope must be [H, W] = {list(shape[1:])}, got {list(env.shape)}")
    starts = _member_starts(start, len(seeds), shape)
    members = []
    for b, (s, first) in enumerate(zip(seeds, starts, strict=True)):
        if first is None:
            members.append(random_start(shape, s, config, budget, device, env))
        else:
            repeat = any(other is first for other in starts[:b])
            members.append(given_start(first, int(repeat), s, config, budget, device, env))
    x = torch.stack(members)
    anchored = None
    if anchors is not None and any(a is not None for a in anchors):
        if len(anchors) != len(seeds) or max_distance is None:
            raise InputError("anchors need one entry per seed and a max_distance")
        anchored = [None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)
                    for a in anchors]
        with torch.no_grad():
            x = near(x, anchored, max_distance, budget)
    x.requires_grad_(True)
    transform = Compose((Jitter(config.jitter_px), TimeShift(config.time_shift)))
    regularizers = (TotalVariation(config.tv_weight), TemporalSmoothness(config.smooth_weight))
    precondition = named_preconditioner(config.preconditioner, *config.blur_sigma)
    optimizer = torch.optim.SGD([x], lr=config.lr)
    history: list[StepRecord] = []

    def record(step: int, value: Tensor, grad_norm: Tensor) -> None:
        rec = StepRecord(step, _floats(value), _floats(x.detach().std(dim=(1, 2, 3), correction=0)),
                         _floats(grad_norm), time.perf_counter() - started)
        history.append(rec)
        if on_step is not None:
            on_step(rec)

    for step in range(config.steps):
        optimizer.zero_grad(set_to_none=True)
        seen = transform(x, gens)                                   # 1. transform
        value = objective(response(seen))                           # 2. objective [B]
        penalty = sum(reg(x) for reg in regularizers)               # 3. regularizers [B]
        gain = value - penalty
        if config.diversity_weight:
            gain = gain + config.diversity_weight * diversity(x)
        (-gain.sum()).backward()                                    # 4. backward
        grad = x.grad
        grad_norm = grad.detach().flatten(1).norm(dim=1)
        shaped = precondition(grad, step, config.steps)             # 5. precondition
        x.grad = unit_rms(shaped if env is None else shaped * env)
        for group in optimizer.param_groups:
            group["lr"] = _cosine(config.lr, step, config.steps)
        optimizer.step()                                            # 6. optimizer step
        with torch.no_grad():
            x.copy_(budget(x) if anchored is None                   # 7. post-process
                    else near(x.detach(), anchored, max_distance, budget))
        record(step, value.detach(), grad_norm)

    with torch.no_grad():
        final = objective(response(x.detach()))
    record(config.steps, final, torch.zeros(len(seeds)))
    return GradientRun(
        stimuli=x.detach().cpu().numpy().astype(np.float32),
        objective=final.detach().cpu().numpy().astype(np.float64),
        seeds=tuple(int(s) for s in seeds),
        history=tuple(history),
        seconds=time.perf_counter() - started,
    )


def _member_starts(start: np.ndarray | Tensor | Sequence[np.ndarray | None] | None, n: int,
                   shape: tuple[int, int, int]) -> list[np.ndarray | Tensor | None]:
    """One start (or None) per member from `optimize_gradient`'s `start`."""
    if start is None:
        return [None] * n
    if isinstance(start, np.ndarray | Tensor):
        starts = [start] * n
    else:
        starts = list(start)
        if len(starts) != n:
            raise InputError(f"give one start per seed ({n}), got {len(starts)}")
    for clip in starts:
        if clip is not None and tuple(np.shape(clip)) != tuple(shape):
            raise InputError(f"the start clip must be [T, H, W] = {list(shape)}, got {list(np.shape(clip))}")
    return starts


def _cosine(lr: float, step: int, steps: int) -> float:
    if steps <= 1:
        return lr
    frac = step / (steps - 1)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def _floats(t: Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in t.detach().cpu().reshape(-1))

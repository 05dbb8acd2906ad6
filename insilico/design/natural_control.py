"""The best natural clip: the yardstick a design has to beat, at the same contrast budget.

Scanning every clip of the training movie exactly (rescale to the budget, predict from a
grey start) would cost a full backbone pass per clip. Instead, in two stages:

1. screen: the twin predicts the whole training movie once (features from the feature
   cache), and every clip end is scored by the objective on those rates;
2. confirm: the `top_k` best-scoring clips that do not overlap by more than half their
   length are cut out, rescaled to the budget, predicted from a grey start like the
   designs, and the best of them is the natural control.

The screen sees clips in the movie's context and at their own contrast, so it only ranks;
every number reported comes from stage 2. The screen's rates are shared by every cell of a
run (`NaturalScreen`), so `--cells all` pays for it once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from insilico.design.objectives import Objective
from insilico.design.postprocess import ContrastBudget
from insilico.design.response import TwinResponse
from stimuli.contrast import to_uint8
from stimuli.errors import InputError
from stimuli.recording import open_recording
from vist_model.features import FeatureCache
from vist_model.twin import Twin


@dataclass(frozen=True, eq=False)
class NaturalScreen:
    """The training movies and the twin's rates for them, per segment.

    Attributes:
        frames: segment name -> uint8 `[T_s, H, W]`.
        rates: segment name -> `[T_s, N]` predicted rates (stage 1).
    """

    frames: dict[str, np.ndarray]
    rates: dict[str, np.ndarray]

    @classmethod
    def build(cls, twin: Twin, data: str, segments: list[str], cache: FeatureCache | None = None) -> NaturalScreen:
        frames, rates = {}, {}
        with open_recording(data) as rec:
            for name in segments:
                frames[name] = rec.frames(name)
                rates[name] = twin.predict(frames[name], cache)
        return cls(frames, rates)


@dataclass(frozen=True, eq=False)
class NaturalClip:
    """The best natural clip at the budget.

    Attributes:
        frames: uint8 `[T, H, W]` at the budget (as it would be shown).
        segment, start: where it comes from in the training recording.
        objective: the objective of the clip (stage 2).
        candidates: how many clips were confirmed in stage 2.
        ranked: uint8 `[K, T, H, W]`, the confirmed clips at the budget, best first (the
            clips the attribution prior is computed over, `prior`).
    """

    frames: np.ndarray
    segment: str
    start: int
    objective: float
    candidates: int
    ranked: np.ndarray | None = None


def _candidates(screen: NaturalScreen, objective: Objective, n_frames: int, tail: int) -> list[tuple[float, str, int]]:
    """`(score, segment, start)` for every clip of `n_frames`, from the stage-1 rates."""
    scored = []
    for name, rates in screen.rates.items():
        t = rates.shape[0]
        if t < n_frames:
            continue
        ends = np.arange(n_frames - 1, t)
        # Only the last `tail` frames reach the objective's window: score those.
        idx = ends[:, None] - np.arange(tail - 1, -1, -1)[None, :]
        with torch.no_grad():
            scores = objective(torch.from_numpy(rates[idx].astype(np.float32))).numpy()
        scored += [(float(s), name, int(e - n_frames + 1)) for s, e in zip(scores, ends, strict=True)]
    if not scored:
        raise InputError(f"no training segment is as long as the {n_frames}-frame clip")
    scored.sort(key=lambda c: -c[0])
    return scored


def best_natural_clip(
    response: TwinResponse,
    screen: NaturalScreen,
    objective: Objective,
    n_frames: int,
    tail: int,
    budget: ContrastBudget,
    top_k: int = 8,
) -> NaturalClip:
    """Best `n_frames` clip of the training movies for `objective`, at `budget` (see module doc).

    Args:
        tail: frames at the clip's end that the objective reads (window + end offset).
        top_k: clips confirmed in stage 2.
    """
    if top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    picked: list[tuple[str, int]] = []
    for _, name, start in _candidates(screen, objective, n_frames, min(tail, n_frames)):
        if all(n != name or abs(s - start) >= n_frames // 2 for n, s in picked):
            picked.append((name, start))
        if len(picked) == top_k:
            break
    clips = np.stack([to_uint8(budget.apply(screen.frames[n][s:s + n_frames])) for n, s in picked])
    with torch.no_grad():
        values = objective(torch.from_numpy(response.rates(clips))).numpy()
    order = np.argsort(-values, kind="stable")
    best = int(order[0])
    name, start = picked[best]
    return NaturalClip(clips[best], name, start, float(values[best]), len(picked), clips[order])

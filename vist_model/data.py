"""From a recording to training data: splits, trial-averaged targets, random windows.

A split names frame ranges for training, validation (carved from the end of each training
segment, never from the test segment) and testing. Inputs are whatever the model reads per
frame: backbone features `[T, C, h, w]` for Vi-ST, pixel frames `[T, H, W]` for the baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stimuli.recording import Recording, Segment

# A part of a named segment keeps the segment's name: validation is carved from the end of
# the training segment it belongs to.
FrameRange = Segment


@dataclass(frozen=True)
class DataSplit:
    train: tuple[FrameRange, ...]
    val: tuple[FrameRange, ...]
    test: tuple[FrameRange, ...]


def make_split(
    rec: Recording,
    train: Sequence[str],
    test: Sequence[str] = (),
    *,
    val_fraction: float = 0.1,
    min_val_frames: int = 32,
) -> DataSplit:
    """Carve validation from the end of each training segment; test segments stay untouched."""
    overlap = set(train) & set(test)
    if overlap:
        raise ValueError(f"segments {sorted(overlap)} cannot be both training and test data")
    if not train:
        raise ValueError("name at least one training segment")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tr: list[FrameRange] = []
    va: list[FrameRange] = []
    for name in train:
        seg = rec.segment(name)
        n_val = 0 if val_fraction == 0 else max(min_val_frames, int(round(seg.n_frames * val_fraction)))
        if n_val >= seg.n_frames:
            raise ValueError(f"segment {name!r} has {seg.n_frames} frames: too short to hold out {n_val} for validation")
        cut = seg.stop - n_val
        tr.append(FrameRange(name, seg.start, cut))
        if n_val:
            va.append(FrameRange(name, cut, seg.stop))
    te = [FrameRange(n, rec.segment(n).start, rec.segment(n).stop) for n in test]
    return DataSplit(tuple(tr), tuple(va), tuple(te))


def trial_average(rec: Recording, r: FrameRange) -> np.ndarray:
    """Targets `[t, N]` float32: counts averaged over the repeats that were shown."""
    return np.nanmean(rec.counts(start=r.start, stop=r.stop), axis=0).astype(np.float32)


@dataclass(frozen=True)
class Block:
    """A contiguous stretch of model inputs `[t, ...]` and targets `[t, N]`."""

    inputs: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"inputs have {len(self.inputs)} frames, targets {len(self.targets)}")


class WindowDataset(torch.utils.data.Dataset):
    """Random windows of `window` frames from a list of blocks, redrawn each epoch.

    `set_epoch(e)` fixes the draw from `(seed, e)`, so runs, resumes and distributed ranks
    see the same windows. An epoch holds about `coverage` x (frames / window) windows.
    """

    def __init__(self, blocks: Sequence[Block], window: int = 128, seed: int = 0, coverage: float = 1.0) -> None:
        usable = [b for b in blocks if len(b.inputs) >= window]
        if not usable:
            longest = max((len(b.inputs) for b in blocks), default=0)
            raise ValueError(f"no block holds a {window}-frame window (longest has {longest} frames)")
        self.blocks = usable
        self.window = window
        self.seed = seed
        total = sum(len(b.inputs) for b in usable)
        self.n_windows = max(1, int(round(coverage * total / window)))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng((self.seed, epoch))
        sizes = np.array([len(b.inputs) - self.window + 1 for b in self.blocks], dtype=float)
        which = rng.choice(len(self.blocks), size=self.n_windows, p=sizes / sizes.sum())
        starts = [int(rng.integers(0, int(sizes[i]))) for i in which]
        self._draw = list(zip(which.tolist(), starts, strict=True))

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = self._draw[i]
        block = self.blocks[b]
        x = torch.from_numpy(np.ascontiguousarray(block.inputs[s:s + self.window], dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(block.targets[s:s + self.window], dtype=np.float32))
        return x, y

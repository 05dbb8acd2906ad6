"""From a recording to training data: splits, trial-averaged targets, random windows.

A split names frame ranges for training, validation (carved from the end of each training
segment, never from the test segment) and testing. Inputs are whatever the model reads per
frame: backbone features `[T, C, h, w]` for Vi-ST, pixel frames `[T, H, W]` for the baselines.

Nothing here holds a segment in memory: inputs and targets are `Rows`, indexed by frame and
read from their file only when a window is sliced (`RecordingFrames`, `TrialAverage`, the
feature cache's `CachedFeatures`), so memory does not grow with the length of a recording.
A numpy array is `Rows` too, for data made in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from stimuli.errors import InputError
from stimuli.recording import Recording, Segment, open_recording
from stimuli.recording.sta import NOISE_SEGMENT_NAMES

# A part of a named segment keeps the segment's name: validation is carved from the end of
# the training segment it belongs to.
FrameRange = Segment


@dataclass(frozen=True)
class DataSplit:
    train: tuple[FrameRange, ...]
    val: tuple[FrameRange, ...]
    test: tuple[FrameRange, ...]


TRAINING_MOVIE = "mov1"


def default_train_segments(rec: Recording) -> list[str]:
    """What a twin trains on unless told: the training movie, and the white noise where there is one.

    Natural movies alone rarely put strong contrast inside one receptive field; a twin that never
    saw it predicts its own designs (which do exactly that) far below the cell's response. The
    white-noise segment a lab records for the RFs holds that contrast (docs/benchmarks.md,
    "Training on the white noise too").
    """
    names = [seg.name for seg in rec.segments]
    noise = [n for n in names if n.lower() in NOISE_SEGMENT_NAMES][:1]
    return [TRAINING_MOVIE, *noise] if TRAINING_MOVIE in names else noise or [TRAINING_MOVIE]


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
        raise InputError(f"segments {sorted(overlap)} cannot be both training and test data")
    if not train:
        raise InputError("name at least one training segment")
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tr: list[FrameRange] = []
    va: list[FrameRange] = []
    for name in train:
        seg = rec.segment(name)
        n_val = 0 if val_fraction == 0 else max(min_val_frames, int(round(seg.n_frames * val_fraction)))
        if n_val >= seg.n_frames:
            raise InputError(f"segment {name!r} has {seg.n_frames} frames: too short to hold out {n_val} for validation")
        cut = seg.stop - n_val
        tr.append(FrameRange(name, seg.start, cut))
        if n_val:
            va.append(FrameRange(name, cut, seg.stop))
    te = [FrameRange(n, rec.segment(n).start, rec.segment(n).stop) for n in test]
    return DataSplit(tuple(tr), tuple(va), tuple(te))


def trial_average(rec: Recording, r: FrameRange) -> np.ndarray:
    """Targets `[t, N]` float32: counts averaged over the repeats that were shown."""
    return np.nanmean(rec.counts(start=r.start, stop=r.stop), axis=0).astype(np.float32)


# Frames per read where a whole range is scanned (hashing, checking): a few MiB at most.
SCAN_FRAMES = 256


@runtime_checkable
class Rows(Protocol):
    """Data indexed by frame along its first axis, `[T, ...]`: `rows[a:b]` reads frames a..b-1
    as a numpy array. Numpy arrays, h5py datasets and the lazy views below all are."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> np.ndarray: ...


def _bounds(index: int | slice, n: int) -> tuple[int, int, bool]:
    """`(start, stop, squeeze)` of a frame index or contiguous slice into `n` rows."""
    if isinstance(index, slice):
        a, b, step = index.indices(n)
        if step != 1:
            raise IndexError("lazy rows are read in contiguous ranges (slice step 1)")
        return a, max(a, b), False
    i = int(index)
    i = i + n if i < 0 else i
    if not 0 <= i < n:
        raise IndexError(f"frame {index} is outside [0, {n})")
    return i, i + 1, True


class LazyRows:
    """Base of row sources read from a file on demand; subclasses implement `_read(a, b)`.

    The open file is per process (a DataLoader worker opens its own) and is never pickled.
    `close()` releases it; the next read opens it again.
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        a, b, squeeze = _bounds(index, len(self))
        out = self._read(a, b)
        return out[0] if squeeze else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _read(self, a: int, b: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_open")}


class _RecordingRows(LazyRows):
    """Frames `[start, stop)` of a recording file, opened on first read (once per process)."""

    def __init__(self, path: str | Path, start: int, stop: int) -> None:
        self.path = str(path)
        self.start, self.stop = int(start), int(stop)
        with open_recording(self.path) as rec:
            if not 0 <= self.start < self.stop <= rec.n_frames:
                raise InputError(f"{self.path}: frame range [{start}, {stop}) is not inside [0, {rec.n_frames})")
            self._describe(rec)

    def _describe(self, rec: Recording) -> None:
        raise NotImplementedError

    def _recording(self) -> Recording:
        held = self.__dict__.get("_open_rec")
        if held is None or held[0] != os.getpid():
            held = (os.getpid(), open_recording(self.path))
            self._open_rec = held
        return held[1]

    def close(self) -> None:
        held = self.__dict__.pop("_open_rec", None)
        if held is not None and held[0] == os.getpid():
            held[1].close()


class RecordingFrames(_RecordingRows):
    """Stimulus frames `[t, H, W]` uint8 of frames `[start, stop)` of a recording, read per slice."""

    def _describe(self, rec: Recording) -> None:
        _, h, w = rec.shape
        self.shape = (self.stop - self.start, h, w)
        self.dtype = np.dtype(np.uint8)

    def _read(self, a: int, b: int) -> np.ndarray:
        if a == b:
            return np.zeros((0, *self.shape[1:]), np.uint8)
        return self._recording().frames(start=self.start + a, stop=self.start + b)


class TrialAverage(_RecordingRows):
    """Targets `[t, N]` float32 of frames `[start, stop)`: counts averaged over the repeats that
    were shown (`trial_average`), read per slice. The counts are checked once, in pieces, when
    it is made, so bad counts fail before training rather than in the middle of an epoch."""

    def _describe(self, rec: Recording) -> None:
        if not rec.has_responses:
            raise InputError(f"{self.path}: a stimulus-only file has no responses to train on")
        self.shape = (self.stop - self.start, rec.n_cells)
        self.dtype = np.dtype(np.float32)
        for a in range(self.start, self.stop, SCAN_FRAMES):
            rec.counts(start=a, stop=min(self.stop, a + SCAN_FRAMES))

    def _read(self, a: int, b: int) -> np.ndarray:
        if a == b:
            return np.zeros((0, self.shape[1]), np.float32)
        counts = self._recording().counts(start=self.start + a, stop=self.start + b)
        return np.nanmean(counts, axis=0).astype(np.float32)


class PixelInputs(LazyRows):
    """What a pixel-space baseline reads, frames / 255 `[t, H, W]` float32, read per slice."""

    def __init__(self, frames: Rows) -> None:
        self.frames = frames
        self.shape = tuple(frames.shape)
        self.dtype = np.dtype(np.float32)

    def _read(self, a: int, b: int) -> np.ndarray:
        return np.asarray(self.frames[a:b]).astype(np.float32) / 255.0

    def close(self) -> None:
        close_rows(self.frames)


class RowRange(LazyRows):
    """Rows `[start, stop)` of another row source, read only when sliced."""

    def __init__(self, source: Rows, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= len(source):
            raise InputError(f"rows [{start}, {stop}) are not inside [0, {len(source)})")
        self.source, self.start, self.stop = source, int(start), int(stop)
        self.shape = (self.stop - self.start, *tuple(source.shape)[1:])
        self.dtype = np.dtype(getattr(source, "dtype", np.float32))

    def _read(self, a: int, b: int) -> np.ndarray:
        return np.asarray(self.source[self.start + a:self.start + b])

    def close(self) -> None:
        close_rows(self.source)


def row_range(source: Rows, start: int, stop: int) -> Rows:
    """Rows `[start, stop)` of `source`: a view of an array, a lazy `RowRange` of anything else."""
    if isinstance(source, np.ndarray):
        return source[start:stop]
    return RowRange(source, start, stop)


def close_rows(rows: object) -> None:
    """Release the file a row source holds open (nothing for arrays)."""
    close = getattr(rows, "close", None)
    if callable(close) and not isinstance(rows, np.ndarray):
        close()


def read_rows(rows: Rows, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows `[start, stop)` as a float32 numpy array."""
    stop = len(rows) if stop is None else stop
    return np.asarray(rows[start:stop], dtype=np.float32)


@dataclass(frozen=True)
class Block:
    """A contiguous stretch of model inputs `[t, ...]` and targets `[t, N]`.

    `weight` scales how often windows start in this block, per start position (1: as often as
    anywhere else); fine-tuning raises it for a few short recorded clips among hours of movie.
    `loss_weights` `[t, N]` weight each target in the loss (None: all 1); fine-tuning raises
    them on the cells and frames a designed clip was made to drive.
    """

    inputs: Rows
    targets: Rows
    weight: float = 1.0
    loss_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise InputError(f"inputs have {len(self.inputs)} frames, targets {len(self.targets)}")
        if self.loss_weights is not None and (
                self.loss_weights.shape != tuple(self.targets.shape) or not (self.loss_weights >= 0).all()):
            raise InputError(f"loss weights must be >= 0 and shaped like the targets {tuple(self.targets.shape)}, "
                             f"got {self.loss_weights.shape}")
        if not (np.isfinite(self.weight) and self.weight > 0):
            raise InputError(f"a block's sampling weight must be > 0, got {self.weight}")


@dataclass(frozen=True)
class LossFocus:
    """Frames `[start, stop)` of a segment (counted from its first frame) where one cell's
    response is what an experiment asked about, e.g. the window a designed clip was made to drive."""

    segment: str
    cell_index: int
    start: int
    stop: int


def focus_weights(block_start: int, targets: Rows, focus: Sequence[LossFocus], weight: float) -> np.ndarray | None:
    """Loss weights `[t, N]` for a block starting `block_start` frames into its segment: `weight`
    on the focused cells and frames, 1 elsewhere (None when no focus falls in the block)."""
    w = None
    for f in focus:
        a, b = max(f.start - block_start, 0), min(f.stop - block_start, len(targets))
        if a < b:
            w = np.ones(tuple(targets.shape), dtype=np.float32) if w is None else w
            w[a:b, f.cell_index] = weight
    return w


def window_starts(block: Block, window: int) -> int:
    """How many `window`-frame windows start in a block (0 if it is shorter)."""
    return max(0, len(block.inputs) - window + 1)


def shared_out(groups: Sequence[Sequence[Block]], shares: Sequence[float | None], window: int) -> list[Block]:
    """The blocks of every group, weighted so that each group with a share gets that fraction of
    the windows; groups with share None split what is left in proportion to their length.

    Example: `shared_out([movie, clips], [None, 0.5], 40)` draws half the windows from a few
    short clips, however long the movie.
    """
    if len(groups) != len(shares):
        raise InputError(f"{len(groups)} groups of blocks but {len(shares)} shares")
    given = [s for s in shares if s is not None]
    if any(not 0 < s < 1 for s in given) or sum(given) > 1 + 1e-9:
        raise InputError(f"shares must be in (0, 1) and sum to at most 1, got {list(shares)}")
    starts = [sum(window_starts(b, window) for b in g) for g in groups]
    rest_starts = sum(n for n, s in zip(starts, shares, strict=True) if s is None)
    rest = 1.0 - sum(given)
    if rest_starts and rest <= 1e-9:
        raise InputError(f"shares {list(shares)} leave nothing for the groups without one")
    total = sum(starts)
    out: list[Block] = []
    for g, n, share in zip(groups, starts, shares, strict=True):
        if n == 0:
            out += g
            continue
        # Per-start probability relative to an unweighted draw over all starts.
        weight = (share / n if share is not None else rest / rest_starts) * total
        out += [replace(b, weight=b.weight * weight) for b in g]
    return out


class WindowDataset(torch.utils.data.Dataset):
    """Random windows of `window` frames from a list of blocks, redrawn each epoch.

    `set_epoch(e)` fixes the draw from `(seed, e)`, so runs, resumes and distributed ranks
    see the same windows. An epoch holds about `coverage` x (frames / window) windows.
    """

    def __init__(self, blocks: Sequence[Block], window: int = 128, seed: int = 0, coverage: float = 1.0) -> None:
        usable = [b for b in blocks if len(b.inputs) >= window]
        if not usable:
            longest = max((len(b.inputs) for b in blocks), default=0)
            raise InputError(f"no block holds a {window}-frame window (longest has {longest} frames)")
        self.blocks = usable
        self.window = window
        self.seed = seed
        total = sum(len(b.inputs) for b in usable)
        self.n_windows = max(1, int(round(coverage * total / window)))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng((self.seed, epoch))
        sizes = np.array([window_starts(b, self.window) for b in self.blocks], dtype=float)
        mass = sizes * np.array([b.weight for b in self.blocks])
        which = rng.choice(len(self.blocks), size=self.n_windows, p=mass / mass.sum())
        starts = [int(rng.integers(0, int(sizes[i]))) for i in which]
        self._draw = list(zip(which.tolist(), starts, strict=True))

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(inputs [window, ...], targets [window, N], loss weights [window, N])`."""
        b, s = self._draw[i]
        block = self.blocks[b]
        x = torch.from_numpy(np.ascontiguousarray(block.inputs[s:s + self.window], dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(block.targets[s:s + self.window], dtype=np.float32))
        if block.loss_weights is None:
            return x, y, torch.ones_like(y)
        return x, y, torch.from_numpy(np.ascontiguousarray(block.loss_weights[s:s + self.window], dtype=np.float32))

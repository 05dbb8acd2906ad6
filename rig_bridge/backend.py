"""What the rig server asks of a backend: show a stimulus, report flips and spikes.

Times are in rig sample-clock units (e.g. 30 kHz acquisition samples), the time base shared
with the acquisition system. Each stimulus repeat reports one flip per stimulus frame,
frame index 0..T-1, plus an end flip with index T when the last frame leaves the screen, so
frame bin t of repeat r is `[flip(r, t), flip(r, t + 1))`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class RigInfo:
    """Told to the controller in the hello reply."""

    backend: str
    cell_ids: tuple[int, ...]
    sample_rate: float  # Hz of the rig sample clock
    frame_rate: float  # Hz the rig shows stimulus frames at by default
    screen: tuple[int, int] | None  # (H, W) stimulus size the rig accepts; None = any
    profile: str


@dataclass(frozen=True)
class PresentJob:
    """One present command.

    Attributes:
        frames: uint8 `[T, H, W]` stimulus frames.
        seed: a per-presentation seed (from the rig seed and request id) for simulated spikes.
    """

    session: str
    request_id: str
    stimulus_id: str
    frames: np.ndarray
    frame_rate: float
    repeats: int
    isi_grey_frames: int
    seed: int


class Emitter(Protocol):
    def flips(self, repeat: int, frame_index: np.ndarray, samples: np.ndarray) -> None:
        """Flip events of one repeat: frame indices `[k]` and sample times `[k]` (int64)."""

    def spikes(self, cell_ids: np.ndarray, samples: np.ndarray) -> None:
        """Spikes: cell ids `[k]` and sample times `[k]` (int64)."""

    def counts(self, repeat: int, start_frame: int, counts: np.ndarray) -> None:
        """Spike counts per frame bin `[t, N]` (uint16) from `start_frame` of one repeat."""


class Backend(Protocol):
    info: RigInfo

    def check_stimulus(self, frames: np.ndarray, frame_rate: float) -> None:
        """Raise ValueError when the rig cannot show these frames at this rate."""

    def run(self, job: PresentJob, emit: Emitter, cancel: threading.Event) -> None:
        """Show the job; emit flips and spikes as they come; return early when `cancel` is set."""

    def close(self) -> None: ...

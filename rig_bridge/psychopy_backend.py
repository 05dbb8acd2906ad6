"""The `psychopy` backend: show stimuli with the PsychoPy presenter, take spikes from a source.

The repeats and inter-stimulus grey are laid out as one frame sequence and shown in a single
`Presenter.present` call (no gap between repeats), followed by one grey frame so the last
stimulus frame has an end flip. Flip times come from the spike source's clock:

- `SimulatedSource`: the simulated retina sees the same frames; PsychoPy flip times (seconds)
  times the sample rate are the rig clock.
- `OpenEphysSource`: the photodiode patch drives a TTL line recorded by Open Ephys, one edge
  per presented frame; those sample numbers are the flips, and spikes arrive from the GUI's ZMQ
  interface in the same sample clock.

Spikes are emitted after the presentation, since neither source is needed while frames flip.
PsychoPy is imported only when a window opens.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rig_bridge.backend import Emitter, PresentJob, RigInfo
from rig_bridge.openephys import OpenEphysSubscriber
from rig_bridge.retina import SimulatedRetina
from rig_bridge.retina.backend import repeat_counts, repeat_rng, spike_times
from stimuli.errors import InputError


@dataclass(frozen=True)
class Sequence:
    """Frames `[K, H, W]` to show and where each repeat's stimulus frames start in them."""

    frames: np.ndarray
    repeat_starts: tuple[int, ...]
    n_stimulus: int


def build_sequence(frames: np.ndarray, repeats: int, isi_grey_frames: int, grey: int = 128) -> Sequence:
    t, h, w = frames.shape
    blank = np.full((1, h, w), grey, dtype=np.uint8)
    parts, starts, pos = [], [], 0
    for r in range(repeats):
        starts.append(pos)
        parts.append(frames)
        pos += t
        n_grey = isi_grey_frames if r < repeats - 1 else max(1, isi_grey_frames)
        if n_grey:
            parts.append(np.repeat(blank, n_grey, axis=0))
            pos += n_grey
    return Sequence(np.concatenate(parts), tuple(starts), t)


class SpikeSource(Protocol):
    sample_rate: float
    cell_ids: tuple[int, ...]

    def before(self) -> None: ...

    def collect(self, job: PresentJob, seq: Sequence, flip_s: np.ndarray, end_s: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flip samples `[K + 1]` (every sequence frame, then the end) and spikes (cells, samples)."""


class SimulatedSource:
    def __init__(self, *, n_cells: int, size: int, frame_rate: float, seed: int,
                 sample_rate: float = 30_000.0) -> None:
        self.retina = SimulatedRetina.create(n_cells=n_cells, height=size, width=size,
                                                 frame_rate=frame_rate, seed=seed)
        self.sample_rate = sample_rate
        self.cell_ids = tuple(int(c) for c in self.retina.cell_ids)
        self.size = size

    def before(self) -> None:
        pass

    def collect(self, job: PresentJob, seq: Sequence, flip_s: np.ndarray, end_s: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flips = np.rint(np.append(flip_s, end_s) * self.sample_rate).astype(np.int64)
        ids = np.asarray(self.cell_ids, dtype=np.int64)
        cells, samples = [], []
        for r, start in enumerate(seq.repeat_starts):
            rng = repeat_rng(job.seed, r)
            counts = repeat_counts(self.retina, job.frames, rng)
            c, s = spike_times(counts, flips[start:start + seq.n_stimulus + 1], ids, rng)
            cells.append(c)
            samples.append(s)
        return flips, np.concatenate(cells), np.concatenate(samples)


class OpenEphysSource:
    def __init__(self, subscriber: OpenEphysSubscriber, sample_rate: float, *,
                 flip_timeout_s: float = 5.0, tail_s: float = 0.2) -> None:
        self.sub = subscriber
        self.sample_rate = sample_rate
        self.cell_ids = subscriber.cell_map.cell_ids
        self.flip_timeout_s = flip_timeout_s
        self.tail_s = tail_s
        self._mark = 0

    def before(self) -> None:
        self._mark = self.sub.mark()

    def collect(self, job: PresentJob, seq: Sequence, flip_s: np.ndarray, end_s: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        edges = self.sub.wait_edges(self._mark, len(seq.frames), self.flip_timeout_s)
        # The closing flip has no photodiode edge of its own: add one measured frame interval.
        interval = float(np.median(np.diff(edges))) if len(edges) > 1 else self.sample_rate / job.frame_rate
        flips = np.append(edges, edges[-1] + int(round(interval)))
        self.sub.wait_sample(int(flips[-1] + self.tail_s * self.sample_rate), self.flip_timeout_s)
        cells, samples = self.sub.spikes_between(int(flips[0]), int(flips[-1]))
        return flips, cells, samples


class PsychopyBackend:
    def __init__(self, profile_path: str | os.PathLike[str], source: SpikeSource, *,
                 headless: bool = False) -> None:
        from stimuli.presentation import load_profile

        self.profile = load_profile(profile_path)
        self.source = source
        self.headless = headless
        screen = getattr(source, "size", None)
        self.info = RigInfo(backend="psychopy", cell_ids=source.cell_ids, sample_rate=source.sample_rate,
                            frame_rate=float(self.profile.refresh_rate_hz),
                            screen=(screen, screen) if screen else None, profile=self.profile.name)

    def check_stimulus(self, frames: np.ndarray, frame_rate: float) -> None:
        self.profile.refreshes_per_frame(frame_rate)  # ValueError when rates do not divide
        if self.info.screen is not None and tuple(frames.shape[1:]) != self.info.screen:
            raise InputError(f"stimulus frames are {frames.shape[1]}x{frames.shape[2]} but the simulated "
                             f"retina sees {self.info.screen[0]}x{self.info.screen[1]}")

    def run(self, job: PresentJob, emit: Emitter, cancel: threading.Event) -> None:
        from stimuli.presentation import Presenter

        seq = build_sequence(job.frames, job.repeats, job.isi_grey_frames, self.profile.background)
        self.source.before()
        with Presenter(self.profile, headless=self.headless) as presenter:
            shown = presenter.present(seq.frames, job.frame_rate)
        if cancel.is_set():
            return
        flip_s = shown.clock_origin + np.asarray(shown.flip_time, dtype=np.float64)
        flips, cells, samples = self.source.collect(job, seq, flip_s, shown.clock_origin + shown.end_time)
        t = seq.n_stimulus
        for r, start in enumerate(seq.repeat_starts):
            emit.flips(r, np.arange(t + 1, dtype=np.int64), flips[start:start + t + 1])
        emit.spikes(cells, samples)

    def close(self) -> None:
        stop = getattr(getattr(self.source, "sub", None), "stop", None)
        if stop is not None:
            stop()

"""The simulated retina as a rig: the `sim` backend, and its spikes on the rig's sample clock.

No display is needed. By default it runs as fast as the retina computes; with `realtime=True`
each chunk of frames is released at the wall-clock time it would have been shown, which is
what the crash tests and a dry run of the closed loop need.

Counts come from the retina with a generator seeded by (rig seed, request id, repeat), so a
presentation that is re-run after a crash yields the very same spikes, and a test can recompute
them independently. Within a frame bin, spike times are uniform.
"""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np

from rig_bridge.backend import Emitter, PresentJob, RigInfo
from rig_bridge.retina.simulated import SimulatedRetina
from stimuli.errors import InputError

DEFAULT_SAMPLE_RATE = 30_000.0


class SimBackend:
    def __init__(self, *, n_cells: int = 90, size: int = 64, frame_rate: float = 30.0, seed: int = 0,
                 realtime: bool = False, sample_rate: float = DEFAULT_SAMPLE_RATE,
                 spike_format: str = "times", chunk_s: float = 0.1) -> None:
        if spike_format not in ("times", "counts"):
            raise InputError(f"spike_format must be 'times' or 'counts', got {spike_format!r}")
        if sample_rate <= frame_rate:
            raise InputError(f"sample_rate ({sample_rate}) must exceed frame_rate ({frame_rate})")
        self.retina = SimulatedRetina.create(n_cells=n_cells, height=size, width=size,
                                                 frame_rate=frame_rate, seed=seed)
        self.info = RigInfo(backend="sim", cell_ids=tuple(int(c) for c in self.retina.cell_ids),
                            sample_rate=float(sample_rate), frame_rate=float(frame_rate),
                            screen=(size, size), profile=f"simulated retina ({n_cells} cells, seed {seed})")
        self.realtime = realtime
        self.spike_format = spike_format
        self.chunk_s = chunk_s
        # The rig clock keeps running between presentations, as an acquisition clock does.
        self._clock_origin = time.monotonic()
        self._virtual_clock = 0

    def _now(self) -> int:
        if self.realtime:
            return int((time.monotonic() - self._clock_origin) * self.info.sample_rate)
        return self._virtual_clock

    def check_stimulus(self, frames: np.ndarray, frame_rate: float) -> None:
        screen = self.info.screen
        if screen is not None and tuple(frames.shape[1:]) != screen:
            raise InputError(f"stimulus frames are {frames.shape[1]}x{frames.shape[2]} but the "
                             f"simulated retina sees {screen[0]}x{screen[1]}")
        if abs(frame_rate - self.info.frame_rate) > 1e-9:
            raise InputError(f"stimulus frame rate {frame_rate} Hz differs from the simulated retina's "
                             f"{self.info.frame_rate} Hz")

    def run(self, job: PresentJob, emit: Emitter, cancel: threading.Event) -> None:
        frames, n = job.frames, len(job.frames)
        sr, fr = self.info.sample_rate, job.frame_rate
        ids = np.asarray(self.info.cell_ids, dtype=np.int64)
        chunk = max(1, int(round(self.chunk_s * fr)))
        for r in range(job.repeats):
            rng = repeat_rng(job.seed, r)
            counts = repeat_counts(self.retina, frames, rng)
            edges = repeat_edges(self._now() + 1, n, fr, sr)
            cells, samples = spike_times(counts, edges, ids, rng)
            wall0 = time.monotonic()
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                if self.realtime:
                    _sleep_until(wall0 + (edges[b] - edges[0]) / sr, cancel)
                if cancel.is_set():
                    return
                stop = b + 1 if b == n else b
                emit.flips(r, np.arange(a, stop, dtype=np.int64), edges[a:stop])
                if self.spike_format == "counts":
                    emit.counts(r, a, counts[a:b])
                else:
                    lo, hi = np.searchsorted(samples, [edges[a], edges[b]])
                    emit.spikes(cells[lo:hi], samples[lo:hi])
            isi_end = edges[n] + int(round(job.isi_grey_frames * sr / fr))
            if self.realtime:
                _sleep_until(wall0 + (isi_end - edges[0]) / sr, cancel)
            self._virtual_clock = max(self._virtual_clock, isi_end)

    def close(self) -> None:
        pass


def _sleep_until(deadline: float, cancel: threading.Event) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        cancel.wait(delay)


def presentation_seed(rig_seed: int, request_id: str) -> int:
    """A 63-bit seed for one presentation, stable across processes (unlike hash())."""
    digest = hashlib.blake2b(f"{int(rig_seed)}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def repeat_rng(seed: int, repeat: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(repeat)])


def repeat_counts(retina: object, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spike counts `[T, N]` uint16 of one repeat of uint8 frames `[T, H, W]`."""
    video = frames.astype(np.float32) / np.float32(255.0)
    return retina.spikes(video, rng)  # type: ignore[attr-defined]


def spike_times(counts: np.ndarray, edges: np.ndarray, cell_ids: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spread counts `[T, N]` uniformly over bins `[edges[t], edges[t+1])` (`edges` `[T+1]`).

    Returns cell ids `[k]` and sample times `[k]` (int64), sorted by time.
    """
    t_idx, n_idx = np.nonzero(counts)
    reps = counts[t_idx, n_idx].astype(np.int64)
    t_all = np.repeat(t_idx, reps)
    cells = np.repeat(np.asarray(cell_ids, dtype=np.int64)[n_idx], reps)
    start = edges[t_all]
    width = edges[t_all + 1] - start
    samples = start + np.floor(rng.random(len(t_all)) * width).astype(np.int64)
    order = np.argsort(samples, kind="stable")
    return cells[order], samples[order]


def repeat_edges(first_sample: int, n_frames: int, frame_rate: float, sample_rate: float) -> np.ndarray:
    """Ideal flip sample times `[T+1]` of T frames at `frame_rate` starting at `first_sample`."""
    return first_sample + np.rint(np.arange(n_frames + 1) * (sample_rate / frame_rate)).astype(np.int64)

"""The "chirp" of Baden et al. 2016 (Nature 529:345), used to fingerprint retinal ganglion cell types."""

from __future__ import annotations

import math

import numpy as np

from stimuli._checks import require_frame_rate, require_int
from stimuli._geometry import modulation_to_frames
from stimuli.errors import InputError
from stimuli.stimulus import Stimulus

# (segment name, duration in s). The published traces span 32 s: a 2 s dark lead-in,
# the 3 s ON / 3 s OFF steps, then the frequency and amplitude sweeps separated by 2 s
# of mean grey, and 2 s of dark at the end. (The lab's QDSpy script ends with 3 s dark;
# the recorded traces are cut at 32 s, which is what models are fitted to.)
CHIRP_SEGMENTS: tuple[tuple[str, float], ...] = (
    ("dark", 2.0),
    ("on_step", 3.0),
    ("off_step", 3.0),
    ("grey_1", 2.0),
    ("frequency_sweep", 8.0),
    ("grey_2", 2.0),
    ("amplitude_sweep", 8.0),
    ("grey_3", 2.0),
    ("dark_end", 2.0),
)
CHIRP_DURATION_S = sum(duration for _, duration in CHIRP_SEGMENTS)  # 32 s
FREQUENCY_SWEEP_HZ = (0.5, 8.0)
"""Frequency sweep, linear in instantaneous frequency, at full contrast."""
AMPLITUDE_SWEEP_HZ = 2.0
"""Amplitude sweep: a 2 Hz sinusoid whose contrast ramps linearly from 0 to 1."""


def _segment_modulation(name: str, t: np.ndarray, duration: float) -> np.ndarray:
    """Contrast modulation in [-1, 1] of one segment at times ``t`` (s from its start)."""
    if name in ("dark", "off_step", "dark_end"):
        return np.full_like(t, -1.0)
    if name == "on_step":
        return np.ones_like(t)
    if name.startswith("grey"):
        return np.zeros_like(t)
    if name == "frequency_sweep":
        f0, f1 = FREQUENCY_SWEEP_HZ
        # Phase is the integral of f(t) = f0 + (f1 - f0) t / T.
        phase = 2.0 * math.pi * (f0 * t + 0.5 * (f1 - f0) * t**2 / duration)
        return np.sin(phase)
    if name == "amplitude_sweep":
        return (t / duration) * np.sin(2.0 * math.pi * AMPLITUDE_SWEEP_HZ * t)
    raise AssertionError(f"unknown chirp segment {name!r}")


def chirp(height: int, width: int, frame_rate: float = 30.0) -> Stimulus:
    """Full-field chirp: light steps, a frequency sweep and a contrast sweep (32 s).

    Segments (s): dark 2, ON (white) 3, OFF (black) 3, grey 2, frequency sweep 8
    (0.5 -> 8 Hz, linear in frequency, full contrast), grey 2, amplitude sweep 8
    (2 Hz, contrast 0 -> 1), grey 2, dark 2. Each frame shows the value at its onset.

    Args:
        height: frame height ``H`` in pixels.
        width: frame width ``W`` in pixels.
        frame_rate: Hz; the clip has ``round(32 * frame_rate)`` frames.

    Returns:
        ``Stimulus`` named ``"chirp"``, frames uint8 ``[T, H, W]``. ``params`` records
        ``segments`` as ``(name, start_frame, stop_frame)`` triples (stop exclusive),
        ``segment_starts_s`` and the sweep settings.
    """
    height = require_int("height", height, minimum=1)
    width = require_int("width", width, minimum=1)
    frame_rate = require_frame_rate(frame_rate)
    n_frames = round(CHIRP_DURATION_S * frame_rate)
    if n_frames < len(CHIRP_SEGMENTS):
        raise InputError(f"frame_rate {frame_rate} Hz is too low to show every chirp segment")

    trace = np.empty(n_frames, dtype=np.float64)  # [T]
    segments: list[tuple[str, int, int]] = []
    starts_s: list[float] = []
    start_s = 0.0
    for name, duration in CHIRP_SEGMENTS:
        first, stop = round(start_s * frame_rate), round((start_s + duration) * frame_rate)
        t = (np.arange(first, stop) - first) / frame_rate
        trace[first:stop] = _segment_modulation(name, t, duration)
        segments.append((name, first, stop))
        starts_s.append(start_s)
        start_s += duration

    modulation = np.broadcast_to(trace[:, None, None], (n_frames, height, width))
    return Stimulus(
        frames=modulation_to_frames(modulation),
        frame_rate=frame_rate,
        name="chirp",
        params={
            "height": height,
            "width": width,
            "frame_rate": frame_rate,
            "duration_s": CHIRP_DURATION_S,
            "segments": tuple(segments),
            "segment_starts_s": tuple(starts_s),
            "frequency_sweep_hz": FREQUENCY_SWEEP_HZ,
            "amplitude_sweep_hz": AMPLITUDE_SWEEP_HZ,
        },
    )

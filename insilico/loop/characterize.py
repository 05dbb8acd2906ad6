"""The clips of a `characterize` protocol, rendered for the rig's screen and frame rate."""

from __future__ import annotations

import math

import numpy as np

from insilico.loop.protocol import CharacterizeStimulus
from stimuli.bars import moving_bar
from stimuli.chirp import chirp
from stimuli.errors import InputError
from stimuli.natural import natural_movie
from stimuli.noise import checkerboard_noise


def render(spec: CharacterizeStimulus, height: int, width: int, frame_rate: float) -> np.ndarray:
    """Frames uint8 `[T, H, W]` of one protocol stimulus (deterministic: same spec, same clip)."""
    n = max(1, round(spec.seconds * frame_rate))
    if spec.family == "white_noise":
        return np.asarray(checkerboard_noise(n, height, width, check_size=spec.check_px, frame_rate=frame_rate,
                                             contrast=spec.contrast, seed=spec.seed).frames)
    if spec.family == "chirp":
        return np.asarray(chirp(height, width, frame_rate=frame_rate).frames)
    if spec.family == "natural_movie":
        return np.asarray(natural_movie(n, height, width, frame_rate=frame_rate, rms_contrast=spec.rms_contrast,
                                        seed=spec.seed).frames)
    if spec.family == "moving_bars":
        # One sweep per direction, each long enough for the bar to cross the whole screen.
        sweep = math.ceil((math.hypot(height, width) + 2 * spec.bar_width_px) / spec.speed_px_per_frame) + 1
        clips = [np.asarray(moving_bar(sweep, height, width, orientation_deg=360.0 * k / spec.directions,
                                       bar_width_px=spec.bar_width_px, speed_px_per_frame=spec.speed_px_per_frame,
                                       contrast=spec.contrast, frame_rate=frame_rate).frames)
                 for k in range(spec.directions)]
        return np.concatenate(clips)
    raise InputError(f"unknown stimulus family {spec.family!r}")

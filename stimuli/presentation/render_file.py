"""Present a stimulus file on a rig profile and store what the screen showed.

The output is a stimulus-only recording-v1 file whose frames are the captured screen inside
the stimulus rectangle, in screen pixels: `[T, H*scale, W*scale]`, mirrored and
luminance-corrected as the display received them (so it can be compared with
`expected_screen` or shown to a model). Root attributes record the rig geometry
(`presentation_scale`, `presentation_flip_horizontal`, ...); `pixel_size_um`, when the source
has it, is divided by the scale. The flip log is stored beside the frames:

- `/presentation/frame_index` `[T]` int64
- `/presentation/flip_time` `[T]` float64 s (relative to frame 0's flip)
- `/presentation/refresh_time` `[T*N]` float64 s (every flip)
- `/presentation/dropped` `[T]` bool
- `/presentation/photodiode` `[T]` uint8 (patch level read from the capture; absent when
  the profile has no patch)
- `/presentation/lut` `[256]` uint8 (the luminance table that was applied)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stimuli.errors import InputError
from stimuli.presentation.log import PresentationLog
from stimuli.presentation.luminance import profile_lut
from stimuli.presentation.presenter import Presenter
from stimuli.presentation.rig_profile import RigProfile, load_profile
from stimuli.recording import RecordingWriter, Segment, open_recording

GROUP = "/presentation"


def render_file(
    stim_path: str | os.PathLike[str],
    profile: RigProfile | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    headless: bool = True,
    show: bool = False,
    segment: str | None = None,
) -> PresentationLog:
    """Present the frames of a recording-v1 file (stimulus-only or full) and write the capture.

    `profile`: a `RigProfile` or the path of its TOML file. `headless=True` renders on the
    current X display (Xvfb) with clock-paced flips; `headless=False` presents on the rig
    (fullscreen if the profile says so, flips locked to the refresh). `show=True` (with
    `headless=False`) is a preview on this computer's display: windowed, locked to its
    refresh. `segment` presents one named segment instead of the whole file.
    Returns the presentation log; `out_path` receives the capture and the log.
    """
    if show and headless:
        raise InputError("show=True presents on a real display at its refresh rate; pass headless=False")
    rig = profile if isinstance(profile, RigProfile) else load_profile(profile)
    with open_recording(stim_path) as rec:
        frames = rec.frames(segment=segment)
        frame_rate = rec.frame_rate
        pixel_size_um = rec.pixel_size_um
        if segment is None:
            segments = rec.segments
        else:
            segments = (Segment(segment, 0, frames.shape[0]),)
    with Presenter(rig, headless=headless, fullscreen=False if show else None) as presenter:
        log = presenter.present(frames, frame_rate, capture=True, capture_region="stimulus")
    _write(Path(out_path), log, rig, segments, frame_rate, pixel_size_um, str(stim_path))
    return log


def _write(out_path: Path, log: PresentationLog, rig: RigProfile, segments: tuple[Segment, ...],
           frame_rate: float, pixel_size_um: float | None, source: str) -> None:
    shown = log.captured_stimulus()
    rect = log.stimulus_rect
    attrs = {
        "presentation_source": source,
        "presentation_rig": rig.name,
        "presentation_scale": np.int64(rig.scale),
        "presentation_flip_horizontal": bool(rig.flip_horizontal),
        "presentation_flip_vertical": bool(rig.flip_vertical),
        "presentation_rect_xywh": np.array([rect.x, rect.y, rect.w, rect.h], dtype=np.int64),
        "presentation_background": np.int64(rig.background),
        "presentation_refresh_rate_hz": float(log.refresh_rate_hz),
        "presentation_n_refreshes_per_frame": np.int64(log.n_refreshes_per_frame),
        "presentation_n_dropped": np.int64(log.n_dropped),
        "presentation_paced": bool(log.paced),
        "presentation_end_time": float(log.end_time),
    }
    writer = RecordingWriter(
        out_path, frame_rate=frame_rate, height=shown.shape[1], width=shown.shape[2],
        pixel_size_um=None if pixel_size_um is None else pixel_size_um / rig.scale, attrs=attrs)
    try:
        writer.append(shown)
        for seg in segments:
            writer.add_segment(seg.name, seg.start, seg.stop)
        writer.write_extra(f"{GROUP}/frame_index", log.frame_index)
        writer.write_extra(f"{GROUP}/flip_time", log.flip_time)
        writer.write_extra(f"{GROUP}/refresh_time", log.refresh_time)
        writer.write_extra(f"{GROUP}/dropped", log.dropped)
        if log.photodiode is not None:
            writer.write_extra(f"{GROUP}/photodiode", log.photodiode)
        writer.write_extra(f"{GROUP}/lut", profile_lut(rig))
    except BaseException:
        writer.abort()
        raise
    writer.commit()

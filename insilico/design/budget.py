"""The default contrast budget: the RMS contrast of the movies the twin was trained on.

Designs are compared with natural stimuli, and that comparison is only fair at equal
contrast; the twin is also only trustworthy near the contrasts it was trained on. So unless
the design setting `rms_contrast` is given, the budget is the pixel standard deviation (units of full
range) pooled over every frame of the training movies, read from the recording named in
the twin's metadata (`training["data"]`, segments `training["train_segments"]`). A white-noise
segment the twin also trained on (named as `NOISE_SEGMENT_NAMES`) is left out: its binary
checks sit near RMS 0.5, and pooled in, they set the budget well above any natural movie's
(0.35 against 0.21 on a family member) and the per-frame ceiling at the noise's own contrast.

A per-frame ceiling (design setting `frame_rms`) may be added: a value, or "training": the
`FRAME_RMS_PERCENTILE`th percentile of the training frames' own contrast (RMS deviation of a
frame's pixels from the movies' mean), so that no design frame is brighter or darker overall
than the frames the twin learnt from, bar the rarest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stimuli.errors import InputError, InsilicoError
from stimuli.recording import open_recording
from stimuli.recording.sta import NOISE_SEGMENT_NAMES
from vist_model.provenance import TrainingDataMissing
from vist_model.twin import TwinMetadata

CHUNK_FRAMES = 1024
FRAME_RMS_PERCENTILE = 95.0


@dataclass(frozen=True)
class Budget:
    """A contrast budget and where it came from."""

    rms: float
    mean: float
    source: str  # "design setting rms_contrast" or "training movies <path> [segments]"
    frame_rms: float | None = None  # the per-frame ceiling, None: none
    frame_source: str = ""

    def to_json(self) -> dict[str, object]:
        return {"rms_contrast": self.rms, "mean": self.mean, "source": self.source,
                "frame_rms": self.frame_rms, "frame_rms_source": self.frame_source or None}


def training_data(meta: TwinMetadata, needed_for: str = "") -> tuple[Path, list[str]]:
    """The recording (found where it was stored, or moved beside the current folder) and its training
    movies: the training segments less the white noise (natural clips and budgets come from them).

    `needed_for` ends the error when the recording is gone: what the user loses without it.
    """
    record = meta.training_record
    segments = list(record.segments)
    try:
        data = record.recording()
    except TrainingDataMissing as err:
        raise InsilicoError(f"{err}{needed_for}") from None
    if data is None or not segments:
        raise InsilicoError("the twin's checkpoint does not name its training data; set the design setting rms_contrast")
    movies = [name for name in segments if name.lower() not in NOISE_SEGMENT_NAMES]
    return data, movies or segments  # a twin trained on white noise alone: its noise is all there is


def training_rms_contrast(meta: TwinMetadata) -> float:
    """Pixel std over all training frames (pooled), in units of full range."""
    path, segments = training_data(meta, ", so the default contrast budget (the training movies' RMS "
                                         "contrast) is unknown: set the design setting rms_contrast")
    total = total_sq = 0.0
    count = 0
    with open_recording(path) as rec:
        for name in segments:
            seg = rec.segment(name)
            for start in range(seg.start, seg.stop, CHUNK_FRAMES):
                x = rec.frames(start=start, stop=min(seg.stop, start + CHUNK_FRAMES)).astype(np.float64) / 255.0
                total += float(x.sum())
                total_sq += float((x * x).sum())
                count += x.size
    mean = total / count
    return float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def training_frame_rms(meta: TwinMetadata) -> float:
    """The `FRAME_RMS_PERCENTILE`th percentile over training frames of each frame's RMS deviation
    from the movies' pooled mean (one pass: per-frame sums, then the mean)."""
    path, segments = training_data(meta, ", so the per-frame ceiling \"training\" is unknown: give the design "
                                         "setting frame_rms a value")
    sums, squares, pixels = [], [], 0
    with open_recording(path) as rec:
        for name in segments:
            seg = rec.segment(name)
            for start in range(seg.start, seg.stop, CHUNK_FRAMES):
                x = rec.frames(start=start, stop=min(seg.stop, start + CHUNK_FRAMES)).astype(np.float64) / 255.0
                flat = x.reshape(x.shape[0], -1)
                sums.append(flat.sum(axis=1))
                squares.append((flat * flat).sum(axis=1))
                pixels = flat.shape[1]
    s, q = np.concatenate(sums), np.concatenate(squares)
    mean = float(s.sum() / (s.size * pixels))
    per_frame = np.sqrt(np.maximum(q / pixels - 2.0 * mean * s / pixels + mean * mean, 0.0))
    return float(np.percentile(per_frame, FRAME_RMS_PERCENTILE))


def resolve_budget(meta: TwinMetadata, rms_contrast: float | None = None, mean: float = 0.5,
                   frame_rms: float | str | None = None) -> Budget:
    """The design setting `rms_contrast` when given, else the training movies' RMS contrast;
    with the per-frame ceiling `frame_rms` (a value, "training" or None)."""
    if rms_contrast is not None:
        if not 0.0 < rms_contrast < 0.5:
            raise InputError(f"design setting rms_contrast must be in (0, 0.5) at mean grey 0.5, got {rms_contrast}")
        budget = Budget(float(rms_contrast), mean, "design setting rms_contrast")
    else:
        rms = training_rms_contrast(meta)  # first: its error says the budget can be set instead
        path, segments = training_data(meta)
        if rms <= 0.0:
            raise InsilicoError(f"the training movies in {path} have no contrast; set the design setting rms_contrast")
        budget = Budget(rms, mean, f"training movies {path} [{', '.join(segments)}]")
    if frame_rms is None:
        return budget
    if frame_rms == "training":
        return replace(budget, frame_rms=training_frame_rms(meta),
                       frame_source=f"{FRAME_RMS_PERCENTILE:g}th percentile of the training frames' RMS")
    return replace(budget, frame_rms=float(frame_rms), frame_source="design setting frame_rms")

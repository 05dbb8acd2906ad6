"""The session's recording-v1 file: one segment per presentation, repeats along axis 0.

Each presentation is appended in place (`RecordingWriter.extend`, with an undo record), so a
crash leaves either the old file or the old file plus the whole new segment: the next access
undoes a half-done append. The hidden `.part` copy an older, copying commit may have left is
removed on the next commit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rig_bridge.errors import SessionFileError
from stimuli.recording import RecordingWriter, open_recording
from stimuli.recording.writer import recover


def stored_segments(path: str | os.PathLike[str]) -> set[str]:
    if not Path(path).is_file():
        return set()
    recover(path)  # a crash mid-append: back to the last whole commit before anything is read
    with open_recording(path) as rec:
        return {s.name for s in rec.segments}


def read_segment_counts(path: str | os.PathLike[str], segment: str, repeats: int) -> np.ndarray:
    """Counts `[repeats, T, N]` float32 of a stored presentation."""
    recover(path)
    with open_recording(path) as rec:
        return rec.counts(segment=segment)[:repeats]


def check_compatible(path: str | os.PathLike[str], *, frame_rate: float, height: int, width: int,
                     cell_ids: np.ndarray, repeats: int) -> None:
    """Raise SessionFileError when an existing session file cannot take this presentation."""
    if not Path(path).is_file():
        return
    recover(path)
    with open_recording(path) as rec:
        problems = []
        if not rec.has_responses:
            problems.append("it is a stimulus-only file (no responses)")
        else:
            if not np.array_equal(rec.cell_ids, np.asarray(cell_ids, dtype=np.int64)):
                problems.append(f"its {rec.n_cells} cell ids differ from the rig's {len(cell_ids)}")
            if repeats > rec.n_repeats:
                problems.append(f"it holds at most {rec.n_repeats} repeats per presentation, not {repeats}")
        if abs(rec.frame_rate - frame_rate) > 1e-9:
            problems.append(f"its frame rate is {rec.frame_rate} Hz, the stimulus runs at {frame_rate} Hz")
        if rec.shape[1:] != (height, width):
            problems.append(f"its frames are {rec.shape[1]}x{rec.shape[2]}, the stimulus is {height}x{width}")
    if problems:
        raise SessionFileError(f"{path}: cannot add this presentation: " + "; ".join(problems)
                               + " (start a new session file)")


def remove_litter(path: str | os.PathLike[str]) -> int:
    """Delete the hidden `.<name>.*.part` copies a controller killed mid-commit left beside `path`.

    One controller owns a session file, and this runs before its next commit starts, so any
    such copy is a dead one. Returns how many were removed.
    """
    target = Path(path)
    if not target.parent.is_dir():
        return 0
    stale = list(target.parent.glob(f".{target.name}.*.part"))
    for part in stale:
        part.unlink(missing_ok=True)
    return len(stale)


def store_presentation(path: str | os.PathLike[str], segment: str, frames: np.ndarray, frame_rate: float,
                       cell_ids: np.ndarray, counts: np.ndarray) -> bool:
    """Append frames `[T, H, W]` and counts `[R, T, N]` as `segment`; False if it was already there."""
    if segment in stored_segments(path):
        return False
    remove_litter(path)
    if Path(path).is_file():
        writer = RecordingWriter.extend(path)  # in place: the 100th costs what the 1st did
    else:
        writer = RecordingWriter(path, frame_rate=frame_rate, height=frames.shape[1], width=frames.shape[2],
                                 cell_ids=np.asarray(cell_ids, dtype=np.int64), n_repeats=counts.shape[0],
                                 counts_dtype="float32", attrs={"source": "insilico rig bridge"})
    try:
        writer.append_segment(segment, frames, counts)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return True

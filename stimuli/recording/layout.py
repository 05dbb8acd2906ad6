"""Names and constants of the recording-v1 layout (see docs/recording-format.md)."""

from __future__ import annotations

from dataclasses import dataclass

FORMAT = "insilico-recording"
VERSION = 1

FRAMES = "/stimulus/frames"
COUNTS = "/responses/spike_counts"
CELL_IDS = "/cells/id"
CELL_RF = "/cells/rf"
CELL_TYPE = "/cells/type"
SEGMENT_NAME = "/segments/name"
SEGMENT_START = "/segments/start"
SEGMENT_STOP = "/segments/stop"


@dataclass(frozen=True)
class Segment:
    """A named half-open frame range `[start, stop)`."""

    name: str
    start: int
    stop: int

    @property
    def n_frames(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Layout:
    """What validation learnt about a file without reading its bulk data."""

    n_frames: int
    height: int
    width: int
    frame_rate: float
    pixel_size_um: float | None
    n_repeats: int  # 0 for a stimulus-only file
    n_cells: int  # 0 for a stimulus-only file
    counts_dtype: str | None  # "uint16" or "float32"; None for a stimulus-only file
    segments: tuple[Segment, ...]
    has_rf: bool
    has_types: bool

    @property
    def has_responses(self) -> bool:
        return self.n_cells > 0

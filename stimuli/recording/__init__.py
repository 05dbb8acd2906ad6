"""Recording-v1 files: one HDF5 file per retina recording (see docs/recording-format.md)."""

from stimuli.recording.errors import RecordingFormatError
from stimuli.recording.layout import Layout, Segment
from stimuli.recording.reader import Recording, open_recording
from stimuli.recording.writer import RecordingWriter, write_stimulus

__all__ = [
    "Layout",
    "Recording",
    "RecordingFormatError",
    "RecordingWriter",
    "Segment",
    "open_recording",
    "write_stimulus",
]

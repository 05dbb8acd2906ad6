"""`insilico import video`: a video file (mp4, mov, ...) as a stimulus-only recording-v1 file.

`render`, `rig present` and a protocol read recording-v1 files; this converts a movie once
(greyscale luma, resized, frame-rate converted by nearest frame: `stimuli.video_file`) so it
can be played and recorded like any other stimulus. Registered by `insilico/cli.py` under the
`import` sub-command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from insilico import checks
from insilico.console import console
from insilico.errors import friendly_errors
from stimuli.errors import InsilicoError


def import_video_command(
    file: Path = typer.Argument(..., help="A video file (mp4, mov, avi, ... : anything FFmpeg decodes)."),
    out: Path = typer.Option(..., "--out", help="Stimulus file to write (recording-v1 HDF5, one segment)."),
    size: str = typer.Option("64", "--size", help="Output frames: SIDE (square) or WIDTHxHEIGHT in pixels; "
                             "match the twin's screen."),
    fps: float = typer.Option(None, "--fps", help="Output frame rate in Hz (default: the file's). Frames are "
                              "repeated or dropped, never blended."),
    frames: int = typer.Option(None, "--frames", help="Output frames (default: the whole file)."),
    rms_contrast: float = typer.Option(None, "--rms-contrast", help="Rescale to this RMS contrast (default: "
                                       "the file's own)."),
    mean: float = typer.Option(None, "--mean", help="Rescale to this mean grey in (0, 1) (default: the file's)."),
    segment: str = typer.Option("video", "--segment", help="Name of the file's one segment."),
) -> None:
    """Convert a video into a greyscale stimulus file that render, rig present and protocols play."""
    with friendly_errors():
        checks.input_file(file, "FILE")
        width, height = _size(size)
        checks.at_least(fps, 1e-9, "--fps")
        checks.at_least(frames, 1, "--frames")
        if rms_contrast is not None and not 0 < rms_contrast < 0.5:
            raise InsilicoError(f"--rms-contrast must be in (0, 0.5), got {rms_contrast:g}")
        if mean is not None and not 0 < mean < 1:
            raise InsilicoError(f"--mean must be in (0, 1), got {mean:g}")
        if not segment.isidentifier():
            raise InsilicoError(f"--segment must be a plain name (letters, digits, _), got {segment!r}")
        checks.output_file(out, "--out")

        from stimuli.recording import write_stimulus
        from stimuli.video_file import load_video

        stim = load_video(file, height, width, frame_rate=fps, n_frames=frames, mean=mean, rms_contrast=rms_contrast)
        p = stim.params
        write_stimulus(out, stim.frames, stim.frame_rate, segment=segment,
                       attrs={"source_video": str(file.resolve()), "source_fps": float(p["source_fps"]),
                              "source_width_px": int(p["source_shape"][1]), "source_height_px": int(p["source_shape"][0])})
        src_h, src_w = p["source_shape"]
        console.print(f"wrote [bold]{out}[/]: {len(stim.frames)} frames of {width}x{height} px at {stim.frame_rate:g} Hz "
                      f"(segment {segment!r}) from {file.name}, {src_w}x{src_h} px at {p['source_fps']:g} Hz")
        if abs(src_w / src_h - width / height) > 0.01:
            console.print(f"[yellow]note[/]: the aspect ratio changed ({src_w}x{src_h} -> {width}x{height}); "
                          "crop the video first to keep it")


def _size(text: str) -> tuple[int, int]:
    """`64` -> (64, 64); `80x60` -> (80, 60): width x height, as screens are given."""
    parts = text.lower().split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise InsilicoError(f"--size must be SIDE or WIDTHxHEIGHT in pixels (64, 80x60), got {text!r}")
    return (values[0], values[-1])

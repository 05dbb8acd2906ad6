"""Broken recordings are refused in one line naming the file and the dataset, never a traceback (issue 20)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_recording import write_foreign
from typer.testing import CliRunner

from insilico.cli import app
from stimuli.recording import RecordingFormatError, open_recording

runner = CliRunner()


def _flip_bytes(path: Path, offset: int, n: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def _rewrite(name: str, **create: object) -> Callable[[h5py.File], None]:
    def mutate(f: h5py.File) -> None:
        data = f[name][()]
        del f[name]
        f.create_dataset(name, data=data, **create)
    return mutate


def _corrupt_chunk(path: Path, dataset: str, index: int) -> Path:
    with h5py.File(path) as f:
        info = f[dataset].id.get_chunk_info(index)
    _flip_bytes(path, info.byte_offset + 4, 4)
    return path


def _huge(segment_over_it: bool) -> Callable[[h5py.File], None]:
    """Declare T = 10^12 frames (and counts) that the file never stores."""
    def mutate(f: h5py.File) -> None:
        for name in ("stimulus/frames", "responses/spike_counts", "segments/name", "segments/start",
                     "segments/stop"):
            del f[name]
        f.create_dataset("stimulus/frames", shape=(10**12, 6, 8), dtype=np.uint8, chunks=(64, 6, 8))
        f.create_dataset("responses/spike_counts", shape=(2, 10**12, 3), dtype=np.float32, chunks=(2, 256, 3))
        stop = 10**12 if segment_over_it else 10
        f["segments/name"] = np.array(["all"], dtype=h5py.string_dtype())
        f["segments/start"] = np.array([0], dtype=np.int64)
        f["segments/stop"] = np.array([stop], dtype=np.int64)
    return mutate


def _set_count(value: float) -> Callable[[h5py.File], None]:
    def mutate(f: h5py.File) -> None:
        f["responses/spike_counts"][0, 3, 1] = value
    return mutate


def _bad_names(f: h5py.File) -> None:
    del f["segments/name"]
    f["segments/name"] = np.array([b"mov1", b"\xff\xfe", b"noise"])


def _read_all(rec) -> None:  # noqa: ANN001 - a Recording
    rec.frames()
    for seg in rec.segments:
        rec.counts(seg.name)


# name: (mutation before close, damage after close, dataset named in the error, words in it)
CASES = {
    "corrupt gzip chunk": (_rewrite("stimulus/frames", chunks=(8, 6, 8), compression="gzip"),
                           lambda p: _corrupt_chunk(p, "stimulus/frames", 1), "/stimulus/frames", "corrupt"),
    "failed fletcher32": (_rewrite("responses/spike_counts", chunks=(2, 8, 3), fletcher32=True),
                          lambda p: _corrupt_chunk(p, "responses/spike_counts", 2), "/responses/spike_counts",
                          "checksum"),
    "T = 10^12, one segment over it": (_huge(True), None, "/stimulus/frames", "never written"),
    "T = 10^12, small segments": (_huge(False), None, "/stimulus/frames", "never written"),
    "+inf count": (_set_count(np.inf), None, "/responses/spike_counts", "infinite"),
    "fractional count": (_set_count(0.5), None, "/responses/spike_counts", "fractional"),
    "non-UTF-8 segment name": (_bad_names, None, "/segments/name", "UTF-8"),
    "corrupt object header": (None, None, "/cells/id", "object header"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_values_are_refused_naming_the_dataset(case: str, tmp_path: Path) -> None:
    mutate, damage, dataset, words = CASES[case]
    path = write_foreign(tmp_path / "broken.h5", mutate)
    if damage is not None:
        damage(path)
    if case == "corrupt object header":
        with h5py.File(path) as f:
            addr = h5py.h5o.get_info(f["cells/id"].id).addr
        _flip_bytes(path, addr, 8)
    with pytest.raises(RecordingFormatError) as err:
        with open_recording(path) as rec:
            _read_all(rec)
    assert err.value.path == str(path) and err.value.where == dataset
    assert words in str(err.value) and "missing" not in str(err.value)
    # The CLI says the same in one line (the default inspect reads no frames: see below).
    result = runner.invoke(app, ["inspect", str(path), "--deep"])
    assert result.exit_code == 2, result.output
    assert dataset in result.output and path.name in result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output


def test_deep_inspect_reads_what_the_default_does_not(tmp_path: Path) -> None:
    # A corrupt frame chunk: the default inspect (metadata and counts) stays fast and passes;
    # --deep reads every chunk and refuses the file naming the dataset and the frames.
    path = write_foreign(tmp_path / "frames.h5", _rewrite("stimulus/frames", chunks=(8, 6, 8), compression="gzip"))
    _corrupt_chunk(path, "stimulus/frames", 2)
    assert runner.invoke(app, ["inspect", str(path)]).exit_code == 0
    result = runner.invoke(app, ["inspect", str(path), "--deep"])
    assert result.exit_code == 2
    assert "/stimulus/frames" in result.output and "frames [" in result.output
    good = write_foreign(tmp_path / "good.h5")
    result = runner.invoke(app, ["inspect", str(good), "--deep"])
    assert result.exit_code == 0 and "every value checked" in result.output
    with open_recording(good) as rec:
        rec.verify()


def test_verify_reads_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory stays flat with the recording's length: verify never asks for more than a block.
    import stimuli.recording.reader as reader

    monkeypatch.setattr(reader, "_VERIFY_BLOCK_BYTES", 6 * 8 * 7)
    path = write_foreign(tmp_path / "blocks.h5", _set_count(0.25))
    seen: list[tuple[int, int]] = []
    real = reader.Recording._read

    def spy(self, dataset, selection, frames=None):  # noqa: ANN001, ANN202
        if frames is not None:
            seen.append(frames)
        return real(self, dataset, selection, frames)

    monkeypatch.setattr(reader.Recording, "_read", spy)
    with open_recording(path) as rec, pytest.raises(RecordingFormatError, match="frame 3"):
        rec.verify()
    assert seen and max(b - a for a, b in seen) <= 7

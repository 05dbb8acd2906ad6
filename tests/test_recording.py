"""Recording-v1: round trip, every validation rule, lazy access, atomic writes, xarray view."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from stimuli.recording import RecordingFormatError, RecordingWriter, open_recording, write_stimulus

T, H, W, N, R = 40, 6, 8, 3, 2


def write_foreign(path: Path, mutate: Callable[[h5py.File], None] | None = None) -> Path:
    """Write a valid file the way another lab's program would: plain h5py, no toolkit code."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "insilico-recording"
        f.attrs["version"] = 1
        f.attrs["frame_rate"] = 30.0
        f.attrs["pixel_size_um"] = 25.0
        f.attrs["lab"] = "an unknown extra attribute"
        f["stimulus/frames"] = rng.integers(0, 256, (T, H, W), dtype=np.uint8)
        counts = rng.poisson(1.0, (R, T, N)).astype(np.float32)
        counts[1:, 30:] = np.nan  # "noise" was shown once
        f["responses/spike_counts"] = counts
        f["cells/id"] = np.array([7, 42, 3], dtype=np.int64)
        f["cells/rf"] = rng.normal(size=(N, H, W)).astype(np.float32)
        f["cells/type"] = np.array([b"ON", b"OFF transient", b"ON-OFF"])
        f["segments/name"] = np.array(["mov1", "mov2", "noise"], dtype=h5py.string_dtype())
        f["segments/start"] = np.array([0, 10, 30], dtype=np.int64)
        f["segments/stop"] = np.array([10, 30, 40], dtype=np.int64)
        f["extra/thing"] = np.arange(3)
        if mutate is not None:
            mutate(f)
    return path


def test_reads_a_file_another_program_wrote(tmp_path: Path) -> None:
    path = write_foreign(tmp_path / "foreign.h5")
    with open_recording(path) as rec:
        assert rec.shape == (T, H, W)
        assert rec.frame_rate == 30.0 and rec.pixel_size_um == 25.0
        assert list(rec.cell_ids) == [7, 42, 3] and rec.cell_index(42) == 1
        assert rec.cell_types == ["ON", "OFF transient", "ON-OFF"]
        assert [s.name for s in rec.segments] == ["mov1", "mov2", "noise"]
        assert rec.repeats_shown("mov2") == 2 and rec.repeats_shown("noise") == 1
        assert rec.attrs["lab"] == "an unknown extra attribute"
        noise = rec.counts("noise")
        assert noise.shape == (R, 10, N) and np.isnan(noise[1]).all()
        assert np.isfinite(rec.mean_response("noise")).all()


def _set_attr(key: str, value: object) -> Callable[[h5py.File], None]:
    def mutate(f: h5py.File) -> None:
        f.attrs[key] = value
    return mutate


def _del(path: str) -> Callable[[h5py.File], None]:
    def mutate(f: h5py.File) -> None:
        if path.startswith("@"):
            del f.attrs[path[1:]]
        else:
            del f[path]
    return mutate


def _replace(path: str, data: np.ndarray) -> Callable[[h5py.File], None]:
    def mutate(f: h5py.File) -> None:
        del f[path]
        f[path] = data
    return mutate


RULES: dict[str, tuple[Callable[[h5py.File], None], str]] = {
    "format missing": (_del("@format"), "@format"),
    "format wrong": (_set_attr("format", "something-else"), "@format"),
    "version missing": (_del("@version"), "@version"),
    "version 2": (_set_attr("version", 2), "@version"),
    "version float": (_set_attr("version", 1.0), "@version"),
    "frame_rate missing": (_del("@frame_rate"), "@frame_rate"),
    "frame_rate zero": (_set_attr("frame_rate", 0.0), "@frame_rate"),
    "frame_rate string": (_set_attr("frame_rate", "30"), "@frame_rate"),
    "pixel size negative": (_set_attr("pixel_size_um", -1.0), "@pixel_size_um"),
    "frames missing": (_del("stimulus/frames"), "/stimulus/frames"),
    "frames float": (_replace("stimulus/frames", np.zeros((T, H, W), np.float32)), "/stimulus/frames"),
    "frames 2-D": (_replace("stimulus/frames", np.zeros((T, H * W), np.uint8)), "/stimulus/frames"),
    "frames empty": (_replace("stimulus/frames", np.zeros((0, H, W), np.uint8)), "/stimulus/frames"),
    "counts int32": (_replace("responses/spike_counts", np.zeros((R, T, N), np.int32)), "/responses/spike_counts"),
    "counts wrong T": (_replace("responses/spike_counts", np.zeros((R, T - 1, N), np.float32)), "/responses/spike_counts"),
    "counts 2-D": (_replace("responses/spike_counts", np.zeros((T, N), np.float32)), "/responses/spike_counts"),
    "counts R=0": (_replace("responses/spike_counts", np.zeros((0, T, N), np.float32)), "/responses/spike_counts"),
    "counts missing": (_del("responses"), "/responses/spike_counts"),
    "cells missing": (_del("cells"), "/cells"),
    "ids missing": (_del("cells/id"), "/cells/id"),
    "ids int32": (_replace("cells/id", np.array([7, 42, 3], np.int32)), "/cells/id"),
    "ids not unique": (_replace("cells/id", np.array([7, 42, 7], np.int64)), "/cells/id"),
    "ids wrong N": (_replace("cells/id", np.array([7, 42], np.int64)), "/cells/id"),
    "rf wrong shape": (_replace("cells/rf", np.zeros((N, H, W + 1), np.float32)), "/cells/rf"),
    "rf float64": (_replace("cells/rf", np.zeros((N, H, W), np.float64)), "/cells/rf"),
    "type not str": (_replace("cells/type", np.arange(N)), "/cells/type"),
    "type wrong N": (_replace("cells/type", np.array([b"ON"])), "/cells/type"),
    "segments missing": (_del("segments"), "/segments"),
    "segment stop missing": (_del("segments/stop"), "/segments/stop"),
    "segment start int32": (_replace("segments/start", np.array([0, 10, 30], np.int32)), "/segments/start"),
    "segment names not str": (_replace("segments/name", np.arange(3)), "/segments/name"),
    "segment names repeat": (_replace("segments/name", np.array([b"a", b"b", b"a"])), "/segments/name"),
    "segment lengths differ": (_replace("segments/stop", np.array([10, 30], np.int64)), "/segments/stop"),
    "segment beyond T": (_replace("segments/stop", np.array([10, 30, 41], np.int64)), "/segments"),
    "segment negative": (_replace("segments/start", np.array([-1, 10, 30], np.int64)), "/segments"),
    "segments overlap": (_replace("segments/start", np.array([0, 9, 30], np.int64)), "/segments"),
    "segment empty": (_replace("segments/stop", np.array([10, 10, 40], np.int64)), "/segments"),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_broken_rule_is_refused_naming_what_is_wrong(tmp_path: Path, rule: str) -> None:
    mutate, where = RULES[rule]
    path = write_foreign(tmp_path / "bad.h5", mutate)
    with pytest.raises(RecordingFormatError) as err:
        open_recording(path)
    assert err.value.where == where
    assert where in str(err.value) and str(path) in str(err.value)


def test_value_rules_are_checked_on_the_part_read(tmp_path: Path) -> None:
    def nan_in_repeat_zero(f: h5py.File) -> None:
        f["responses/spike_counts"][0, 12, 1] = np.nan

    with open_recording(write_foreign(tmp_path / "nan.h5", nan_in_repeat_zero)) as rec:
        rec.counts("mov1")  # the broken bin is elsewhere
        with pytest.raises(RecordingFormatError, match="repeat 0 holds NaN"):
            rec.counts("mov2")


def test_not_hdf5_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(RecordingFormatError, match="not a readable HDF5 file"):
        open_recording(junk)
    with pytest.raises(FileNotFoundError, match="no such recording"):
        open_recording(tmp_path / "absent.h5")


def test_writer_round_trip_and_growth(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "rec.h5"
    frames = rng.integers(0, 256, (25, H, W), dtype=np.uint8)
    counts = rng.poisson(2.0, (3, 25, N)).astype(np.float32)
    with RecordingWriter(path, frame_rate=60.0, height=H, width=W, cell_ids=[1, 2, 42],
                         n_repeats=3, pixel_size_um=10.0) as w:
        w.append_segment("a", frames[:10], counts[:, :10])
        assert not path.exists()  # nothing appears under the real name before commit
        w.append(frames[10:15], counts[:1, 10:15])  # shown once: repeats 1.. become NaN
        w.add_segment("b", 10, 15)
        w.append_segment("c", frames[15:], counts[:, 15:])
        w.set_rf(rng.normal(size=(N, H, W)))
        w.set_cell_types(["ON", "OFF", "ON"])
    with open_recording(path) as rec:
        np.testing.assert_array_equal(rec.frames(), frames)
        np.testing.assert_array_equal(rec.frames("c"), frames[15:])
        np.testing.assert_array_equal(rec.counts("a"), counts[:, :10])
        assert np.isnan(rec.counts("b")[1:]).all()
        np.testing.assert_array_equal(rec.counts("b")[0], counts[0, 10:15])
        assert rec.repeats_shown("b") == 1 and rec.repeats_shown("c") == 3
        assert rec.rf.shape == (N, H, W) and rec.pixel_size_um == 10.0

    # A recording grows: append to it; the original stays intact until commit.
    w = RecordingWriter.append_to(path)
    w.append_segment("d", frames[:4], counts[:, :4])
    with open_recording(path) as rec:
        assert rec.n_frames == 25
    w.commit()
    with open_recording(path) as rec:
        assert rec.n_frames == 29 and rec.segment("d").start == 25


def test_a_crash_leaves_neither_half_written_file_nor_lost_data(tmp_path: Path) -> None:
    path = tmp_path / "stim.h5"
    original = np.full((4, H, W), 7, np.uint8)
    write_stimulus(path, original, 30.0)
    with pytest.raises(RuntimeError):
        with RecordingWriter(path, frame_rate=30.0, height=H, width=W) as w:
            w.append_segment("x", np.zeros((3, H, W), np.uint8))
            raise RuntimeError("power cut")
    with open_recording(path) as rec:
        np.testing.assert_array_equal(rec.frames(), original)
    assert [p.name for p in tmp_path.iterdir()] == ["stim.h5"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frames": np.zeros((3, H, W), np.float32)}, "uint8"),
        ({"frames": np.zeros((3, H + 1, W), np.uint8)}, r"\[t, 6, 8\]"),
        ({"counts": np.zeros((2, 3, N + 1), np.float32)}, "counts must be"),
        ({"counts": -np.ones((2, 3, N), np.float32)}, ">= 0"),
        ({"counts": np.full((2, 3, N), np.nan, np.float32)}, "finite"),
        ({"counts": None}, "needs counts"),
    ],
)
def test_writer_refuses_bad_blocks(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"frames": np.zeros((3, H, W), np.uint8), "counts": np.zeros((2, 3, N), np.float32)} | kwargs
    w = RecordingWriter(tmp_path / "r.h5", frame_rate=30.0, height=H, width=W, cell_ids=[1, 2, 3], n_repeats=2)
    with pytest.raises(ValueError, match=match):
        w.append(**args)
    w.abort()


def test_lazy_access_reads_only_the_requested_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_foreign(tmp_path / "big.h5")
    read_sizes: list[int] = []
    original = h5py.Dataset.__getitem__

    def spy(self: h5py.Dataset, key: object) -> np.ndarray:
        out = original(self, key)
        if self.name in ("/stimulus/frames", "/responses/spike_counts"):
            read_sizes.append(np.asarray(out).size)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    with open_recording(path) as rec:
        assert read_sizes == []  # opening and validating reads no bulk data
        rec.frames("mov1")
        rec.counts(start=10, stop=12)
    assert read_sizes == [10 * H * W, R * 2 * N]


def test_xarray_view(tmp_path: Path) -> None:
    path = write_foreign(tmp_path / "x.h5")
    with open_recording(path) as rec:
        ds = rec.to_xarray()
        assert ds.frames.dims == ("time", "y", "x")
        assert ds.spike_counts.dims == ("repeat", "time", "cell")
        assert list(ds.cell.values) == [7, 42, 3]
        mov2 = ds.spike_counts.sel(cell=42).where(ds.segment == "mov2", drop=True)
        np.testing.assert_array_equal(mov2.values, rec.counts("mov2")[:, :, 1])
        assert ds.time.values[1] == pytest.approx(1 / 30)

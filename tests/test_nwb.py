"""NWB import and export (stimuli.nwb): files written by pynwb as an acquisition pipeline writes them.

The reference for counts is an independent binning of the same spikes with `np.histogram`
over the display schedule the test itself made up; nwbinspector judges the exports.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")

from pynwb import NWBHDF5IO, NWBFile  # noqa: E402
from pynwb.base import ImageReferences  # noqa: E402
from pynwb.epoch import TimeIntervals  # noqa: E402
from pynwb.file import Subject  # noqa: E402
from pynwb.image import GrayscaleImage, Images, IndexSeries, OpticalSeries  # noqa: E402

from stimuli.nwb import (  # noqa: E402
    DesignRecord,
    NwbError,
    NwbImportSettings,
    NwbSessionMetadata,
    critical,
    export_nwb,
    import_nwb,
    inspect_nwb,
)
from stimuli.recording import RecordingWriter, open_recording  # noqa: E402
from stimuli.recording.sta import receptive_field_maps  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 16  # screen side (px); movies are at least this long so OpticalSeries stay time-first
RATE = 30.0
UNIT_IDS = (101, 102, 103, 104, 105)
META = NwbSessionMetadata(subject_id="mouse-7", species="Mus musculus", sex="F", age="P90D",
                          session_start_time="2026-11-03T10:00:00+00:00", experimenter="Doe, Jane",
                          lab="retina lab", institution="somewhere")


@dataclass
class Session:
    """What the made-up rig showed and what the cells fired: the truth the import must recover."""

    frames: dict[str, np.ndarray]  # segment -> [T, H, W] uint8
    edges: dict[str, list[np.ndarray]] = field(default_factory=dict)  # segment -> per showing [T + 1] s
    spikes: list[np.ndarray] = field(default_factory=list)  # per unit, s


def _flips(rng: np.random.Generator, start: float, n: int) -> np.ndarray:
    """`n + 1` flip times from `start`: 30 Hz with 3 % jitter per interval (a real display's)."""
    steps = (1 / RATE) * (1 + 0.03 * rng.standard_normal(n))
    return start + np.concatenate([[0.0], np.cumsum(steps)])


def _session(seed: int = 0) -> Session:
    """mov1 once, a grey gap, mov2 three times back to back, a gap, noise once, a gap."""
    rng = np.random.default_rng(seed)
    s = Session(frames={
        "mov1": rng.integers(0, 256, (40, SIZE, SIZE), dtype=np.uint8),
        "mov2": rng.integers(0, 256, (20, SIZE, SIZE), dtype=np.uint8),
        "noise": (rng.integers(0, 2, (60, SIZE, SIZE)) * 255).astype(np.uint8),
    })
    t = 0.5
    edges = _flips(rng, t, 40)
    s.edges["mov1"] = [edges]
    t = edges[-1] + 0.4  # grey: no stimulus series covers it
    flips = _flips(rng, t, 60)
    s.edges["mov2"] = [flips[0:21], flips[20:41], flips[40:61]]
    t = flips[-1] + 0.3
    s.edges["noise"] = [_flips(rng, t, 60)]
    end = s.edges["noise"][0][-1] + 0.5
    s.spikes = [np.sort(rng.uniform(0, end, rng.poisson(25 * end))) for _ in UNIT_IDS]
    return s


def _expected_counts(s: Session, name: str) -> np.ndarray:
    """`[R, T, N]`: each unit's spikes histogrammed into each showing's frame intervals."""
    return np.stack([np.stack([np.histogram(x, bins=e)[0] for x in s.spikes], axis=1)
                     for e in s.edges[name]]).astype(np.float32)


def _write_pipeline_nwb(path: Path, s: Session, *, stops: bool = True, units: bool = True,
                        colour: bool = False) -> Path:
    """An NWB file as an acquisition pipeline writes one: sorted units on an MEA, the movies that
    were shown (once: OpticalSeries with flip timestamps; repeated: IndexSeries over Images), and,
    with `stops`, a presentations table of every showing's start and stop."""
    nwb = NWBFile(session_description="MEA recording of an isolated mouse retina", identifier="pipeline-1",
                  session_start_time=dt.datetime(2026, 11, 3, 10, tzinfo=dt.UTC), lab="retina lab")
    nwb.subject = Subject(subject_id="mouse-7", species="Mus musculus", sex="F", age="P90D")
    if units:
        device = nwb.create_device(name="MEA", description="252-electrode array")
        group = nwb.create_electrode_group(name="mea", description="array", location="retina", device=device)
        for e in range(8):
            nwb.add_electrode(id=200 + e, location="retina", group=group)
        nwb.add_unit_column("cell_type", "type from the lab's classifier")
        for k, (uid, times) in enumerate(zip(UNIT_IDS, s.spikes, strict=True)):
            nwb.add_unit(id=uid, spike_times=times, electrodes=[k + 1], cell_type=["ON", "OFF", "ON-OFF"][k % 3])
    mov1 = s.frames["mov1"]
    if colour:
        mov1 = np.repeat(mov1[..., None], 3, axis=3)
    for name in ("mov1", "noise"):
        nwb.add_stimulus(OpticalSeries(name=name, data=mov1 if name == "mov1" else s.frames[name], unit="n.a.",
                                       format="raw", timestamps=s.edges[name][0][:-1],
                                       field_of_view=[SIZE * 25e-6, SIZE * 25e-6], distance=0.05,
                                       orientation="row 0 at the top", description=f"{name} frames"))
    images = [GrayscaleImage(name=f"f{t:03d}", data=f) for t, f in enumerate(s.frames["mov2"])]
    template = Images(name="mov2_template", images=images, description="mov2 frames",
                      order_of_images=ImageReferences(name="order_of_images", data=images))
    nwb.add_stimulus_template(template)
    nwb.add_stimulus(IndexSeries(name="mov2", data=np.tile(np.arange(20, dtype=np.uint32), 3), unit="N/A",
                                 indexed_images=template,
                                 timestamps=np.concatenate([e[:-1] for e in s.edges["mov2"]]),
                                 description="mov2, three repeats"))
    if stops:
        table = TimeIntervals(name="presentations", description="stimulus epochs")
        table.add_column("stimulus_name", "series shown")
        for name, shown in s.edges.items():
            for e in shown:
                table.add_row(start_time=e[0], stop_time=e[-1], stimulus_name=name)
        nwb.add_time_intervals(table)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@pytest.fixture(scope="module")
def session() -> Session:
    return _session()


@pytest.fixture(scope="module")
def pipeline_nwb(tmp_path_factory: pytest.TempPathFactory, session: Session) -> Path:
    return _write_pipeline_nwb(tmp_path_factory.mktemp("nwb") / "pipeline.nwb", session)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, pipeline_nwb: Path):  # noqa: ANN201
    out = tmp_path_factory.mktemp("rec") / "rec.h5"
    return out, import_nwb(pipeline_nwb, out)


# --- import -----------------------------------------------------------------------------------------
def test_import_counts_equal_an_independent_binning(imported, session: Session) -> None:  # noqa: ANN001
    out, report = imported
    with open_recording(out) as rec:
        assert [(s.name, s.n_frames) for s in rec.segments] == [("mov1", 40), ("mov2", 20), ("noise", 60)]
        assert rec.n_repeats == 3
        for name in ("mov1", "mov2", "noise"):
            np.testing.assert_array_equal(rec.frames(name), session.frames[name])
            expected = _expected_counts(session, name)
            got = rec.counts(name)
            np.testing.assert_array_equal(got[:len(expected)], expected)
            assert np.isnan(got[len(expected):]).all()  # shown fewer times than the file's repeats
        assert rec.cell_ids.tolist() == list(UNIT_IDS)
        assert rec.cell_types == ["ON", "OFF", "ON-OFF", "ON", "OFF"]
        assert rec.pixel_size_um == pytest.approx(25.0, rel=1e-12)
    inside = sum(_expected_counts(session, n).sum() for n in session.frames)
    assert report.n_spikes == sum(len(x) for x in session.spikes)
    assert report.n_spikes_outside == report.n_spikes - inside > 0  # the grey gaps held spikes


def test_import_frame_rate_is_the_median_flip_interval(imported, session: Session) -> None:  # noqa: ANN001
    out, report = imported
    steps = np.concatenate([np.diff(e[:-1]) for shown in session.edges.values() for e in shown])
    assert report.frame_rate == round(1 / np.median(steps), 6)  # to a micro-hertz
    with open_recording(out) as rec:
        assert rec.frame_rate == report.frame_rate
        assert "median flip interval" in rec.attrs["frame_rate_source"]
    assert abs(report.frame_rate - RATE) < 1.0  # jittered, not a different rate


def test_import_keeps_cell_metadata_and_the_sta_of_the_noise(imported, session: Session) -> None:  # noqa: ANN001
    out, report = imported
    with open_recording(out) as rec:
        rf = rec.rf
    with h5py.File(out, "r") as f:
        assert f["cells/electrode"][()].tolist() == [201, 202, 203, 204, 205]
        # Every showing's bins, the end of its last frame included (from the presentations table).
        for name, shown in session.edges.items():
            np.testing.assert_array_equal(f[f"timing/{name}/flip_time"][()], np.stack(shown))
    counts = _expected_counts(session, "noise")[0]
    want = receptive_field_maps(session.frames["noise"].astype(np.float32) / 255.0, counts)
    np.testing.assert_allclose(rf, want.maps, rtol=1e-4, atol=1e-6)
    assert report.rf_source == want.source("noise")
    assert report.rf_source.startswith("spike-triggered average of segment 'noise'")


def test_import_without_presentations_table_ends_showings_by_the_next_flip_or_one_interval(
        tmp_path: Path, session: Session) -> None:
    path = _write_pipeline_nwb(tmp_path / "bare.nwb", session, stops=False)
    out = tmp_path / "rec.h5"
    report = import_nwb(path, out)
    median = np.median(np.concatenate([np.diff(e[:-1]) for shown in session.edges.values() for e in shown]))
    with open_recording(out) as rec:
        for name, shown in session.edges.items():
            for r, true in enumerate(shown):
                edges = true.copy()
                later = [e[0] for v in session.edges.values() for e in v if e[0] > true[-2]]
                nxt = min(later) if later else np.inf
                # Back to back (mov2's repeats): the next flip; before a gap: one median interval.
                edges[-1] = nxt if nxt - true[-2] <= 1.5 * median else true[-2] + median
                expected = np.stack([np.histogram(x, bins=edges)[0] for x in session.spikes], axis=1)
                np.testing.assert_array_equal(rec.counts(name)[r], expected)
                with h5py.File(out, "r") as f:
                    np.testing.assert_array_equal(f[f"timing/{name}/flip_time"][r], edges)
    assert report.segments[1].repeats == 3


def test_import_selects_units_and_series(tmp_path: Path, pipeline_nwb: Path, session: Session) -> None:
    out = tmp_path / "sel.h5"
    report = import_nwb(pipeline_nwb, out, NwbImportSettings(units=(103, 101), stimuli=("mov2",)))
    with open_recording(out) as rec:
        assert rec.cell_ids.tolist() == [103, 101]
        assert [s.name for s in rec.segments] == ["mov2"]
        np.testing.assert_array_equal(rec.counts("mov2"), _expected_counts(session, "mov2")[:, :, [2, 0]])
    assert report.rf_source is None


def test_spikes_outside_every_presentation_are_counted_and_reported(tmp_path: Path, session: Session) -> None:
    gap = (session.edges["mov1"][0][-1] + 0.05, session.edges["mov2"][0][0] - 0.05)
    quiet = Session(session.frames, session.edges, [*session.spikes[:4], np.linspace(*gap, 7)])
    path = _write_pipeline_nwb(tmp_path / "quiet.nwb", quiet)
    report = import_nwb(path, tmp_path / "rec.h5")
    assert report.units_outside_only == (105,)
    with h5py.File(tmp_path / "rec.h5", "r") as f:
        assert f["cells/n_spikes_outside"][4] == 7
    assert any("units with no spike inside any presentation: [105]" in line for line in report.lines())


# --- refusals ---------------------------------------------------------------------------------------
def _edit(path: Path, dataset: str, data: np.ndarray | None) -> None:
    with h5py.File(path, "r+") as f:
        del f[dataset]
        if data is not None:
            f.create_dataset(dataset, data=data)


def test_refuses_a_file_without_units(tmp_path: Path, session: Session) -> None:
    path = _write_pipeline_nwb(tmp_path / "x.nwb", session, units=False)
    with pytest.raises(NwbError, match=r"/units: missing or empty"):
        import_nwb(path, tmp_path / "rec.h5")
    assert not (tmp_path / "rec.h5").exists()


def test_refuses_a_series_without_times(tmp_path: Path, session: Session) -> None:
    path = _write_pipeline_nwb(tmp_path / "x.nwb", session)
    _edit(path, "stimulus/presentation/mov1/timestamps", None)
    with pytest.raises(NwbError, match=r"stimulus/presentation/mov1: has neither timestamps nor starting_time"):
        import_nwb(path, tmp_path / "rec.h5")
    assert list(tmp_path.glob("*.h5*")) == []


def test_refuses_flips_out_of_order(tmp_path: Path, session: Session) -> None:
    path = _write_pipeline_nwb(tmp_path / "x.nwb", session)
    flips = np.concatenate([e[:-1] for e in session.edges["mov2"]])
    flips[[5, 6]] = flips[[6, 5]]
    _edit(path, "stimulus/presentation/mov2/timestamps", flips)
    with pytest.raises(NwbError, match=r"mov2/timestamps: flips out of order: frame 6"):
        import_nwb(path, tmp_path / "rec.h5")


def test_refuses_unknown_units_and_series(tmp_path: Path, pipeline_nwb: Path) -> None:
    with pytest.raises(NwbError, match=r"/units: no unit with id \[7\]"):
        import_nwb(pipeline_nwb, tmp_path / "a.h5", NwbImportSettings(units=(101, 7)))
    with pytest.raises(NwbError, match=r"no series named \['mov9'\]"):
        import_nwb(pipeline_nwb, tmp_path / "b.h5", NwbImportSettings(stimuli=("mov9",)))


def test_refuses_colour_frames(tmp_path: Path, session: Session) -> None:
    path = _write_pipeline_nwb(tmp_path / "x.nwb", session, colour=True)
    with pytest.raises(NwbError, match=r"mov1/data: frames are colour"):
        import_nwb(path, tmp_path / "rec.h5")


def test_refuses_series_at_different_frame_rates(tmp_path: Path, session: Session) -> None:
    path = _write_pipeline_nwb(tmp_path / "x.nwb", session)
    noise = session.edges["noise"][0]
    _edit(path, "stimulus/presentation/noise/timestamps", noise[0] + (noise[:-1] - noise[0]) / 2)
    with pytest.raises(NwbError, match=r"noise: flips every .* ms, the others every"):
        import_nwb(path, tmp_path / "rec.h5")


def test_refuses_indices_outside_the_template(tmp_path: Path, session: Session) -> None:
    path = _write_pipeline_nwb(tmp_path / "x.nwb", session)
    _edit(path, "stimulus/presentation/mov2/data", np.tile(np.arange(20, dtype=np.uint32), 3) + 1)
    with pytest.raises(NwbError, match=r"mov2/data: indices run 1..20; the template holds 20"):
        import_nwb(path, tmp_path / "rec.h5")


def test_refuses_overlapping_showings(tmp_path: Path, session: Session) -> None:
    path = _write_pipeline_nwb(tmp_path / "x.nwb", session, stops=False)
    _edit(path, "stimulus/presentation/noise/timestamps", session.edges["mov1"][0][:-1][:60].tolist()
          + list(session.edges["mov1"][0][-1] + np.arange(1, 21) / RATE))
    with pytest.raises(NwbError, match=r"overlaps showing 0 of 'noise'"):
        import_nwb(path, tmp_path / "rec.h5")


def test_refuses_a_file_that_is_not_nwb(tmp_path: Path) -> None:
    bad = tmp_path / "x.nwb"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(NwbError, match=r"x.nwb: file: not a readable NWB file"):
        import_nwb(bad, tmp_path / "rec.h5")


# --- export and round trip --------------------------------------------------------------------------
def _small_recording(path: Path, *, counts_dtype: str = "uint16", fractional: bool = False) -> Path:
    """A recording with counts only (no flip or spike times), as a simulation writes one."""
    rng = np.random.default_rng(3)
    with RecordingWriter(path, frame_rate=RATE, height=SIZE, width=SIZE, cell_ids=[4, 8, 15],
                         n_repeats=2, counts_dtype="float32", pixel_size_um=12.5,
                         attrs={"source": "test"}) as w:
        w.append_segment("mov1", rng.integers(0, 256, (24, SIZE, SIZE), dtype=np.uint8),
                         rng.poisson(1.0, (1, 24, 3)).astype(np.float32) + (0.5 if fractional else 0))
        w.append_segment("clip", rng.integers(0, 256, (6, SIZE, SIZE), dtype=np.uint8),
                         rng.poisson(2.0, (2, 6, 3)).astype(np.float32))
        w.set_cell_types(["ON", "OFF", "ON"])
        w.set_rf(rng.standard_normal((3, SIZE, SIZE)).astype(np.float32))
    return path


def _assert_same_recording(a: Path, b: Path) -> None:
    with open_recording(a) as x, open_recording(b) as y:
        assert x.segments == y.segments
        assert x.cell_ids.tolist() == y.cell_ids.tolist()
        np.testing.assert_array_equal(x.frames(), y.frames())
        np.testing.assert_array_equal(x.counts(), y.counts())  # NaN where not shown, on both sides
        assert x.cell_types == y.cell_types
        np.testing.assert_array_equal(x.rf, y.rf)
        assert x.frame_rate == pytest.approx(y.frame_rate, rel=1e-9)
        assert (x.pixel_size_um is None and y.pixel_size_um is None) or \
            x.pixel_size_um == pytest.approx(y.pixel_size_um, rel=1e-12)


def test_export_passes_nwbinspector_and_round_trips_bin_centres(tmp_path: Path) -> None:
    rec = _small_recording(tmp_path / "rec.h5")
    report = export_nwb(rec, tmp_path / "out.nwb", META)
    assert report.spike_times_source == "bin centres"
    assert dict(report.series) == {"mov1": "OpticalSeries", "clip": "IndexSeries"}  # clip: shown twice
    assert critical(inspect_nwb(tmp_path / "out.nwb")) == []
    import_nwb(tmp_path / "out.nwb", tmp_path / "back.h5")
    _assert_same_recording(rec, tmp_path / "back.h5")
    with NWBHDF5IO(str(tmp_path / "out.nwb"), "r") as io:
        nwb = io.read()
        assert set(nwb.units["spike_times_source"].data[:]) == {"bin centres"}
        assert nwb.subject.subject_id == "mouse-7"
        assert "kept no flip times" in nwb.notes


def test_round_trip_of_an_import_keeps_recorded_spike_and_flip_times(
        tmp_path: Path, imported, pipeline_nwb: Path) -> None:  # noqa: ANN001
    rec, _ = imported
    export_nwb(rec, tmp_path / "out.nwb")  # subject and session come from the imported attrs
    assert critical(inspect_nwb(tmp_path / "out.nwb")) == []
    import_nwb(tmp_path / "out.nwb", tmp_path / "back.h5")
    _assert_same_recording(rec, tmp_path / "back.h5")
    with h5py.File(rec, "r") as a, h5py.File(tmp_path / "back.h5", "r") as b:
        assert b["cells/electrode"][()].tolist() == a["cells/electrode"][()].tolist() == [201, 202, 203, 204, 205]
    with NWBHDF5IO(str(pipeline_nwb), "r") as a, NWBHDF5IO(str(tmp_path / "out.nwb"), "r") as b:
        first, again = a.read(), b.read()
        np.testing.assert_array_equal(first.units["spike_times"].target.data[:],
                                      again.units["spike_times"].target.data[:])
        assert set(again.units["spike_times_source"].data[:]) == {"recorded"}
        np.testing.assert_array_equal(first.stimulus["mov1"].timestamps[:], again.stimulus["mov1"].timestamps[:])
        assert again.acquisition["frame_flips"].timestamps.shape == (41 + 3 * 21 + 61,)
        assert again.subject.species == "Mus musculus"


def test_export_writes_designs_as_time_intervals(tmp_path: Path) -> None:
    rec = _small_recording(tmp_path / "rec.h5")
    designs = [DesignRecord("clip", "increase", 8, "runs/vist"), DesignRecord("mov1", "increase", 8, "runs/vist",
                                                                              role="natural")]
    export_nwb(rec, tmp_path / "out.nwb", META, designs=designs)
    assert critical(inspect_nwb(tmp_path / "out.nwb")) == []
    with NWBHDF5IO(str(tmp_path / "out.nwb"), "r") as io:
        table = io.read().intervals["designs"].to_dataframe()
    assert table["stimulus_name"].tolist() == ["mov1", "clip", "clip"]  # one row per showing, in time order
    assert table["role"].tolist() == ["natural", "design", "design"]
    assert table["cell"].tolist() == [8, 8, 8] and set(table["objective"]) == {"increase"}
    with pytest.raises(NwbError, match=r"designs: a design names segment 'gone'"):
        export_nwb(rec, tmp_path / "x.nwb", META, designs=[DesignRecord("gone", "increase", 8, "t")])


def test_export_refuses_missing_subject_fractional_counts_and_stimulus_only(tmp_path: Path) -> None:
    rec = _small_recording(tmp_path / "rec.h5")
    with pytest.raises(NwbError, match=r"metadata: the subject's subject_id, species, sex, age are unknown"):
        export_nwb(rec, tmp_path / "a.nwb")
    frac = _small_recording(tmp_path / "frac.h5", fractional=True)
    with pytest.raises(ValueError, match=r"/responses/spike_counts: holds fractional counts"):
        export_nwb(frac, tmp_path / "b.nwb", META)
    from stimuli.recording import write_stimulus

    stim = write_stimulus(tmp_path / "stim.h5", np.zeros((3, 4, 4), np.uint8), RATE)
    with pytest.raises(NwbError, match=r"/responses: a stimulus-only file has no units"):
        export_nwb(stim, tmp_path / "c.nwb", META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frac.h5", "rec.h5", "stim.h5"]


# --- command line and the rig side --------------------------------------------------------------------
def test_cli_import_and_export(tmp_path: Path, pipeline_nwb: Path) -> None:
    from typer.testing import CliRunner

    from insilico.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["import", "nwb", str(pipeline_nwb), "--out", str(tmp_path / "rec.h5"),
                            "--units", "101,102", "--stimulus", "mov1", "--stimulus", "mov2"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "1 / median flip interval" in said and "segment 'mov2': IndexSeries, 20 frames, shown 3 times" in said
    r = runner.invoke(app, ["export", "nwb", str(tmp_path / "rec.h5"), "--out", str(tmp_path / "out.nwb")])
    assert r.exit_code == 0, r.output
    assert "nwbinspector: no critical finding" in " ".join(r.output.split())
    r = runner.invoke(app, ["import", "nwb", str(pipeline_nwb), "--out", str(tmp_path / "x.h5"), "--units", "9"])
    assert r.exit_code == 2
    said = " ".join(r.output.split())  # the console wraps long lines
    assert said.startswith("error:") and "/units: no unit with id [9]" in said and "Traceback" not in said


def test_nwb_import_and_export_run_without_torch(tmp_path: Path, pipeline_nwb: Path, without_torch: str) -> None:
    code = without_torch + (
        "from stimuli.nwb import import_nwb, export_nwb\n"
        f"import_nwb({str(pipeline_nwb)!r}, {str(tmp_path / 'r.h5')!r})\n"
        f"export_nwb({str(tmp_path / 'r.h5')!r}, {str(tmp_path / 'o.nwb')!r})\n"
        "assert not {'insilico', 'vist_model', 'torch'} & {m.split('.')[0] for m in sys.modules}\n"
        "from typer.testing import CliRunner\n"
        "from insilico.cli import app\n"
        f"r = CliRunner().invoke(app, ['export', 'nwb', {str(tmp_path / 'r.h5')!r}, '--out', {str(tmp_path / 'c.nwb')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout


# --- sessions of the rig and of protocol runs written as NWB -------------------------------------------
META_TOML = """subject_id = "mouse-7"\nspecies = "Mus musculus"\nsex = "F"\nage = "P90D"\n"""


@pytest.fixture()
def rig(tmp_path: Path):  # noqa: ANN201
    from rig_bridge.retina.backend import SimBackend
    from rig_bridge.server import RigServer, ServerConfig
    from rig_bridge.transport import free_port

    backend = SimBackend(n_cells=6, size=SIZE, frame_rate=RATE, seed=2)
    srv = RigServer(backend, ServerConfig(port=free_port(), store_dir=tmp_path / "store", insecure=True,
                                          heartbeat_s=0.2, rig_seed=2)).start()
    yield srv.address
    srv.stop()


def test_rig_present_writes_the_session_as_nwb(tmp_path: Path, rig: str) -> None:
    from typer.testing import CliRunner

    from rig_bridge.cli import rig_app
    from stimuli.recording import write_stimulus

    stim = write_stimulus(tmp_path / "stim.h5", np.random.default_rng(1).integers(0, 256, (20, SIZE, SIZE),
                                                                                  dtype=np.uint8), RATE)
    (tmp_path / "meta.toml").write_text(META_TOML)
    args = ["present", str(stim), "--rig", rig, "--insecure", "--out", str(tmp_path / "s.h5"),
            "--nwb", str(tmp_path / "s.nwb"), "--nwb-metadata", str(tmp_path / "meta.toml")]
    for repeats in ("2", "1"):  # a session holds as many repeats as its first presentation
        r = CliRunner().invoke(rig_app, [*args, "--repeats", repeats])
        assert r.exit_code == 0, r.output
    assert "session written as NWB" in r.output
    assert critical(inspect_nwb(tmp_path / "s.nwb")) == []
    import_nwb(tmp_path / "s.nwb", tmp_path / "back.h5")
    with open_recording(tmp_path / "s.h5") as a, open_recording(tmp_path / "back.h5") as b:
        assert len(a.segments) == 2 and a.segments == b.segments
        np.testing.assert_array_equal(a.counts(), b.counts())


def test_rig_present_refuses_nwb_without_a_subject_before_showing_anything(tmp_path: Path, rig: str) -> None:
    from typer.testing import CliRunner

    from rig_bridge.cli import rig_app
    from stimuli.recording import write_stimulus

    stim = write_stimulus(tmp_path / "stim.h5", np.zeros((4, SIZE, SIZE), np.uint8), RATE)
    r = CliRunner().invoke(rig_app, ["present", str(stim), "--rig", rig, "--insecure", "--out",
                                     str(tmp_path / "s.h5"), "--nwb", str(tmp_path / "s.nwb")])
    assert r.exit_code == 1 and "--nwb needs the subject's subject_id, species, sex, age" in r.output
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.nwb").exists()


CHARACTERIZE = """
kind = "characterize"
[presentation]
repeats = 1
isi_grey_frames = 2
[[stimulus]]
family = "white_noise"
seconds = 1
[[stimulus]]
family = "natural_movie"
seconds = 1
repeats = 2
"""


def test_run_characterize_with_nwb_writes_session_nwb(tmp_path: Path, rig: str) -> None:
    from insilico.loop.runner import run_protocol

    (tmp_path / "p.toml").write_text(CHARACTERIZE)
    (tmp_path / "meta.toml").write_text(META_TOML)
    outcome = run_protocol(tmp_path / "p.toml", None, rig, tmp_path / "exp", insecure=True, timeout_s=30,
                           live=False, nwb=tmp_path / "meta.toml")
    session = tmp_path / "exp" / "characterize" / "session.h5"
    assert session.with_suffix(".nwb") in outcome.files
    assert critical(inspect_nwb(session.with_suffix(".nwb"))) == []
    import_nwb(session.with_suffix(".nwb"), tmp_path / "back.h5")
    _assert_same_recording(session, tmp_path / "back.h5")


def test_run_refuses_incomplete_nwb_metadata_before_the_rig(tmp_path: Path) -> None:
    from insilico.loop.runner import run_protocol
    from stimuli.errors import InsilicoError

    (tmp_path / "p.toml").write_text(CHARACTERIZE)
    (tmp_path / "meta.toml").write_text('subject_id = "m1"\n')
    with pytest.raises(InsilicoError, match=r"meta.toml: NWB metadata lacks the subject's species, sex, age"):
        run_protocol(tmp_path / "p.toml", None, "tcp://127.0.0.1:1", tmp_path / "exp", insecure=True, live=False,
                     nwb=tmp_path / "meta.toml")


CLOSED_LOOP = """
kind = "mei_closed_loop"
rounds = 1
[design]
cells = [3]
objectives = ["increase"]
controls = ["natural", "parametric"]
n_frames = 40
window_frames = 2
seeds = 1
steps = 1
comparison_trials = 1
natural_top_k = 1
device = "cpu"
[presentation]
repeats = 2
isi_grey_frames = 3
[finetune]
mode = "readout"
epochs = 1
window = 40
include_training_data = false
[evaluation]
data = "{data}"
segment = "mov2"
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_closed_loop_round_is_archived_as_nwb_with_its_designs(tiny_twin_dir: Path, tiny_recording: Path,
                                                               feature_cache_dir: Path, tmp_path: Path) -> None:
    from insilico.loop.runner import run_protocol
    from rig_bridge.retina.backend import SimBackend
    from rig_bridge.server import RigServer, ServerConfig
    from rig_bridge.transport import free_port

    (tmp_path / "loop.toml").write_text(CLOSED_LOOP.format(data=tiny_recording))
    (tmp_path / "meta.toml").write_text(META_TOML)
    backend = SimBackend(n_cells=12, size=32, frame_rate=RATE, seed=0)
    with RigServer(backend, ServerConfig(port=free_port(), store_dir=tmp_path / "store", insecure=True)) as srv:
        run_protocol(tmp_path / "loop.toml", tiny_twin_dir, srv.address, tmp_path / "exp", insecure=True,
                     timeout_s=60, live=False, feature_cache=feature_cache_dir, nwb=tmp_path / "meta.toml")
    nwb = tmp_path / "exp" / "round_1" / "session.nwb"
    assert critical(inspect_nwb(nwb)) == []
    with NWBHDF5IO(str(nwb), "r") as io:
        designs = io.read().intervals["designs"].to_dataframe()
    assert set(designs["role"]) == {"design", "natural", "parametric"}
    assert set(designs["cell"]) == {3} and set(designs["objective"]) == {"increase"}
    assert len(designs) == 3 * 2  # three clips, two repeats each
    assert set(designs["twin"]) == {str(tiny_twin_dir)}


# --- one mapping rule at a time, on one-series files ---------------------------------------------------
def _tiny_nwb(path: Path, *stimuli, spikes: np.ndarray | None = None, templates=(), rf=None) -> Path:  # noqa: ANN001
    nwb = NWBFile(session_description="tiny", identifier="tiny", session_start_time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    if rf is not None:
        nwb.add_unit_column("rf", "receptive field")
    times = np.linspace(0.01, 3.0, 90) if spikes is None else spikes
    nwb.add_unit(id=1, spike_times=times, **({"rf": rf} if rf is not None else {}))
    for t in templates:
        nwb.add_stimulus_template(t)
    for s in stimuli:
        nwb.add_stimulus(s)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def test_starting_time_and_rate_give_one_flip_per_frame(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (20, 4, 4), dtype=np.uint8)
    path = _tiny_nwb(tmp_path / "x.nwb", OpticalSeries(name="mov", data=frames, unit="n.a.", format="raw",
                                                       starting_time=0.25, rate=20.0))
    spikes = np.linspace(0.01, 3.0, 90)
    report = import_nwb(path, tmp_path / "r.h5")
    assert report.frame_rate == 20.0
    with open_recording(tmp_path / "r.h5") as rec:
        edges = 0.25 + np.arange(21) / 20.0  # the last frame is held one interval (no later flip)
        np.testing.assert_array_equal(rec.counts("mov")[0, :, 0], np.histogram(spikes, bins=edges)[0])


def test_index_series_runs_become_repeats_and_float_frames_grey_levels(tmp_path: Path) -> None:
    movie = np.random.default_rng(1).random((5, 4, 4))  # floats in [0, 1]

    def frames() -> Images:
        images = [GrayscaleImage(name=f"i{k}", data=m) for k, m in enumerate(movie)]
        return Images(name="frames", images=images, order_of_images=ImageReferences(name="order_of_images",
                                                                                    data=images))

    template = frames()
    index = np.array([4, 0, 2, 2] * 3, dtype=np.uint32)  # a held frame (2, 2) is no repeat
    series = IndexSeries(name="mov", data=index, unit="N/A", indexed_images=template,
                         timestamps=np.arange(12) / 30.0)
    path = _tiny_nwb(tmp_path / "x.nwb", series, templates=[template])
    report = import_nwb(path, tmp_path / "r.h5")
    assert [(s.name, s.n_frames, s.repeats) for s in report.segments] == [("mov", 4, 3)]
    with open_recording(tmp_path / "r.h5") as rec:
        np.testing.assert_array_equal(rec.frames("mov"), np.rint(movie[[4, 0, 2, 2]] * 255).astype(np.uint8))
    template = frames()
    again = IndexSeries(name="once", data=np.array([0, 1, 2, 0, 1], dtype=np.uint32), unit="N/A",
                        indexed_images=template, timestamps=np.arange(5) / 30.0)
    report = import_nwb(_tiny_nwb(tmp_path / "y.nwb", again, templates=[template]), tmp_path / "s.h5")
    assert [(s.n_frames, s.repeats) for s in report.segments] == [(5, 1)]  # not whole runs: one showing


def test_a_units_rf_column_is_taken_over_the_sta(tmp_path: Path) -> None:
    frames = (np.random.default_rng(2).integers(0, 2, (30, 4, 4)) * 255).astype(np.uint8)
    rf = np.arange(16, dtype=np.float32).reshape(4, 4)
    path = _tiny_nwb(tmp_path / "x.nwb", OpticalSeries(name="noise", data=frames, unit="n.a.", format="raw",
                                                       starting_time=0.0, rate=30.0), rf=rf)
    report = import_nwb(path, tmp_path / "r.h5")
    assert report.rf_source == "/units/rf"
    with open_recording(tmp_path / "r.h5") as rec:
        np.testing.assert_array_equal(rec.rf[0], rf)


def test_noise_segment_setting_picks_the_series_for_the_sta(tmp_path: Path) -> None:
    frames = (np.random.default_rng(2).integers(0, 2, (30, 4, 4)) * 255).astype(np.uint8)
    path = _tiny_nwb(tmp_path / "x.nwb", OpticalSeries(name="checks_4px", data=frames, unit="n.a.", format="raw",
                                                       starting_time=0.0, rate=30.0))
    assert import_nwb(path, tmp_path / "a.h5").rf_source is None  # not named as white noise
    report = import_nwb(path, tmp_path / "b.h5", NwbImportSettings(noise_segment="checks_4px"))
    assert report.rf_source.startswith("spike-triggered average of segment 'checks_4px'")
    with pytest.raises(NwbError, match=r"no series 'noise' to estimate receptive fields from"):
        import_nwb(path, tmp_path / "c.h5", NwbImportSettings(noise_segment="noise"))


def test_refuses_a_file_without_image_series(tmp_path: Path) -> None:
    from pynwb import TimeSeries

    path = _tiny_nwb(tmp_path / "x.nwb", TimeSeries(name="current", data=np.zeros(10), unit="A", rate=10.0))
    with pytest.raises(NwbError, match=r"stimulus/presentation: holds no OpticalSeries, ImageSeries or IndexSeries"):
        import_nwb(path, tmp_path / "r.h5")


def test_refuses_frames_in_external_files(tmp_path: Path) -> None:
    from pynwb.image import ImageSeries

    series = ImageSeries(name="mov", external_file=["mov.avi"], format="external", starting_frame=[0],
                         num_samples=30, rate=30.0, starting_time=0.0, unit="n.a.")
    path = _tiny_nwb(tmp_path / "x.nwb", series)
    with pytest.raises(NwbError, match=r"mov/external_file: frames live in external files"):
        import_nwb(path, tmp_path / "r.h5")


def test_refuses_a_presentation_that_stops_before_its_last_flip(tmp_path: Path, session: Session) -> None:
    path = _write_pipeline_nwb(tmp_path / "x.nwb", session)
    with h5py.File(path, "r+") as f:
        stops = f["intervals/presentations/stop_time"]
        stops[0] = session.edges["mov1"][0][-3]
    with pytest.raises(NwbError, match=r"intervals/presentations: a row stops at .* before the last flip"):
        import_nwb(path, tmp_path / "r.h5")


def test_sta_accumulated_block_by_block_equals_the_whole_segment_sta() -> None:
    from stimuli.recording.sta import StaAccumulator, sta_by_lag

    rng = np.random.default_rng(4)
    frames = rng.random((97, 5, 6))
    counts = rng.poisson(0.8, (97, 7)).astype(np.float64)
    counts[:, 3] = 0  # a cell that never fired
    whole = sta_by_lag(frames, counts, range(0, 15))
    acc = StaAccumulator(7, 5, 6, range(0, 15))
    for a, b in ((0, 4), (4, 40), (40, 41), (41, 97)):  # blocks shorter than the longest lag too
        acc.add(frames[a:b], counts[a:b])
    got = acc.result()
    np.testing.assert_allclose(got.by_lag, whole.by_lag, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(got.peak_lag, whole.peak_lag)
    np.testing.assert_array_equal(got.n_spikes, whole.n_spikes)


def test_small_blocks_give_the_same_recording(tmp_path: Path, imported, pipeline_nwb: Path) -> None:  # noqa: ANN001
    out, _ = imported
    import_nwb(pipeline_nwb, tmp_path / "blocks.h5", NwbImportSettings(chunk_frames=7))
    with open_recording(out) as a, open_recording(tmp_path / "blocks.h5") as b:
        np.testing.assert_array_equal(a.frames(), b.frames())
        np.testing.assert_array_equal(a.counts(), b.counts())
        np.testing.assert_allclose(a.rf, b.rf, rtol=1e-5, atol=1e-7)


def test_cli_refuses_bad_unit_lists_and_metadata_files(tmp_path: Path, pipeline_nwb: Path) -> None:
    from typer.testing import CliRunner

    from insilico.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["import", "nwb", str(pipeline_nwb), "--out", str(tmp_path / "r.h5"), "--units", "3,x"])
    assert r.exit_code == 2 and "--units takes unit ids separated by commas" in " ".join(r.output.split())
    rec = _small_recording(tmp_path / "rec.h5")
    (tmp_path / "m.toml").write_text(META_TOML + 'subjectid = "typo"\n')
    r = runner.invoke(app, ["export", "nwb", str(rec), "--out", str(tmp_path / "o.nwb"), "--metadata",
                            str(tmp_path / "m.toml")])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "m.toml: metadata: unknown keys ['subjectid']" in said
    (tmp_path / "m.toml").write_text("subject_id = \n")
    r = runner.invoke(app, ["export", "nwb", str(rec), "--out", str(tmp_path / "o.nwb"), "--metadata",
                            str(tmp_path / "m.toml")])
    assert r.exit_code == 2 and "m.toml: metadata: not valid TOML" in " ".join(r.output.split())
    assert not (tmp_path / "o.nwb").exists() and not (tmp_path / "r.h5").exists()

"""Seconds and peak Python memory of `import_nwb` and `export_nwb` against recording length.

    .venv/bin/python benchmarks/nwb.py [--minutes 2,8] [--cells 100] [--size 64]

Each length gets an NWB file written with pynwb as an acquisition pipeline writes one: a
natural movie shown once (OpticalSeries, jittered 30 Hz flips), a 30 s movie shown 10 times
back to back (IndexSeries over Images), white noise for a quarter of the length, and `cells`
units firing 10 spikes/s. The baseline, measured in the same run, is reading the same frames
and spike times with pynwb and nothing else; the ratio says what binning and writing cost on
top. Peak memory is what tracemalloc sees in a second, traced call (numpy and Python objects,
not HDF5's own caches).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.table import Table

from insilico.console import console
from stimuli.nwb import NwbSessionMetadata, export_nwb, import_nwb

RATE = 30.0
META = NwbSessionMetadata(subject_id="bench", species="Mus musculus", sex="U", age="P90D")


def write_pipeline_nwb(path: Path, minutes: float, n_cells: int, size: int, seed: int = 0) -> None:
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.base import ImageReferences
    from pynwb.file import Subject
    from pynwb.image import GrayscaleImage, Images, IndexSeries, OpticalSeries

    rng = np.random.default_rng(seed)

    def flips(start: float, n: int) -> np.ndarray:
        return start + np.concatenate([[0.0], np.cumsum((1 / RATE) * (1 + 0.01 * rng.standard_normal(n)))])

    n_movie, n_noise, n_clip = int(minutes * 60 * RATE * 0.6), int(minutes * 60 * RATE * 0.25), int(30 * RATE)
    nwb = NWBFile(session_description="benchmark", identifier="bench",
                  session_start_time=dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    nwb.subject = Subject(subject_id="bench", species="Mus musculus", sex="U", age="P90D")
    movie = flips(1.0, n_movie)
    nwb.add_stimulus(OpticalSeries(name="mov1", data=rng.integers(0, 256, (n_movie, size, size), dtype=np.uint8),
                                   unit="n.a.", format="raw", timestamps=movie[:-1]))
    clip = flips(movie[-1] + 1.0, 10 * n_clip)
    images = [GrayscaleImage(name=f"f{t:05d}", data=rng.integers(0, 256, (size, size), dtype=np.uint8))
              for t in range(n_clip)]
    template = Images(name="mov2", images=images, order_of_images=ImageReferences(name="order_of_images",
                                                                                  data=images))
    nwb.add_stimulus_template(template)
    nwb.add_stimulus(IndexSeries(name="mov2", data=np.tile(np.arange(n_clip, dtype=np.uint32), 10), unit="N/A",
                                 indexed_images=template, timestamps=clip[:-1]))
    noise = flips(clip[-1] + 1.0, n_noise)
    nwb.add_stimulus(OpticalSeries(name="noise", unit="n.a.", format="raw", timestamps=noise[:-1],
                                   data=(rng.integers(0, 2, (n_noise, size, size)) * 255).astype(np.uint8)))
    end = noise[-1] + 1.0
    for uid in range(n_cells):
        nwb.add_unit(id=uid, spike_times=np.sort(rng.uniform(0, end, rng.poisson(10 * end))))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def read_only(path: Path) -> None:
    """The baseline: every frame, template image and spike time read with pynwb, nothing else."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        for series in nwb.stimulus.values():
            if getattr(series, "indexed_images", None) is not None:
                for image in series.indexed_images.order_of_images.data[:]:
                    np.asarray(image.data[()])
            else:
                for a in range(0, series.data.shape[0], 512):
                    np.asarray(series.data[a:a + 512])
        ends = nwb.units["spike_times"].data[:]
        flat = nwb.units["spike_times"].target.data
        lo = 0
        for hi in ends:
            np.asarray(flat[lo:hi])
            lo = hi


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """Seconds of one call, and peak MiB (tracemalloc) of a second one: tracing slows Python down."""
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", default="2,8", help="recording lengths, comma-separated")
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    table = Table(title=f"NWB import/export, {args.cells} units, {args.size}x{args.size} px, 30 Hz")
    for col in ("minutes", "NWB MiB", "read (s)", "import (s)", "import/read", "import peak MiB",
                "export (s)", "export peak MiB"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in (float(m) for m in args.minutes.split(",")):
            src, rec, out = Path(tmp) / f"in{minutes}.nwb", Path(tmp) / f"r{minutes}.h5", Path(tmp) / f"o{minutes}.nwb"
            write_pipeline_nwb(src, minutes, args.cells, args.size)
            read_s, _ = measure(lambda src=src: read_only(src))
            import_s, import_mib = measure(lambda src=src, rec=rec: import_nwb(src, rec))
            export_s, export_mib = measure(lambda rec=rec, out=out: export_nwb(rec, out, META))
            table.add_row(f"{minutes:g}", f"{src.stat().st_size / 2**20:.0f}", f"{read_s:.2f}", f"{import_s:.2f}",
                          f"{import_s / read_s:.1f}", f"{import_mib:.0f}", f"{export_s:.2f}", f"{export_mib:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()

"""Seconds per cell of `insilico attribute` for each method, on a 90-cell 64 x 64 cpu-preset twin.

    .venv/bin/python benchmarks/attribution.py --data /tmp/attr_sim.h5 [--model RUN] [--cells 2]

Without `--model`, an untrained twin of the cpu preset is built for the recording (timing does
not depend on the weights). A few cells are timed per method and the table extrapolates to the
whole population (random clips are shared between cells, so a full run is a little cheaper).
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.table import Table

from insilico.attribution.config import AttributionConfig
from insilico.attribution.pipeline import attribute_twin, load_test_movie
from insilico.console import console
from stimuli.recording import open_recording
from vist_model.fit_twin import TwinSpec, new_twin
from vist_model.receptive_fields import receptive_fields
from vist_model.twin import Twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--cells", type=int, default=2, help="cells timed per method")
    parser.add_argument("--methods", default="saliency,ig,occlusion")
    parser.add_argument("--clips", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.model:
        twin = Twin.load(args.model, device="cpu")
    else:
        with open_recording(args.data) as rec:
            rfs = receptive_fields(rec)
            twin = new_twin(rec, TwinSpec(preset="cpu", backbone="tiny"), rfs.maps, rfs.source)
    movie = load_test_movie(twin, args.data, "mov2")
    n_total = twin.metadata.n_cells
    ids = list(twin.metadata.cell_ids[: args.cells])
    table = Table(title=f"attribution, {n_total} cells, {twin.metadata.frame_shape} px, "
                        f"{torch.get_num_threads()} threads ({twin.metadata.describe_backbone()})")
    for col in ("method", "clips", "s / cell", f"est. {n_total} cells (min)"):
        table.add_column(col, justify="right")
    for method in args.methods.split(","):
        config = AttributionConfig(method=method, n_clips=args.clips)
        started = time.perf_counter()
        attribute_twin(twin, movie, ids, config)
        per_cell = (time.perf_counter() - started) / len(ids)
        table.add_row(method, str(args.clips), f"{per_cell:.1f}", f"{per_cell * n_total / 60:.1f}")
        console.print(f"{method}: {per_cell:.1f} s per cell")
    console.print(table)


if __name__ == "__main__":
    main()

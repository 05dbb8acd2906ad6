"""Seconds per cell of `insilico attribute` for each method, on a 90-cell 64 x 64 cpu-preset twin,
and (`--truth`) how well a trained twin's maps match the simulator's true spatial filters.

    .venv/bin/python benchmarks/attribution.py --data /tmp/attr_sim.h5 [--model RUN] [--cells 2]
    .venv/bin/python benchmarks/attribution.py --data sim.h5 --model RUN --truth [--out reports/]

`--truth` runs the default method on every cell (the whole `insilico attribute --cells all`
computation, timed) and prints, for the reliable linear cells (split-half r > 0.5 on the
test movie), the correlation of each spatial map with the true filter, the share with
|r| >= 0.7, and the sanity check: the same correlation for maps of the randomised twin.

Without `--model`, an untrained twin of the cpu preset is built for the recording (timing does
not depend on the weights). A few cells are timed per method and the table extrapolates to the
whole population (random clips are shared between cells, so a full run is a little cheaper).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from insilico.attribution.config import AttributionConfig, random_share
from insilico.attribution.pipeline import attribute_twin, load_test_movie, write_reports
from insilico.attribution.summaries import map_correlation
from insilico.console import console, progress
from stimuli.recording import open_recording
from stimuli.recording.reliability import split_half_reliability
from vist_model.fit_twin import TwinSpec, new_twin
from vist_model.receptive_fields import receptive_fields
from vist_model.twin import Twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--cells", type=int, default=2, help="cells timed per method")
    parser.add_argument("--methods", default="saliency,ig,occlusion")
    parser.add_argument("--clips", type=int, default=AttributionConfig.n_clips)
    parser.add_argument("--ig-steps", type=int, default=AttributionConfig.ig_steps)
    parser.add_argument("--sanity-clips", type=int, default=AttributionConfig.sanity_clips)
    parser.add_argument("--truth", action="store_true", help="every cell, default method, against the truth")
    parser.add_argument("--out", default=None, help="with --truth: also write the reports here")
    parser.add_argument("--method", default="ig", help="with --truth: the attribution method")
    parser.add_argument("--linear-only", type=int, default=0,
                        help="with --truth: only the first N reliable linear cells (0: every cell)")
    parser.add_argument("--device", default="cpu", help="cpu (the issue's 2-core figure), cuda or cuda:N")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    if args.model:
        twin = Twin.load(args.model, device=args.device)
    else:
        with open_recording(args.data) as rec:
            rfs = receptive_fields(rec)
            twin = new_twin(rec, TwinSpec(preset="cpu", backbone="tiny"), rfs.maps, rfs.source).to(args.device)
    movie = load_test_movie(twin, args.data, "mov2")
    config = AttributionConfig(method=args.method, n_clips=args.clips, n_random=random_share(args.clips),
                               ig_steps=args.ig_steps, sanity_clips=args.sanity_clips)
    if args.truth:
        truth(twin, movie, args.data, args.out, config, args.linear_only)
        return
    n_total = twin.metadata.n_cells
    ids = list(twin.metadata.cell_ids[: args.cells])
    table = Table(title=f"attribution, {n_total} cells, {twin.metadata.frame_shape} px, "
                        f"{torch.get_num_threads()} threads ({twin.metadata.describe_backbone()})")
    for col in ("method", "clips", "s / cell", f"est. {n_total} cells (min)"):
        table.add_column(col, justify="right")
    for method in args.methods.split(","):
        started = time.perf_counter()
        attribute_twin(twin, movie, ids, replace(config, method=method))
        per_cell = (time.perf_counter() - started) / len(ids)
        table.add_row(method, str(args.clips), f"{per_cell:.1f}", f"{per_cell * n_total / 60:.1f}")
        console.print(f"{method}: {per_cell:.1f} s per cell")
    console.print(table)


def truth(twin: Twin, movie, data: str, out: str | None, config: AttributionConfig, linear_only: int) -> None:
    with open_recording(data) as rec:
        reliability = split_half_reliability(rec.counts("mov2"))
    ids = list(twin.metadata.cell_ids)
    if linear_only:
        ids = [c for c in ids if movie.linear[twin.metadata.cell_index(c)]
               and reliability[twin.metadata.cell_index(c)] > 0.5][:linear_only]
    started = time.perf_counter()
    with progress() as bar:
        results = attribute_twin(twin, movie, ids, config, progress=bar)
    seconds = time.perf_counter() - started
    if out is not None:
        write_reports(results, Path(out))
    chosen = [r for r in results if r.is_linear and reliability[r.index] > 0.5]
    trained = np.array([abs(r.truth_correlation) for r in chosen])
    randomised = np.array([abs(map_correlation(r.random_spatial, r.true_filter)) for r in chosen])
    similarity = np.array([r.sanity_similarity for r in chosen])
    console.print(f"{len(results)} cells, method {config.method}, {config.n_clips} clips of {config.window_frames} "
                  f"frames, sanity check on {config.sanity_clips}: {seconds / 60:.1f} min "
                  f"({seconds / len(results):.1f} s per cell)")
    table = Table(title=f"{len(chosen)} reliable linear cells: spatial map against the true spatial filter")
    for col in ("twin", "median |r|", "|r| >= 0.7"):
        table.add_column(col, justify="right")
    for name, values in (("trained", trained), ("randomised (sanity check)", randomised)):
        table.add_row(name, f"{np.nanmedian(values):.2f}", f"{int(np.sum(values >= 0.7))}/{len(values)}")
    console.print(table)
    console.print(f"Spearman similarity of |map|, trained vs randomised twin: median {np.nanmedian(similarity):.2f}")
    if config.method == "ig":
        gaps = np.array([r.completeness_gap for r in results])
        console.print(f"IG completeness gap (|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)|, "
                      f"{config.ig_steps} steps): median {np.nanmedian(gaps):.3f}, worst {np.nanmax(gaps):.3f}")


if __name__ == "__main__":
    main()

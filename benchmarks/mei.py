"""Most exciting inputs against the truth: designs played to the simulated retina.

A twin is trained on `insilico simulate` data; for every reliable cell (split-half
reliability of the repeated test movie above `--reliability`) the benchmark designs a
stimulus by gradient ascent and by Optuna, finds the best natural clip of the training movie,
all at the training movies' RMS contrast, and plays them to the ground-truth retina. For
linear cells it also plays the true optimum at the same budget. It prints the table, the
medians, the share of cells meeting the issue's goals, and the seconds per cell.

    python benchmarks/mei.py                       # 90 cells, 64 px, cpu-friendly epochs
    python benchmarks/mei.py --cells 20 --size 32 --train-seconds 60 --epochs 4 --max-cells 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insilico.design.budget import resolve_budget  # noqa: E402
from insilico.design.postprocess import ContrastBudget  # noqa: E402
from insilico.design.run import optimize_cells  # noqa: E402
from insilico.design.settings import default, design_settings  # noqa: E402
from insilico.design.verify import true_optimum, true_response  # noqa: E402
from rig_bridge.retina.recording import SimulationConfig, retina_of_recording, simulate_recording  # noqa: E402
from stimuli.recording import open_recording  # noqa: E402
from stimuli.recording.reliability import split_half_reliability  # noqa: E402
from vist_model.features import FeatureCache  # noqa: E402
from vist_model.fit_twin import TwinSpec, train_twin  # noqa: E402
from vist_model.train import CPU_TRAINING  # noqa: E402
from vist_model.twin import Twin, training_finished  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("bench_mei"), help="folder for data, twin and designs")
    p.add_argument("--cells", type=int, default=90)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train-seconds", type=float, default=120.0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--reliability", type=float, default=0.5, help="split-half reliability threshold")
    p.add_argument("--max-cells", type=int, default=0, help="design at most this many reliable cells (0: all)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--device", default="auto")
    p.add_argument("--train", default="mov1", help="training segments of the twin, comma-separated")
    p.add_argument("--readout", default=None, help="the twin's readout: dense or factorized (default: preset's)")
    p.add_argument("--twin", type=Path, default=None,
                   help="a twin already trained on WORK/sim.h5 (default: train one in WORK/twin)")
    p.add_argument("--cell-ids", default="", help="comma-separated cells to design (default: the reliable ones)")
    p.add_argument("--rf-envelope", type=float, default=default("rf_envelope"),
                   help="gradient designs' envelope around the RF, in RF sigmas (0: whole screen)")
    p.add_argument("--sta-start", action="store_true", help="start gradient designs from the denoised STA")
    args = p.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = work / "sim.h5"
    if not data.exists():
        simulate_recording(data, SimulationConfig(n_cells=args.cells, size=args.size,
                                                  train_seconds=args.train_seconds))
    cache = FeatureCache(work / "features")
    run_dir = args.twin or work / "twin"
    if args.twin is None and not training_finished(run_dir):
        t = time.perf_counter()
        train_twin(data, args.train.split(","), run_dir,
                   spec=TwinSpec(kind="vist", preset="cpu", backbone="tiny", readout=args.readout),
                   config=replace(CPU_TRAINING, epochs=args.epochs),
                   device=args.device, cache=cache)
        print(f"trained the twin in {time.perf_counter() - t:.0f} s")
    twin = Twin.load(run_dir, device="cpu" if args.device == "auto" else args.device)
    print(f"backbone: {twin.metadata.describe_backbone()}")

    with open_recording(data) as rec:
        reliability = split_half_reliability(rec.counts("mov2"))
        retina = retina_of_recording(rec.attrs)
        ids = [int(c) for c in rec.cell_ids]
    reliable = [c for c, r in zip(ids, reliability, strict=True) if r > args.reliability]
    chosen = [int(c) for c in args.cell_ids.split(",")] if args.cell_ids else reliable
    chosen = chosen[: args.max_cells] if args.max_cells else chosen
    print(f"{len(reliable)} of {len(ids)} cells reliable (split-half r > {args.reliability}); designing {len(chosen)}")

    best_natural = truly_best_natural(data, retina, args.frames, resolve_budget(twin.metadata, None).rms, 3)
    settings = design_settings(method="both", n_frames=args.frames, seeds=args.seeds, trials=args.trials,
                               start="sta" if args.sta_start else "grey", steps=args.steps,
                               rf_envelope=args.rf_envelope)
    rows = []
    for cid in chosen:
        r = optimize_cells(twin, [cid], work / "designs", settings, cache=cache)[0]
        i = retina.index_of(cid)
        window = r.window
        pick = r.design if r.objective["design"] >= r.objective["parametric"] else r.parametric.frames
        true = {k: true_response(retina, i, f, window) for k, f in
                (("design", r.design), ("twin pick", pick), ("optuna", r.parametric.frames),
                 ("natural", r.natural.frames))}
        optimum = None
        if retina.is_linear(i):
            optimum = true_optimum(retina, i, args.frames, r.budget.rms, window)
        true["natural*"] = float(best_natural[i])
        rows.append((cid, retina.cell_types[i], float(reliability[ids.index(cid)]), true, optimum, r.seconds))
        _print_row(rows[-1])
    _summary(rows, str(twin.device))


def truly_best_natural(data: Path, retina, n_frames: int, rms: float, window_frames: int,
                       stride: int = 3) -> np.ndarray:
    """`[N]` each cell's highest true response to any `n_frames` clip of the training movie.

    The twin picks the natural control it reports (`natural`); this is the clip a lab could
    only find by playing every one, the stricter yardstick. Clips are rescaled to the
    training budget and played from grey, like every design.
    """
    with open_recording(data) as rec:
        movie = rec.frames("mov1")
    budget = ContrastBudget(rms)
    best = np.zeros(retina.n_cells)
    for start in range(0, len(movie) - n_frames + 1, stride):
        clip = budget.apply(movie[start:start + n_frames])
        best = np.maximum(best, retina.rate(clip)[-window_frames:].mean(axis=0))
    return best


def _ratio(a: float, b: float | None) -> float:
    return float("nan") if b is None or b <= 0 else a / b


def _print_row(row) -> None:
    cid, kind, rel, true, optimum, seconds = row
    opt = "" if optimum is None else f"{optimum:8.3f} {_ratio(true['design'], optimum):6.2f}"
    print(f"{cid:5d} {kind:18s} {rel:5.2f} {true['design']:8.3f} {true['optuna']:8.3f} {true['twin pick']:9.3f} "
          f"{true['natural']:8.3f} {true['natural*']:8.3f} {_ratio(true['design'], true['natural']):6.2f} "
          f"{_ratio(true['design'], true['natural*']):6.2f} {_ratio(true['optuna'], true['natural']):6.2f} "
          f"{seconds:6.1f}s {opt}", flush=True)


def _summary(rows, device: str) -> None:
    if not rows:
        print("no reliable cells")
        return
    print("\nResponses: true mean rate over the window, spikes/bin. 'design' is the gradient design;")
    print("'twin pick' the one of the gradient and Optuna designs the twin predicts higher.")
    print("'natural' is the natural control the twin picked (what `insilico optimize` reports); 'natural*'")
    print("the truly best clip of the training movie, found by playing every clip to the retina.")
    print("\ncell  type               rel     design   optuna twin pick  natural natural*  d/nat d/nat*  o/nat"
          "    time  optimum  d/opt")
    for row in rows:
        _print_row(row)
    d_nat, p_nat, o_nat = ([_ratio(r[3][k], r[3]["natural"]) for r in rows] for k in ("design", "twin pick", "optuna"))
    d_best = [_ratio(r[3]["design"], r[3]["natural*"]) for r in rows]
    d_opt = [_ratio(r[3]["design"], r[4]) for r in rows if r[4] is not None]
    med = lambda xs: statistics.median([x for x in xs if np.isfinite(x)]) if xs else float("nan")  # noqa: E731
    print("\nmedian true response: " + ", ".join(f"{k} {med([r[3][k] for r in rows]):.3f}"
                                                 for k in ("design", "optuna", "twin pick", "natural", "natural*")))
    print(f"median design/natural {med(d_nat):.2f} (optuna {med(o_nat):.2f}, twin pick {med(p_nat):.2f}); "
          f"design/true optimum (linear cells) {med(d_opt):.2f}")
    print(f"cells whose design >= 1.5x the best natural clip: {sum(x >= 1.5 for x in d_nat)}/{len(rows)} "
          f"(optuna {sum(x >= 1.5 for x in o_nat)}, twin pick {sum(x >= 1.5 for x in p_nat)}); "
          f"against the truly best clip: {sum(x >= 1.5 for x in d_best)}/{len(rows)} "
          f"(median design/natural* {med(d_best):.2f})")
    if d_opt:
        print(f"linear cells whose design reaches >= 80% of the true optimum: {sum(x >= 0.8 for x in d_opt)}/{len(d_opt)}")
    print(f"seconds per cell (design + comparisons, {device}): median {med([r[5] for r in rows]):.1f}")


if __name__ == "__main__":
    main()

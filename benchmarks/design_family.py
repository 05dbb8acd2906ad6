"""Design starts against the truth on a member of the simulated family, with and without white noise.

For one member of `rig_bridge.retina.recording.retina_family` (generated, not hand-picked), a twin is
trained twice on what `insilico train` trains on by default: on the member's recording (the
movie `mov1` and the white noise), and on a copy without its white-noise segment and without
`/cells/rf` (a lab that records natural movies only: no STA, no recorded RF; `mov1` alone).
For the reliable cells (split-half r of the repeated movie above `--reliability`), up to
`--per-type` per cell type, a gradient design is made from each start (`sta` where white noise
exists, `attribution`, `natural`, `grey`, `auto`) under the whole-clip budget and under the
per-frame budget as well (`frame_rms = "training"`), and every design is played to the
simulated retina. Reported per start and cell type: the median of the design's
true response over the truly best natural clip of the recording at the same budget (found by
playing every clip, not the one the twin reports), the share of cells at >= 1.5x, and for
linear cells the median fraction of the true optimum (`insilico.design.verify.true_optimum`;
whole-clip budget only: the optimum under a per-frame ceiling is not computed). Where a linear
cell's design falls short of its optimum, the twin says why: if it rates the true optimum
above its own design, the ascent stopped short; if below, the twin's model of the cell is what
misled it ("twin rates optimum higher"), and the twin's map of the cell (its input gradient at
grey) says where: the correlation of its spatial and of its temporal factor with the true filter's.

    python benchmarks/design_family.py --work W [--member 0] [--model vist] [--per-type 1]
        [--recordings with_noise,no_noise] [--budgets clip,training] [--starts auto,sta,...] [--rf-envelope W]
    python benchmarks/design_family.py --work W --member 0 --rescore   # the twin's view, designs kept
    python benchmarks/design_family.py --work W --member 2 --budgets clip --starts auto --loop-round

`--loop-round` goes one round of the closed loop further, as `insilico run` would: the auto
designs (whole-clip budget) are played to the simulated retina and recorded (5 repeats), the
twin is fine-tuned on them as `protocols/mei_closed_loop.toml`'s `[finetune]` does, and each
design is refined by the tuned twin from where it was (`refine`); reported as the start
"auto, then one loop round".

The twin is Vi-ST with the shipped defaults (`--model vist`, `insilico train`'s), the LN (`ln`,
a closed-form fit in minutes) or the CNN. Runs of one member and model with different
`--recordings` may share a work folder (two processes, one per recording): the results file
keeps each recording's rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twin_family import loop_round  # noqa: E402

from insilico.console import progress  # noqa: E402
from insilico.design.budget import resolve_budget  # noqa: E402
from insilico.design.postprocess import ContrastBudget  # noqa: E402
from insilico.design.response import TwinResponse  # noqa: E402
from insilico.design.run import optimize_cells  # noqa: E402
from insilico.design.settings import design_settings  # noqa: E402
from insilico.design.verify import true_optimum_clip, true_response  # noqa: E402
from rig_bridge.retina.optimum import window_filter  # noqa: E402
from rig_bridge.retina.recording import retina_family, retina_of_recording, simulate_recording  # noqa: E402
from stimuli.files import write_json  # noqa: E402
from stimuli.recording import RecordingWriter, open_recording  # noqa: E402
from stimuli.recording.reliability import split_half_reliability  # noqa: E402
from vist_model.data import default_train_segments  # noqa: E402
from vist_model.features import FeatureCache  # noqa: E402
from vist_model.fit_twin import TwinSpec, train_twin  # noqa: E402
from vist_model.twin import Twin  # noqa: E402

STARTS = ("sta", "attribution", "natural", "grey", "auto")
GOAL = 1.5
RECORDINGS = {"with_noise": "with white noise", "no_noise": "natural movies only"}
BUDGETS = {"clip": None, "training": "training"}  # the whole-clip budget; and a per-frame ceiling too


def without_noise(src: Path, dst: Path) -> Path:
    """A copy of a recording without its white-noise segment and without `/cells/rf`."""
    if dst.exists():
        return dst
    with open_recording(src) as rec:
        attrs = {k: v for k, v in rec.attrs.items() if k not in ("format", "version", "frame_rate", "pixel_size_um")}
        _, h, w = rec.shape
        repeats = max(rec.counts(s.name).shape[0] for s in rec.segments)
        with RecordingWriter(dst, frame_rate=rec.frame_rate, height=h, width=w, cell_ids=rec.cell_ids,
                             n_repeats=repeats, pixel_size_um=rec.pixel_size_um, attrs=attrs) as out:
            for seg in rec.segments:
                if seg.name != "noise":
                    counts = rec.counts(seg.name)
                    shown = ~np.isnan(counts).any(axis=(1, 2))  # repeats not shown are NaN in the file
                    out.append_segment(seg.name, rec.frames(seg.name), counts[shown])
            if rec.cell_types:
                out.set_cell_types(rec.cell_types)
    return dst


def truly_best_natural(data: Path, retina, n_frames: int, budget: ContrastBudget, window: tuple[int, int],
                       stride: int) -> np.ndarray:
    """`[N]` each cell's highest true response to any `n_frames` clip of `mov1` at `budget`."""
    with open_recording(data) as rec:
        movie = rec.frames("mov1")
    best = np.zeros(retina.n_cells)
    for start in range(0, len(movie) - n_frames + 1, stride):
        clip = budget.apply(movie[start:start + n_frames])
        best = np.maximum(best, retina.rate(clip)[window[0]:window[1]].mean(axis=0))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("bench_design_family"))
    p.add_argument("--members", type=int, default=6, help="family size (the family is fixed by it and --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--member", type=int, default=0)
    p.add_argument("--model", default="vist", choices=("vist", "ln", "cnn"))
    p.add_argument("--recordings", default=",".join(RECORDINGS), help="with_noise, no_noise or both")
    p.add_argument("--budgets", default=",".join(BUDGETS), help="clip, training or both")
    p.add_argument("--reliability", type=float, default=0.5)
    p.add_argument("--per-type", type=int, default=1, help="reliable cells per cell type (most reliable first)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--trials", type=int, default=8, help="comparison trials of the parametric search")
    p.add_argument("--stride", type=int, default=2, help="frames between the natural clips played to the retina")
    p.add_argument("--starts", default=",".join(STARTS))
    p.add_argument("--rf-envelope", type=float, default=None,
                   help="the envelope's width in RF-centre sigmas (default: the shipped default; 0: none)")
    p.add_argument("--loop-round", action="store_true",
                   help="after the whole-clip auto designs: record them, fine-tune the twin as the closed loop "
                        "does, refine the designs with the tuned twin (start \"auto, then one loop round\")")
    p.add_argument("--rescore", action="store_true",
                   help="add the twin's rating of each linear cell's optimum to the results already measured")
    args = p.parse_args()

    config = retina_family(args.members, args.seed)[args.member]
    work = args.work / f"member{args.member}"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.h5"
    if not data.exists():
        simulate_recording(data, config)
    recordings = {RECORDINGS[k]: data if k == "with_noise" else without_noise(data, work / "no_noise.h5")
                  for k in args.recordings.split(",")}
    with open_recording(data) as rec:
        reliability = split_half_reliability(rec.counts("mov2"))
        retina = retina_of_recording(rec.attrs)
        ids = [int(c) for c in rec.cell_ids]
    by_type: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for c, r in zip(ids, reliability, strict=True):
        if r > args.reliability:
            by_type[retina.cell_types[retina.index_of(c)]].append((float(r), c))
    cells = sorted(c for kind in by_type.values() for _, c in sorted(kind, reverse=True)[:args.per_type])
    print(f"member {args.member}: {config.size} px, {config.n_cells} cells, {config.train_seconds:g} s of training "
          f"movie; {sum(map(len, by_type.values()))} reliable; designing {len(cells)}: {cells}")
    window = (args.frames - args.window, args.frames)
    envelope = {} if args.rf_envelope is None else {"rf_envelope": args.rf_envelope}
    if args.rescore:
        report(rescore(work, args.model, retina, args.frames, window))
        return
    results: list[dict] = []
    merged: list[dict] = []
    for label, path in recordings.items():
        cache = FeatureCache(work / "features")
        run_dir = twin_dir(work, args.model, with_noise=path == data)
        with open_recording(path) as rec:
            segments = default_train_segments(rec)
        t = time.perf_counter()
        if not (run_dir / "model.pt").exists():
            with progress() as bar:
                train_twin(path, segments, run_dir, spec=TwinSpec(kind=args.model), device="cpu", cache=cache,
                           progress=bar)
        twin = Twin.load(run_dir, device="cpu")
        print(f"[{label}] {args.model} twin ready in {time.perf_counter() - t:.0f} s (rf: {twin.metadata.rf_source}, "
              f"trained on {', '.join(twin.metadata.training['train_segments'])})", flush=True)
        for frame_budget in (BUDGETS[b] for b in args.budgets.split(",")):
            budget_info = resolve_budget(twin.metadata, None, frame_rms=frame_budget)
            budget = ContrastBudget(budget_info.rms, frame_rms=budget_info.frame_rms)
            best_natural = truly_best_natural(data, retina, args.frames, budget, window, args.stride)
            for start in args.starts.split(","):
                if start == "sta" and path != data:
                    continue
                s = design_settings(n_frames=args.frames, window_frames=args.window, seeds=args.seeds,
                                    steps=args.steps, comparison_trials=args.trials, start=start,
                                    frame_rms=frame_budget, **envelope)
                out = design_dir(work, run_dir.name, frame_budget, start, args.rf_envelope)
                t = time.perf_counter()
                designed = optimize_cells([twin], cells, out, s, cache=cache)
                seconds = (time.perf_counter() - t) / len(cells)
                measured = Measured(label, frame_budget, start, retina, best_natural, window, args.frames,
                                    budget_info.rms, args.rf_envelope)
                results += measured.rows(designed, twin, seconds)
                print(f"  [{label}, {frame_budget or 'whole-clip'} budget] start {start}: {seconds:.1f} s/cell",
                      flush=True)
                merged = save(work / f"results_{args.model}.json", results, recordings)
                if args.loop_round and frame_budget is None and start == "auto":
                    # The closed loop's answer to a twin that misjudges strong stimuli: the first
                    # round's designs recorded, the twin fine-tuned on them, each design refined
                    # by the tuned twin (as `mei_closed_loop.toml`'s `refine` does from round 2 on).
                    t = time.perf_counter()
                    first = [(r.cell_id, r.design, r.window) for r in designed]
                    tuned = loop_round(twin, path, segments, retina, first, work / f"{run_dir.name}_round", cache)
                    again = optimize_cells([tuned], cells,
                                           design_dir(work, f"{run_dir.name}_round", None, start, args.rf_envelope),
                                           s, cache=cache, starts={c: out / f"cell{c}.h5" for c in cells})
                    seconds = (time.perf_counter() - t) / len(cells)
                    results += replace(measured, start=LOOP_ROUND).rows(again, tuned, seconds)
                    print(f"  [{label}, whole-clip budget] auto, then one loop round: {seconds:.1f} s/cell", flush=True)
                    merged = save(work / f"results_{args.model}.json", results, recordings)
    report(merged)


LOOP_ROUND = "auto, then one loop round"


@dataclass(frozen=True)
class Measured:
    """What one set of designs is measured against: the recording, budget and start it was made
    with, the retina, each cell's truly best natural clip `[N]`, the window, the clip and the
    envelope width (None: the default)."""

    label: str
    frame_budget: str | None
    start: str
    retina: object
    best_natural: np.ndarray
    window: tuple[int, int]
    n_frames: int
    rms: float
    rf_envelope: float | None

    def rows(self, designed, twin: Twin, seconds: float) -> list[dict]:  # noqa: ANN001
        """One results row per design: its true response, the truly best natural clip's, and for a
        linear cell (whole-clip budget) its true optimum and the twin's rating of it."""
        response = TwinResponse(twin)
        out = []
        for r in designed:
            i = self.retina.index_of(r.cell_id)
            row = {"recording": self.label, "frame_budget": self.frame_budget or "whole clip", "start": self.start,
                   "chosen": r.chosen_start, "cell": r.cell_id, "type": self.retina.cell_types[i],
                   "linear": bool(self.retina.is_linear(i)),
                   "true": true_response(self.retina, i, r.design, self.window),
                   "best_natural": float(self.best_natural[i]), "optimum": None, "seconds": seconds,
                   "twin_design": r.predicted["design"], "twin_optimum": None, "rf_envelope": self.rf_envelope}
            if self.retina.is_linear(i) and self.frame_budget is None:
                row |= _optimum(self.retina, response, twin, r.cell_id, self.n_frames, self.rms, self.window)
            out.append(row)
        return out


def twin_dir(work: Path, model: str, with_noise: bool) -> Path:
    """Where the twin of one recording (as simulated, or without its white noise) is trained."""
    return work / f"{model}_{'noise' if with_noise else 'no_noise'}"


def design_dir(work: Path, twin_name: str, frame_budget: str | None, start: str, rf_envelope: float | None = None,
               ) -> Path:
    """Where the designs of one twin, budget, start (and envelope width, if not the default) are written."""
    width = "" if rf_envelope is None else f"-envelope{rf_envelope:g}"
    return work / "designs" / f"{twin_name}-{frame_budget or 'clip'}-{start}{width}"


def _optimum(retina, response: TwinResponse, twin: Twin, cell: int, n_frames: int, rms: float,  # noqa: ANN001
             window: tuple[int, int]) -> dict[str, float]:
    """A linear cell's true optimum: its true response and the twin's prediction of it; and how
    well the twin's map of the cell matches its true filter (`twin_map_match`)."""
    i = retina.index_of(cell)
    clip = true_optimum_clip(retina, i, n_frames, rms, window)
    k = list(twin.metadata.cell_ids).index(cell)
    predicted = response.rates(clip[None])[0, window[0]:window[1], k].mean()
    space, time_ = twin_map_match(retina, response, i, k, n_frames, window)
    return {"optimum": true_response(retina, i, clip, window), "twin_optimum": float(predicted),
            "twin_map_space_r": space, "twin_map_time_r": time_}


def twin_map_match(retina, response: TwinResponse, i: int, k: int, n_frames: int,  # noqa: ANN001
                   window: tuple[int, int]) -> tuple[float, float]:
    """`(space, time)`: |correlation| of the leading spatial and temporal factors of the twin's map
    of cell `i` (twin index `k`), its input gradient at grey of the mean rate over `window`, with
    those of the true filter of that mean (`window_filter`). A linear cell's design is only as good
    as this map (docs/benchmarks.md, "The twin's map of a linear cell")."""
    grey = torch.full((1, n_frames, retina.height, retina.width), 0.5, requires_grad=True)
    response(grey)[0, window[0]:window[1], k].mean().backward()
    twin_map = grey.grad[0].double().numpy().reshape(n_frames, -1)
    truth = window_filter(retina, i, n_frames, window[1] - window[0]).reshape(n_frames, -1)
    (ut, _, vt), (uf, _, vf) = (np.linalg.svd(m, full_matrices=False) for m in (twin_map, truth))
    return float(abs(vt[0] @ vf[0])), float(abs(ut[:, 0] @ uf[:, 0]))


def rescore(work: Path, model: str, retina, n_frames: int, window: tuple[int, int]) -> list[dict]:  # noqa: ANN001
    """The results file with `twin_design`, `twin_optimum` and the twin's map match filled in from the
    designs kept."""
    path = work / f"results_{model}.json"
    rows = json.loads(path.read_text())
    for run in {r["recording"] for r in rows}:
        run_dir = twin_dir(work, model, with_noise=run == RECORDINGS["with_noise"])
        twin = Twin.load(run_dir, device="cpu")
        response = TwinResponse(twin)
        for row in rows:
            scored = row.get("twin_optimum") is not None and (row["optimum"] is None
                                                              or row.get("twin_map_space_r") is not None)
            if row["recording"] != run or scored:
                continue
            frame_budget = None if row["frame_budget"] == "whole clip" else row["frame_budget"]
            folder = design_dir(work, run_dir.name, frame_budget, row["start"], row.get("rf_envelope"))
            design = json.loads((folder / f"cell{row['cell']}.json").read_text())
            row["twin_design"] = design["predicted_response"]["design"]
            if row["optimum"] is not None:
                row |= _optimum(retina, response, twin, row["cell"], n_frames, design["budget"]["rms_contrast"], window)
    write_json(path, rows)
    return rows


def save(path: Path, results: list[dict], recordings: dict[str, Path]) -> list[dict]:
    """Write this run's rows and the other recordings' rows already there (another process may have
    measured them meanwhile); after every start, so an interrupted run keeps what it measured."""
    kept = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["recording"] not in recordings]
    write_json(path, kept + results)
    return kept + results


def report(results: list[dict]) -> None:
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in results:
        groups[row["recording"], row["frame_budget"], row["start"]].append(row)
    print("\n| recording | budget | start | cells | design / truly best natural (median) | >= 1.5x | "
          "linear: / optimum (median, min) | twin rates optimum higher | linear: twin's map r, space, time | "
          "auto chose |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (rec, fb, start), rows in groups.items():
        ratios = [r["true"] / r["best_natural"] for r in rows if r["best_natural"] > 0]
        opt = [r["true"] / r["optimum"] for r in rows if r["optimum"]]
        chose = ", ".join(f"{k} {v}" for k, v in sorted(_count(r["chosen"] for r in rows).items())) \
            if start == "auto" else ""
        opt_text = f"{statistics.median(opt):.2f}, {min(opt):.2f}" if opt else "-"
        rated = [r["twin_optimum"] > r["twin_design"] for r in rows if r.get("twin_optimum") is not None]
        space = [r["twin_map_space_r"] for r in rows if r.get("twin_map_space_r") is not None]
        time_ = [r["twin_map_time_r"] for r in rows if r.get("twin_map_time_r") is not None]
        match = f"{statistics.median(space):.2f}, {statistics.median(time_):.2f}" if space else "-"
        print(f"| {rec} | {fb} | {start} | {len(rows)} | {statistics.median(ratios):.2f} | "
              f"{sum(x >= GOAL for x in ratios)}/{len(ratios)} | {opt_text} | "
              f"{f'{sum(rated)}/{len(rated)}' if rated else '-'} | {match} | {chose} |")
    print("\nper cell type (design / truly best natural; whole-clip budget):")
    types = sorted({r["type"] for r in results})
    keys = sorted({(r["recording"], r["start"]) for r in results if r["frame_budget"] == "whole clip"})
    print("| recording | start | " + " | ".join(types) + " |")
    print("|---|---|" + "---|" * len(types))
    for rec, start in keys:
        cells = []
        for kind in types:
            rows = [r for r in results if r["recording"] == rec and r["start"] == start and r["type"] == kind
                    and r["frame_budget"] == "whole clip" and r["best_natural"] > 0]
            cells.append(" ".join(f"{r['true'] / r['best_natural']:.2f}" for r in rows) or "-")
        print(f"| {rec} | {start} | " + " | ".join(cells) + " |")


def _count(items) -> dict[str, int]:  # noqa: ANN001
    out: dict[str, int] = defaultdict(int)
    for x in items:
        out[str(x)] += 1
    return dict(out)


if __name__ == "__main__":
    main()

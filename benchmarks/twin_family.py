"""The twin on a family of simulated retinas: accuracy per cell type and design fidelity.

The family is generated (`rig_bridge.retina.recording.retina_family`), not hand-picked: its members differ
in screen size, cell count, cell-type mix, receptive-field size, contrast, training length,
repeats and seed. Members `--tune` first ones are where the twin's settings may be chosen; the
table that counts is over the others ("report" members), which no setting was chosen on.

Per member and model, on the repeated test movie `mov2`: median CC, FEVE and CC / noise ceiling
over the reliable cells (split-half r > 0.5), and CC / ceiling per cell type. Models: Vi-ST with
the shipped defaults (`vist`), the published preset (`vist_published`: paper's loss, linear
output, dense readout; slow on CPU), the LN fitted as labs fit it, the McIntosh CNN, and the
oracle (the simulator's own expected rate: the ceiling any model can reach).

Design fidelity (`--design-cells K`): for the K most reliable cells, each model's gradient design
(`insilico optimize`'s defaults) is predicted by the model and played to the simulated retina;
the table gives the median factor between the two (predicted / true, 1 is perfect), before and
after one round of fine-tuning on the retina's recorded response to the designs (5 repeats), as
the closed loop fine-tunes (`protocols/mei_closed_loop.toml`'s `[finetune]`: the training data
and the designs half and half, each design's cell over its window weighted 20 times).

    python benchmarks/twin_family.py --work W [--members 6] [--tune 2] [--only 2,3]
        [--models vist,ln,cnn,oracle] [--epochs N] [--design-cells 4] [--movie-only]

Every model trains on what `insilico train` trains on by default (the movie and the white noise);
`--movie-only` trains them on `mov1` alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insilico.console import progress  # noqa: E402
from insilico.design.run import optimize_cells  # noqa: E402
from insilico.design.settings import design_settings  # noqa: E402
from insilico.design.verify import true_response  # noqa: E402
from insilico.loop.evaluation import finetune_config, val_fraction_for  # noqa: E402
from insilico.loop.protocol import load_protocol  # noqa: E402
from rig_bridge.retina.recording import (  # noqa: E402
    SimulationConfig,
    retina_family,
    retina_of_recording,
    simulate_recording,
)
from stimuli.files import write_json  # noqa: E402
from stimuli.recording import RecordingWriter, open_recording  # noqa: E402
from stimuli.recording.reliability import split_half_reliability  # noqa: E402
from vist_model.data import LossFocus, default_train_segments  # noqa: E402
from vist_model.features import FeatureCache  # noqa: E402
from vist_model.fit_twin import TwinSpec, finetune_twin, train_twin  # noqa: E402
from vist_model.metrics import evaluate  # noqa: E402
from vist_model.train import training_for  # noqa: E402
from vist_model.twin import Twin, training_finished  # noqa: E402

MODELS = {
    "vist": TwinSpec(kind="vist"),  # the shipped defaults
    "vist_tiny": TwinSpec(kind="vist", backbone="tiny"),
    "vist_pixels": TwinSpec(kind="vist", backbone="pixels"),
    "vist_patches": TwinSpec(kind="vist", backbone="patches"),
    "vist_linear": TwinSpec(kind="vist", linear_maps=8),
    "vist_patches_linear": TwinSpec(kind="vist", backbone="patches", linear_maps=8),
    "vist_maps32": TwinSpec(kind="vist", map_channels=32),
    "vist_published": TwinSpec(kind="vist", preset="vist", output="linear", loss="vist", readout="dense",
                               cmst_padding="valid"),
    "ln": TwinSpec(kind="ln"),
    "cnn": TwinSpec(kind="cnn"),
}
RELIABLE = 0.5
FINETUNE_PROTOCOL = "mei_closed_loop"
"""The shipped protocol whose `[finetune]` is the round of fine-tuning that design fidelity is read after."""


def member_data(work: Path, k: int, config: SimulationConfig) -> Path:
    path = work / f"member{k}" / "data.h5"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        simulate_recording(path, config)
    return path


def training_segments(data: Path, movie_only: bool) -> list[str]:
    """What every model of a run trains (and fine-tunes) on: `insilico train`'s default, or the movie."""
    if movie_only:
        return ["mov1"]
    with open_recording(data) as rec:
        return default_train_segments(rec)


def train(data: Path, name: str, key: str, segments: list[str], epochs: int | None, cache: FeatureCache) -> Twin:
    run_dir = data.parent / key
    if training_finished(run_dir):
        return Twin.load(run_dir)
    spec = MODELS[name]
    preset = training_for(spec.preset)
    config = None if spec.kind == "ln" else replace(preset, epochs=epochs) if epochs else preset
    with progress() as bar:  # a line per epoch in a log file
        return train_twin(data, segments, run_dir, spec=spec, config=config, cache=cache, progress=bar).twin


def scores(prediction: np.ndarray, counts: np.ndarray, types: np.ndarray, reliable: np.ndarray) -> dict:
    m = evaluate(prediction, counts)
    ratio = m.cc / m.noise_ceiling
    per_type = {t: float(np.nanmedian(ratio[reliable & (types == t)]))
                for t in sorted(set(types)) if (reliable & (types == t)).any()}
    return {"cc": float(np.nanmedian(m.cc[reliable])), "feve": float(np.nanmedian(m.feve[reliable])),
            "ratio": float(np.nanmedian(ratio[reliable])), "types": per_type,
            "worst_type": min(per_type.values()) if per_type else float("nan")}


def design_fidelity(twin: Twin, data: Path, segments: list[str], retina, cells: list[int], work: Path,
                    cache: FeatureCache) -> dict:
    """Predicted / true response of each cell's gradient design, before and after one fine-tuning round."""
    designs = optimize_cells(twin, cells, work / "designs", design_settings(seeds=2, start="sta"), cache=cache)
    true, clips = [], []
    for r in designs:
        true.append(true_response(retina, retina.index_of(r.cell_id), r.design, r.window))
        clips.append((r.cell_id, r.design, r.window))
    before = _predicted(twin, clips, cache)
    tuned = loop_round(twin, data, segments, retina, clips, work, cache)
    after = _predicted(tuned, clips, cache)
    factor = lambda p, t: float(np.exp(np.median(np.abs(np.log(np.maximum(p, 1e-6) / np.maximum(t, 1e-6))))))  # noqa: E731
    return {"cells": cells, "predicted_before": before, "predicted_after": after, "true": true,
            "factor_before": factor(np.array(before), np.array(true)),
            "factor_after": factor(np.array(after), np.array(true))}


def loop_round(twin: Twin, data: Path, segments: list[str], retina, clips, work: Path,  # noqa: ANN001
               cache: FeatureCache) -> Twin:
    """The twin after one round of the closed loop on `clips` (`(cell id, design uint8 [T, H, W],
    window)` each): the designs played to the simulated retina and recorded (`work/session.h5`),
    then fine-tuning as the shipped protocol's `[finetune]` does it, into `work/tuned`."""
    session = _record_designs(data, retina, clips, work / "session.h5")
    f = load_protocol(FINETUNE_PROTOCOL).finetune
    recordings = [(data, segments), (session, [f"design{c}" for c, _, _ in clips])]
    focus = [[], [LossFocus(f"design{c}", twin.metadata.cell_index(c), a, b) for c, _, (a, b) in clips]]
    return finetune_twin(twin, recordings, work / "tuned", config=finetune_config(f), cache=cache,
                         val_fraction=val_fraction_for(recordings, f.window), shares=[1.0 - f.session_share, None],
                         focus=focus, focus_weight=f.focus_weight).twin


def _predicted(twin: Twin, clips, cache: FeatureCache) -> list[float]:
    """The twin's mean rate of each design's cell over its window, the clip played from grey."""
    return [float(twin.predict(clip, cache)[a:b, twin.metadata.cell_index(cid)].mean()) for cid, clip, (a, b) in clips]


def _record_designs(data: Path, retina, clips, out: Path, repeats: int = 5) -> Path:
    """The simulated retina's recorded response to each design, one segment each."""
    rng = np.random.default_rng(0)
    with open_recording(data) as rec:
        ids, fps, shape = rec.cell_ids, rec.frame_rate, rec.shape
    out.unlink(missing_ok=True)
    with RecordingWriter(out, frame_rate=fps, height=shape[1], width=shape[2], cell_ids=ids,
                         n_repeats=repeats) as w:
        for cid, clip, _ in clips:
            rate = retina.rate(clip.astype(np.float64) / 255.0)
            w.append_segment(f"design{cid}", clip, np.stack([rng.poisson(rate) for _ in range(repeats)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--family-seed", type=int, default=0)
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--tune", type=int, default=2, help="the first TUNE members are the tuning set")
    ap.add_argument("--only", default="", help="member indices to run (default: all report members)")
    ap.add_argument("--models", default="vist,ln,cnn,oracle")
    ap.add_argument("--epochs", type=int, default=None, help="default: the preset's (vist_model.train.training_for)")
    ap.add_argument("--design-cells", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--redo-design", action="store_true",
                    help="measure design fidelity again for models already in the results (their twins reload)")
    ap.add_argument("--movie-only", action="store_true",
                    help="train on mov1 alone (results keyed NAME@mov1), not on insilico train's default segments")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    family = retina_family(args.members, args.family_seed)
    picked = ([int(k) for k in args.only.split(",")] if args.only else range(args.tune, args.members))
    cache = FeatureCache(args.work / "features")
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for k in picked:
        cfg = family[k]
        role = "tune" if k < args.tune else "report"
        data = member_data(args.work, k, cfg)
        with open_recording(data) as rec:
            counts = rec.counts("mov2")
            frames = rec.frames("mov2")
            types = np.array(rec.cell_types)
            reliability = split_half_reliability(counts)
            retina = retina_of_recording(rec.attrs)
            ids = [int(c) for c in rec.cell_ids]
        reliable = reliability > RELIABLE
        print(f"\nmember {k} ({role}): {cfg.size} px, {cfg.n_cells} cells, {cfg.train_seconds:.0f} s training, "
              f"{cfg.test_repeats} repeats, contrast {cfg.rms_contrast:.2f}, RF scale {cfg.rf_scale:.2f}, "
              f"{int(reliable.sum())} reliable cells", flush=True)
        member = results.setdefault(str(k), {"role": role, "config": asdict(cfg), "models": {}})
        top = [ids[i] for i in np.argsort(-np.nan_to_num(reliability))[: args.design_cells]]
        segments = training_segments(data, args.movie_only)
        for name in args.models.split(","):
            key = f"{name}@mov1" if args.movie_only and name != "oracle" else name
            if key in member["models"] and not (args.redo_design and name != "oracle"):
                continue
            t0 = time.perf_counter()
            if name == "oracle":
                prediction = retina.rate(frames.astype(np.float64) / 255.0)
                row = scores(prediction, counts, types, reliable)
            else:
                twin = train(data, name, key, segments, args.epochs, cache)
                row = scores(twin.predict(frames, cache), counts, types, reliable)
                row["train_s"] = member["models"].get(key, {}).get("train_s", time.perf_counter() - t0)
                if args.design_cells:
                    row["design"] = design_fidelity(twin, data, segments, retina, top,
                                                    data.parent / f"{key}_design", cache)
                row["segments"] = segments
            # Re-read first: runs of other models on the same work folder may have written since.
            results = json.loads(results_path.read_text()) if results_path.exists() else results
            results.setdefault(str(k), {"role": role, "config": asdict(cfg), "models": {}})["models"][key] = row
            write_json(results_path, results)
            _print_row(key, row)
    _summary(results)


def _print_row(name: str, row: dict) -> None:
    types = " ".join(f"{t[:9]} {v:.2f}" for t, v in row["types"].items())
    design = row.get("design")
    fid = f" design x{design['factor_before']:.2f} -> x{design['factor_after']:.2f}" if design else ""
    print(f"  {name:<15} CC {row['cc']:.3f}  FEVE {row['feve']:.3f}  CC/ceiling {row['ratio']:.3f}  "
          f"worst type {row['worst_type']:.2f}{fid}\n    {types}", flush=True)


def _summary(results: dict) -> None:
    report = {k: v for k, v in results.items() if v["role"] == "report"}
    if not report:
        return
    names = sorted({n for v in report.values() for n in v["models"]})
    print(f"\nreport members {sorted(report, key=int)}: median CC / ceiling (worst cell type) per member")
    print(f"{'model':<15}" + "".join(f"{'member ' + k:>16}" for k in sorted(report, key=int)))
    for n in names:
        cells = [report[k]["models"].get(n) for k in sorted(report, key=int)]
        print(f"{n:<15}" + "".join(f"{c['ratio']:>9.3f} ({c['worst_type']:.2f})" if c else f"{'-':>16}" for c in cells))


if __name__ == "__main__":
    main()

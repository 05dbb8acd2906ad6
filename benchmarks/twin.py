"""Twin benchmark: Vi-ST against the LN and CNN baselines on the same simulated data.

Trains on `--train` (default `mov1`), tests on `mov2` (repeated: FEVE and the noise ceiling come
from the repeats): Vi-ST (cpu preset, tiny random DINOv2), the same with the published readout
(`dense_valid`; `dense_same` and `factorized_valid` change one half of it), the paper's `pixels`
ablation (no ViT prior), Vi-ST with per-cell RF conditioning, LN and the McIntosh CNN, all in one
run. Prints CC, FEVE, SD-KL, training time, inference frames/s (from cached
features; real time is 30 frames/s) and "RF r": how well the twin knows where each cell looks, the
median |r| between the twin's own spike-triggered average (white noise played to the twin) and the
simulator's true spatial filter, over the reliable linear cells. Then a table over population size
like the paper's "complementary coding" figure (Vi-ST trained on the first n cells only).

    python benchmarks/twin.py [--data F.h5] [--cells 90] [--size 64] [--epochs 8] [--train mov1,noise]
                              [--populations 1,8,16,32,64,90]
                              [--models vist,dense_valid,dense_same,factorized_valid,local,pixels,per_cell,ln,cnn]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rig_bridge.retina.recording import SimulationConfig, simulate_recording  # noqa: E402
from stimuli.recording import RecordingWriter, open_recording  # noqa: E402
from vist_model.evaluate import evaluate_twin  # noqa: E402
from vist_model.features import FeatureCache  # noqa: E402
from vist_model.fit_twin import TwinSpec, train_twin  # noqa: E402
from vist_model.train import CPU_TRAINING  # noqa: E402

MODELS = {
    # The cpu preset as shipped: factorized readout on the "same"-padded grid.
    "vist": TwinSpec(kind="vist", preset="cpu", backbone="tiny"),
    # The published readout (dense, on the grid the CMST blocks trim to 8 x 8), and the two halves.
    "dense_valid": TwinSpec(kind="vist", preset="cpu", backbone="tiny", readout="dense", cmst_padding="valid"),
    "dense_same": TwinSpec(kind="vist", preset="cpu", backbone="tiny", readout="dense", cmst_padding="same"),
    "factorized_valid": TwinSpec(kind="vist", preset="cpu", backbone="tiny", readout="factorized",
                                 cmst_padding="valid"),
    # Spatially pointwise TCN and CMST: a grid position sees its own patch, the readout mask does the rest.
    "local": TwinSpec(kind="vist", preset="cpu", backbone="tiny", spatial_kernel=1),
    "pixels": TwinSpec(kind="vist", preset="cpu", backbone="pixels"),
    "per_cell": TwinSpec(kind="vist", preset="cpu", backbone="tiny", rf_conditioning="per_cell"),
    "ln": TwinSpec(kind="ln"),
    "cnn": TwinSpec(kind="cnn"),
}


def subset_recording(src: Path, dst: Path, n_cells: int) -> Path:
    """A copy of a recording with its first `n_cells` cells only."""
    with open_recording(src) as rec:
        ids = rec.cell_ids[:n_cells]
        with RecordingWriter(dst, frame_rate=rec.frame_rate, height=rec.shape[1], width=rec.shape[2],
                             cell_ids=ids, n_repeats=rec.n_repeats, pixel_size_um=rec.pixel_size_um,
                             attrs=rec.attrs) as w:
            for seg in rec.segments:
                counts = rec.counts(seg.name)[:, :, :n_cells]
                shown = ~np.isnan(counts).all(axis=(1, 2))  # the writer pads unshown repeats itself
                w.append_segment(seg.name, rec.frames(seg.name), counts[shown])
            if rec.rf is not None:
                w.set_rf(rec.rf[:n_cells])
    return dst


def inference_fps(run, data: Path, cache: FeatureCache) -> float:
    twin = run.twin
    with open_recording(data) as rec:
        frames = rec.frames("mov2")
    inputs = twin.inputs(frames, cache)  # cached features: what a lab's evaluation reads
    t0 = time.perf_counter()
    twin.predict_inputs(inputs)
    return len(frames) / (time.perf_counter() - t0)


def twin_sta(twin, n_frames: int = 2400, check_px: int = 4, lags: int = 15, seed: int = 0) -> np.ndarray:
    """`[N, H, W]` spatial part of each cell's spike-triggered average of the twin's own rates.

    Binary checkerboard noise (contrast 0.25 around grey) is played to the twin; the
    `[lags, H, W]` STA of each cell's predicted rate is reduced to its first spatial singular
    vector, sign free.
    """
    h, w = twin.metadata.frame_shape
    rng = np.random.default_rng(seed)
    checks = rng.choice([-1.0, 1.0], size=(n_frames, -(-h // check_px), -(-w // check_px)))
    frames = np.kron(checks, np.ones((1, check_px, check_px)))[:, :h, :w] * 0.25 + 0.5
    u8 = np.round(frames * 255).astype(np.uint8)
    rates = twin.predict(u8)
    x = u8.astype(np.float64) / 255.0 - 0.5
    rates = rates - rates.mean(axis=0)
    stas = np.stack([np.einsum("tn,thw->nhw", rates[lags:], x[lags - lag:n_frames - lag]) for lag in range(lags)], 1)
    spatial = np.empty((rates.shape[1], h, w))
    for k, sta in enumerate(stas):
        spatial[k] = np.linalg.svd(sta.reshape(lags, -1), full_matrices=False)[2][0].reshape(h, w)
    return spatial


def rf_recovery(twin, data: Path) -> float:
    """Median |r| of the twin's STA against the true spatial filter, reliable linear cells."""
    from rig_bridge.retina.recording import retina_of_recording
    from stimuli.recording.reliability import split_half_reliability

    with open_recording(data) as rec:
        if "sim_seed" not in rec.attrs:
            return float("nan")
        retina = retina_of_recording(rec.attrs)
        reliability = dict(zip((int(i) for i in rec.cell_ids), split_half_reliability(rec.counts("mov2")),
                               strict=True))
    spatial = twin_sta(twin)
    r = [abs(np.corrcoef(spatial[k].ravel(), retina.spatial_filter(retina.index_of(c)).ravel())[0, 1])
         for k, c in enumerate(twin.metadata.cell_ids)
         if retina.is_linear(retina.index_of(c)) and reliability[c] > 0.5]
    return float(np.median(r)) if r else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="recording to use (default: simulate one)")
    ap.add_argument("--cells", type=int, default=90)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--models", default="vist,dense_valid,pixels,per_cell,ln,cnn")
    ap.add_argument("--train", default="mov1", help="training segments, comma-separated")
    ap.add_argument("--populations", default="1,8,16,32,64,90")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = args.work or Path(tempfile.mkdtemp(prefix="twin-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(work / "features")
    data = args.data or simulate_recording(
        work / "sim.h5", SimulationConfig(n_cells=args.cells, size=args.size, train_seconds=args.train_seconds))
    config = replace(CPU_TRAINING, epochs=args.epochs)

    segments = args.train.split(",")
    print(f"data: {data}  (train {args.train}, test mov2; {args.epochs} epochs max; torch threads {torch.get_num_threads()})")
    rows = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        run = train_twin(data, segments, work / name, spec=MODELS[name], config=config, cache=cache)
        train_s = time.perf_counter() - t0
        ev = evaluate_twin(run.twin, data, "mov2", cache=cache).metrics
        rows.append((name, ev.mean_cc, ev.mean_feve, ev.mean_noise_ceiling, ev.mean_sd_kl,
                     run.result.epochs_run, train_s, inference_fps(run, data, cache), rf_recovery(run.twin, data)))
    print()
    print(f"{'model':<11}{'CC':>7}{'FEVE':>8}{'ceiling':>9}{'SD-KL':>9}{'epochs':>8}{'train s':>9}{'infer fps':>11}"
          f"{'RF r':>7}")
    for name, cc, feve, ceil, sdkl, ep, ts, fps, rf in rows:
        print(f"{name:<11}{cc:>7.3f}{feve:>8.3f}{ceil:>9.3f}{sdkl:>9.2f}{ep:>8d}{ts:>9.0f}{fps:>11.0f}{rf:>7.2f}")
    base = {r[0]: r[2] for r in rows}
    if "vist" in base:
        for other in ("ln", "cnn", "pixels"):
            if other in base:
                print(f"FEVE vist - {other}: {base['vist'] - base[other]:+.3f}")

    pops = [int(p) for p in args.populations.split(",") if p]
    if pops:
        print()
        print("population size (Vi-ST trained on the first n cells; metrics over those cells)")
        print(f"{'cells':>6}{'CC':>8}{'FEVE':>8}{'train s':>9}")
        with open_recording(data) as rec:
            n_total = rec.n_cells
        for n in (p for p in pops if p <= n_total):
            sub = subset_recording(data, work / f"sub{n}.h5", n)
            t0 = time.perf_counter()
            run = train_twin(sub, segments, work / f"pop{n}", spec=MODELS["vist"], config=config, cache=cache)
            ev = evaluate_twin(run.twin, sub, "mov2", cache=cache).metrics
            print(f"{n:>6}{ev.mean_cc:>8.3f}{np.nan_to_num(ev.mean_feve):>8.3f}{time.perf_counter() - t0:>9.0f}")


if __name__ == "__main__":
    main()

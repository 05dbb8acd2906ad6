"""Real size: recording length, cell count, DINOv2-large's width, two processes (issue 24).

Every measurement that reports memory runs in a child process of its own, and its peak RSS
is the child's `ru_maxrss` (`os.wait4`), so one part never inflates another.

1. `train_twin` (what `insilico train` calls, the `cpu` preset and the `tiny` backbone, one
   epoch) on a 2-minute and a 10-minute training movie of the same simulated retina: peak RSS
   (features extracted and cached in the same run) and the epoch's seconds, which should be
   linear in length (windows per epoch are `coverage` x frames / window).
2. One hour of 1,000 cells read through a DINOv2-large-shaped backbone: 24 layers, 1024
   channels, 16 heads, random weights saved with `save_pretrained` in a local folder and loaded
   by path as a user's checkpoint is. Its cached features (1 h x 1024 x 16 x 16 float16, 53
   GiB) are written directly at the cache's key for the recording's frames: an HDF5 dataset of
   that shape whose chunks are not stored read as zeros, so the disk holds none of them. The
   recording's frames and counts are random (memory does not depend on their values).
3. The `vist` preset's per-cell grouped layers (AdaLN and CMST carry one map per cell) against
   the `cpu` preset's fixed 8 maps, at 300 and 1,000 cells with 1024-channel features: the
   parameters of those layers, the size of one CMST activation, peak RSS and seconds of one
   training step (batch 1).
4. Two torchrun processes (gloo, CPU) against one process with their batches together, on
   the LN twin (a loss that is a mean over windows, no dropout): the largest loss difference.
5. A gradient design step (forward and backward through the backbone and the twin) with the
   DINOv2-large-shaped backbone on this machine's CPU (on a GPU with `--device cuda`), and the
   backbone's extraction seconds per frame.

Epochs run with a reduced `coverage` (windows per epoch): memory does not depend on how many
windows an epoch holds, and time per window is what is compared. Prints one table and writes
`scale.json` in the work folder.

    python benchmarks/scale.py --work /tmp/scale [--minutes 2 10] [--cells 300]
        [--hour-minutes 60] [--hour-cells 1000] [--coverage 0.2] [--parts 1,2,3,4,5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1 << 30
# DINOv2-large (facebook/dinov2-large): ViT-L/14 at 224 px.
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, image_size=224,
             patch_size=14)


# --- children: each a fresh process whose peak RSS is its own ------------------------------------
def child(kind: str, **kwargs) -> dict:
    """Run `scale.py _child kind` with JSON arguments; its JSON answer plus peak RSS and wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "_child", kind, json.dumps(kwargs)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({proc.returncode}):\n{text[-4000:]}")
    answer = json.loads(text.strip().splitlines()[-1])
    return {**answer, "peak_rss_gib": usage.ru_maxrss * 1024 / GIB, "wall_s": wall}


def child_train(data: str, out: str, cache: str, backbone: str, coverage: float, batch_size: int) -> dict:
    from vist_model.features import FeatureCache
    from vist_model.fit_twin import TwinSpec, train_twin
    from vist_model.train import training_for

    config = replace(training_for("cpu"), epochs=1, coverage=coverage, batch_size=batch_size)
    run = train_twin(data, ["mov1"], out, spec=TwinSpec(kind="vist", preset="cpu", backbone=backbone),
                     config=config, device="cpu", cache=FeatureCache(cache))
    frames = sum(r.stop - r.start for r in run.split.train)
    windows = max(1, int(round(config.coverage * frames / config.window)))
    return {"epoch_s": run.result.seconds, "windows": windows, "train_frames": frames,
            "val_loss": run.result.val_loss[-1]}


def child_layers(preset: str, cells: int, channels: int, window: int) -> dict:
    import torch

    from vist_model.loss import ViSTLoss
    from vist_model.vist import ViST, vist_config

    torch.manual_seed(0)
    config = vist_config(preset, cells, channels)
    rf = torch.rand(cells, config.grid, config.grid)
    net = ViST(config, rf)
    grouped = sum(p.numel() for name, p in net.named_parameters() if name.split(".")[0] in ("adaln", "cmst"))
    x = torch.randn(1, window, channels, config.grid, config.grid)
    y = torch.rand(1, window, cells)
    loss_fn, optimiser = ViSTLoss(), torch.optim.AdamW(net.parameters(), lr=1e-4)
    seconds = []
    for _ in range(2):  # the first step allocates; the second is timed too, the faster reported
        t0 = time.perf_counter()
        loss = loss_fn(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        seconds.append(time.perf_counter() - t0)
    activation = config.maps * window * config.grid * config.grid * 4  # float32 [maps, T, grid, grid]
    return {"maps": config.maps, "grouped_params": grouped, "params": sum(p.numel() for p in net.parameters()),
            "cmst_activation_mib": activation / (1 << 20), "step_s": min(seconds)}


def child_design(backbone: str, frames: int, device: str, extract_frames: int) -> dict:
    import torch

    from vist_model.backbone import load_backbone
    from vist_model.features import extract_features
    from vist_model.vist import TwinWithBackbone, ViST, vist_config

    dev = torch.device(device)
    bb = load_backbone(backbone).to(dev)
    config = vist_config("cpu", 90, bb.spec.hidden_size, grid=bb.spec.grid)
    net = ViST(config, torch.rand(90, config.grid, config.grid)).to(dev)
    model = TwinWithBackbone(bb, net, (32, 32)).to(dev)
    clip = torch.rand(1, frames, 32, 32, device=dev, requires_grad=True)
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        rates = model(clip)
        rates[..., 0].mean().backward()  # increase(cell 0): the objective's gradient w.r.t. the pixels
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    movie = np.random.default_rng(0).integers(0, 256, (extract_frames, 32, 32), dtype=np.uint8)
    t0 = time.perf_counter()
    extract_features(bb, movie, batch_size=min(32, extract_frames), device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"step_s": min(seconds), "frames": frames, "extract_s_per_frame": (time.perf_counter() - t0) / extract_frames,
            "device": device, "params": sum(p.numel() for p in bb.parameters())}


CHILDREN = {"train": child_train, "layers": child_layers, "design": child_design}


# --- the parent's set-up -------------------------------------------------------------------------
def large_backbone(folder: Path, layers: int = LARGE["num_hidden_layers"]) -> Path:
    """A random DINOv2-large-shaped checkpoint saved with `save_pretrained` (once per work folder);
    fewer `layers` only to try a script out."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**{**LARGE, "num_hidden_layers": layers})).save_pretrained(folder)
    return folder


def simulated(path: Path, cells: int, minutes: float) -> Path:
    from rig_bridge.retina.recording import SimulationConfig, simulate_recording

    if not path.exists():
        simulate_recording(path, SimulationConfig(n_cells=cells, size=32, train_seconds=60 * minutes,
                                                  test_seconds=10, noise_seconds=20))
    return path


def random_hour(path: Path, cells: int, minutes: float, backbone: Path, cache_root: Path) -> Path:
    """A recording of `minutes` of random frames and counts, and its features written directly
    into the cache at the key training will look up (chunks left unstored read as zeros)."""
    import h5py

    from stimuli.recording import RecordingWriter
    from vist_model.backbone import load_backbone
    from vist_model.data import RecordingFrames
    from vist_model.features import (
        CACHE_DTYPE,
        CHUNK_BYTES,
        FeatureCache,
        backbone_fingerprint,
        frames_hash,
    )

    rng = np.random.default_rng(0)
    n = int(round(minutes * 60 * 30))
    if not path.exists():
        with RecordingWriter(path, frame_rate=30.0, height=32, width=32, cell_ids=np.arange(cells)) as w:
            for start in range(0, n, 3600):
                t = min(3600, n - start)
                w.append(rng.integers(0, 256, (t, 32, 32), dtype=np.uint8),
                         rng.poisson(0.1, (1, t, cells)).astype(np.float32))
            w.add_segment("mov1", 0, n)
            yy, xx = np.mgrid[:32, :32]
            cy, cx = rng.uniform(4, 28, (2, cells, 1, 1))
            w.set_rf(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8).astype(np.float32))
    bb = load_backbone(str(backbone))
    fingerprint = backbone_fingerprint(bb)
    frames = RecordingFrames(path, 0, n)
    cache = FeatureCache(cache_root)
    target = cache.path_for(fingerprint, frames_hash(frames))
    if not target.exists():
        cache_root.mkdir(parents=True, exist_ok=True)
        shape = (n, *bb.spec.feature_shape)
        chunk = max(1, CHUNK_BYTES // (int(np.prod(shape[1:])) * 2))
        with h5py.File(target, "w") as f:
            f.attrs["backbone"] = fingerprint
            f.attrs["spec"] = repr(bb.spec)
            f.create_dataset("features", shape=shape, dtype=CACHE_DTYPE, chunks=(chunk, *shape[1:]), fillvalue=0)
    return path


def ddp_difference(data: Path, work: Path) -> dict:
    """Largest |loss difference| between two torchrun ranks and one process (LN twin, 2 epochs)."""
    config = dict(epochs=2, warmup_epochs=1, coverage=3.8, lr=2e-3)
    script = work / "ddp_train.py"
    script.write_text(
        "import sys\nfrom vist_model.fit_twin import TwinSpec, train_twin\nfrom vist_model.train import TrainConfig\n"
        "train_twin(sys.argv[1], ['mov1'], sys.argv[2], spec=TwinSpec(kind='ln'),\n"
        f"           config=TrainConfig(batch_size=int(sys.argv[3]), **{config}), device='cpu')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, launcher, batch in (("one", [sys.executable], 4),
                                  ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                           "--nproc-per-node", "2"], 2)):
        out = work / f"ddp_{name}"
        subprocess.run([*launcher, str(script), str(data), str(out), str(batch)], env=env, check=True,
                       capture_output=True)
        runs[name] = json.loads((out / "train.json").read_text())
    diffs = [abs(a - b) for key in ("train_loss", "val_loss") for a, b in zip(runs["one"][key], runs["two"][key],
                                                                                strict=True)]
    return {"max_abs_diff": max(diffs), "one": runs["one"]["val_loss"], "two": runs["two"]["val_loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--minutes", type=float, nargs=2, default=(2.0, 10.0), help="short and long training movie")
    p.add_argument("--cells", type=int, default=300)
    p.add_argument("--hour-minutes", type=float, default=60.0)
    p.add_argument("--hour-cells", type=int, default=1000)
    p.add_argument("--coverage", type=float, default=0.2, help="windows per epoch / (frames / window)")
    p.add_argument("--hour-coverage", type=float, default=0.005)
    p.add_argument("--layer-cells", type=int, nargs="+", default=(300, 1000))
    p.add_argument("--layer-window", type=int, default=64)
    p.add_argument("--design-frames", type=int, default=4)
    p.add_argument("--device", default="cpu", help="device of the design step (cpu or cuda)")
    p.add_argument("--parts", default="1,2,3,4,5")
    args = p.parse_args()
    parts = {int(x) for x in args.parts.split(",")}
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    rows: list[tuple[str, str]] = []

    if parts & {2, 5}:
        t0 = time.perf_counter()
        backbone = large_backbone(work / "dinov2-large-shaped")
        report["backbone_saved_s"] = time.perf_counter() - t0

    if 1 in parts:
        runs = {}
        for minutes in args.minutes:
            data = simulated(work / f"retina{args.cells}_{minutes:g}min.h5", args.cells, minutes)
            runs[minutes] = child("train", data=str(data), out=str(work / f"run_{minutes:g}min"),
                                  cache=str(work / "features"), backbone="tiny", coverage=args.coverage,
                                  batch_size=4)
        short, long = (runs[m] for m in args.minutes)
        report["length"] = {f"{m:g}": r for m, r in runs.items()}
        for m, r in runs.items():
            rows.append((f"train {args.cells} cells, {m:g} min movie (tiny, cpu preset)",
                         f"peak RSS {r['peak_rss_gib']:.2f} GiB, epoch {r['epoch_s']:.0f} s ({r['windows']} windows "
                         f"+ validation; {r['epoch_s'] / m:.1f} s per minute of movie), run {r['wall_s']:.0f} s"))
        rows.append((f"peak RSS {args.minutes[1]:g} / {args.minutes[0]:g} min (done when <= 1.25)",
                     f"{long['peak_rss_gib'] / short['peak_rss_gib']:.3f}"))
        per_minute = [runs[m]["epoch_s"] / m for m in args.minutes]
        rows.append(("epoch seconds per minute of movie, long / short (linear: 1)",
                     f"{per_minute[1] / per_minute[0]:.2f}"))

    if 2 in parts:
        data = random_hour(work / f"random{args.hour_cells}_{args.hour_minutes:g}min.h5", args.hour_cells,
                           args.hour_minutes, backbone, work / "features")
        r = child("train", data=str(data), out=str(work / "run_hour"), cache=str(work / "features"),
                  backbone=str(backbone), coverage=args.hour_coverage, batch_size=4)
        report["hour"] = r
        rows.append((f"train {args.hour_cells} cells, {args.hour_minutes:g} min, DINOv2-large-shaped cached "
                     "features (done when < 4 GiB)",
                     f"peak RSS {r['peak_rss_gib']:.2f} GiB (backbone weights in memory: 1.13 GiB), "
                     f"epoch {r['epoch_s']:.0f} s for {r['windows']} windows + validation on "
                     f"{0.1 * args.hour_minutes:g} min"))

    if 3 in parts:
        report["layers"] = {}
        for preset in ("vist", "cpu"):
            for cells in args.layer_cells:
                r = child("layers", preset=preset, cells=cells, channels=LARGE["hidden_size"],
                          window=args.layer_window)
                report["layers"][f"{preset}-{cells}"] = r
                rows.append((f"{preset} preset, {cells} cells, 1024-ch features, batch 1 x {args.layer_window} "
                             "frames",
                             f"{r['maps']} maps, AdaLN+CMST {r['grouped_params'] / 1e6:.2f} M params, CMST input "
                             f"activation {r['cmst_activation_mib']:.0f} MiB, step {r['step_s']:.1f} s, "
                             f"peak RSS {r['peak_rss_gib']:.2f} GiB"))

    if 4 in parts:
        data = simulated(work / "ddp_tiny.h5", 12, 20 / 60)
        r = ddp_difference(data, work)
        report["ddp"] = r
        rows.append(("torchrun 2 ranks x batch 2 vs 1 process x batch 4 (LN twin; done when <= 1e-4)",
                     f"max |loss difference| {r['max_abs_diff']:.2e}"))

    if 5 in parts:
        r = child("design", backbone=str(backbone), frames=args.design_frames, device=args.device,
                  extract_frames=8)
        report["design"] = r
        rows.append((f"design step, DINOv2-large-shaped backbone ({r['params'] / 1e6:.0f} M params), "
                     f"{args.device}",
                     f"{r['step_s']:.1f} s for {r['frames']} frames ({r['step_s'] / r['frames']:.1f} s/frame); "
                     f"extraction {r['extract_s_per_frame']:.2f} s/frame "
                     f"(1 h at 30 Hz: ~{r['extract_s_per_frame'] * 108000 / 3600:.0f} h, extrapolated)"))

    width = max(len(k) for k, _ in rows) if rows else 0
    print(f"\nscale benchmark ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    (work / "scale.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(CHILDREN[sys.argv[2]](**json.loads(sys.argv[3])), default=float))
    else:
        main()

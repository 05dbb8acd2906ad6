"""The GPU path, end to end, against the CPU on the same machine.

One prepared run for a machine with a CUDA GPU (CI has none, so nothing here is a test):

1. training the `cpu` preset: seconds per epoch (the training loop, features cached) on this
   machine's CPU cores and on the GPU (bf16 autocast), and the test accuracy of the GPU run;
2. the same checkpoint predicts the same rates on the CPU and on the GPU;
3. the published `vist` preset trained on the GPU, with the published schedule and with the
   small-batch schedule of `CPU_TRAINING` (two minutes of recording make two optimiser steps
   an epoch at batch 16);
4. `insilico optimize --device cuda`, `insilico verify` and `insilico attribute --device cuda`
   on cell 42, through the command line a user types;
5. with `--large`, the paper's backbone width: a DINOv2-large-shaped checkpoint (24 layers,
   1024 channels, random weights saved with `save_pretrained`, loaded by path): extraction of
   the training movie into the cache, one epoch of the `cpu` preset on its features, and a
   gradient design step through backbone and twin (`benchmarks/scale.py`'s design child).

Prints one table and writes `gpu_path.json`; with `--keep DIR` it copies the GPU-trained
checkpoints there, so they can be benchmarked on a machine without a GPU.

    python benchmarks/gpu_path.py --work /tmp/gpu [--keep OUT] [--epochs 30] [--large]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rig_bridge.retina.recording import SimulationConfig, simulate_recording  # noqa: E402
from stimuli.recording import open_recording  # noqa: E402
from vist_model.evaluate import evaluate_twin  # noqa: E402
from vist_model.features import FeatureCache  # noqa: E402
from vist_model.fit_twin import TwinSpec, train_twin  # noqa: E402
from vist_model.train import CPU_TRAINING, TrainConfig  # noqa: E402
from vist_model.twin import Twin  # noqa: E402

CLI = [sys.executable, "-c", "from insilico.cli import app; app()"]


def train(data: Path, out: Path, preset: str, config: TrainConfig, device: str, cache: FeatureCache) -> dict:
    t0 = time.perf_counter()
    run = train_twin(data, ["mov1"], out, spec=TwinSpec(kind="vist", preset=preset, backbone="tiny"),
                     config=config, device=device, cache=cache)
    seconds = time.perf_counter() - t0
    ev = evaluate_twin(run.twin, data, "mov2", cache=cache).metrics
    # Per epoch: the training loop alone (TrainResult.seconds), not the set-up and feature extraction.
    return {"preset": preset, "device": device, "epochs": run.result.epochs_run, "seconds": seconds,
            "s_per_epoch": run.result.seconds / max(1, run.result.epochs_run), "cc": ev.mean_cc,
            "feve": float(np.nan_to_num(ev.mean_feve)), "config": asdict(config)}


def large_backbone_path(data: Path, work: Path, device: str, cache: FeatureCache, layers: int,
                        design_frames: int) -> dict:
    """Extraction, one `cpu`-preset epoch and a design step with a DINOv2-large-shaped backbone."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scale import child, large_backbone

    folder = large_backbone(work / f"dinov2-large-shaped-{layers}", layers)
    with open_recording(data) as rec:
        movie = rec.segment("mov1").n_frames
    t0 = time.perf_counter()
    run = train_twin(data, ["mov1"], work / "large", spec=TwinSpec(kind="vist", preset="cpu", backbone=str(folder)),
                     config=replace(CPU_TRAINING, epochs=1), device=device, cache=cache)
    total = time.perf_counter() - t0
    design = child("design", backbone=str(folder), frames=design_frames, device=device, extract_frames=64)
    # Set-up and extraction: the run less its training loop (TrainResult.seconds).
    return {"movie_frames": movie, "setup_and_extraction_s": total - run.result.seconds,
            "epoch_s": run.result.seconds, "design_step_s": design["step_s"], "design_frames": design_frames,
            "extract_s_per_frame": design["extract_s_per_frame"], "design_peak_rss_gib": design["peak_rss_gib"]}


def cpu_gpu_agreement(model: Path, data: Path, gpu: str) -> dict:
    """Largest difference between CPU and CUDA rates of one checkpoint on the test movie."""
    with open_recording(data) as rec:
        frames = rec.frames("mov2")[:300]
    cpu = Twin.load(model, device="cpu").predict(frames)
    acc = Twin.load(model, device=gpu).predict(frames)
    return {"max_abs_diff": float(np.abs(cpu - acc).max()), "rate_scale": float(np.abs(cpu).max()),
            "corr": float(np.corrcoef(cpu.ravel(), acc.ravel())[0, 1])}


def cli(args: list[str], log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run([*CLI, *args], stdout=fh, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--keep", type=Path, default=None, help="copy GPU-trained checkpoints here")
    p.add_argument("--epochs", type=int, default=30, help="epochs of the small-batch vist run")
    p.add_argument("--device", default="cuda", help="the accelerator (cpu only to try the script out)")
    p.add_argument("--small", action="store_true", help="20 cells, 32 px, 30 s, 1 epoch: a dry run")
    p.add_argument("--speed-only", action="store_true", help="only the cpu preset's epoch on CPU and GPU")
    p.add_argument("--large", action="store_true", help="also time a DINOv2-large-shaped backbone (step 5)")
    p.add_argument("--large-layers", type=int, default=24, help="its layers (fewer only for a dry run)")
    p.add_argument("--design-frames", type=int, default=32, help="frames of the large backbone's design clip")
    args = p.parse_args()
    gpu = args.device
    if gpu.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible to torch: this script checks the GPU path")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if gpu.startswith("cuda") else gpu
    report: dict = {"gpu": name, "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads()}
    print(f"{report['gpu']}, torch {report['torch']}, {report['cpu_threads']} CPU threads")
    sim = SimulationConfig(n_cells=20, size=32, train_seconds=30.0) if args.small else SimulationConfig()
    data = simulate_recording(work / "sim.h5", sim)
    epochs = 1 if args.small else None
    cache = FeatureCache(work / "features")

    runs = {
        "cpu preset, CPU": ("cpu", replace(CPU_TRAINING, epochs=1), "cpu"),
        "cpu preset, GPU": ("cpu", CPU_TRAINING, gpu),
        "vist preset, GPU, published": ("vist", TrainConfig(), gpu),
        "vist preset, GPU, small batch": ("vist", replace(CPU_TRAINING, epochs=args.epochs, patience=8), gpu),
    }
    if epochs is not None:
        runs = {k: (preset, replace(c, epochs=epochs), d) for k, (preset, c, d) in runs.items()}
    if args.speed_only:
        runs = {k: (preset, replace(c, epochs=2), d) for k, (preset, c, d) in list(runs.items())[:2]}
    results = {}
    for name, (preset, config, device) in runs.items():
        folder = work / name.replace(", ", "_").replace(" ", "-")
        results[name] = train(data, folder, preset, config, device, cache)
        results[name]["folder"] = str(folder)
        r = results[name]
        print(f"{name:<32} {r['epochs']:>3} epochs {r['s_per_epoch']:>7.1f} s/epoch  CC {r['cc']:.3f}  "
              f"FEVE {r['feve']:.3f}", flush=True)
    report["training"] = results
    cpu_epoch = results["cpu preset, CPU"]["s_per_epoch"]
    gpu_epoch = results["cpu preset, GPU"]["s_per_epoch"]
    report["cpu_preset_epoch_speedup"] = cpu_epoch / gpu_epoch
    print(f"cpu preset, one epoch: CPU {cpu_epoch:.1f} s, GPU {gpu_epoch:.1f} s, ratio {cpu_epoch / gpu_epoch:.1f}")
    if args.large:
        large = report["large_backbone"] = large_backbone_path(data, work, gpu, cache, args.large_layers,
                                                               args.design_frames)
        print(f"DINOv2-large-shaped ({args.large_layers} layers): {large['movie_frames']} frames set-up + extraction "
              f"{large['setup_and_extraction_s']:.1f} s ({large['extract_s_per_frame'] * 1e3:.1f} ms/frame), "
              f"cpu-preset epoch {large['epoch_s']:.1f} s, design step {large['design_step_s']:.2f} s for "
              f"{large['design_frames']} frames", flush=True)
    if args.speed_only:
        (work / "gpu_path.json").write_text(json.dumps(report, indent=2, default=str))
        return

    best = max(("vist preset, GPU, published", "vist preset, GPU, small batch"), key=lambda k: results[k]["cc"])
    model = Path(results[best]["folder"])
    report["agreement"] = cpu_gpu_agreement(model, data, gpu)
    print(f"CPU vs CUDA rates of {best!r}: {report['agreement']}")

    design, reports = work / "designs", work / "reports"
    steps = {
        "optimize": ["optimize", "--model", str(model), "--cell", "42", "--out", str(design),
                     "--method", "both", "--device", gpu],
        "verify": ["verify", "--design", str(design / "cell42.h5"), "--data", str(data), "--json"],
        "attribute": ["attribute", "--model", str(model), "--data", str(data), "--cell", "42",
                      "--out", str(reports), "--device", gpu],
    }
    report["cli"] = {}
    for name, argv in steps.items():
        rc, seconds = cli(argv, work / f"{name}.log")
        report["cli"][name] = {"rc": rc, "seconds": seconds}
        print(f"insilico {name:<10} rc {rc}  {seconds:.1f} s", flush=True)
    verify_log = (work / "verify.log").read_text()
    report["verify"] = verify_log[verify_log.find("{"):] if "{" in verify_log else verify_log[-2000:]

    (work / "gpu_path.json").write_text(json.dumps(report, indent=2, default=str))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "gpu_path.json", args.keep / "gpu_path.json")
        for key, tag in (("vist preset, GPU, small batch", "vist_small"), ("vist preset, GPU, published", "vist_pub"),
                         ("cpu preset, GPU", "cpu_gpu")):
            shutil.copy(Path(results[key]["folder"]) / "model.pt", args.keep / f"{tag}.pt")
        for name in ("optimize", "attribute", "verify"):
            shutil.copy(work / f"{name}.log", args.keep / f"{name}.log")


if __name__ == "__main__":
    main()

"""What a frozen backbone keeps of each cell's drive: a linear probe of its features at the RF.

For every cell of a recording and every backbone named, the features of the grid positions
around the cell's recorded RF centre (a 3 x 3 neighbourhood, every channel) at a few causal
lags are regressed on the cell's trial-averaged response (ridge, its strength picked on the
last 10 % of the training data), and the probe's output goes through a nonlinearity read off
the training data (mean response per quantile bin of the probe's output). Scored on the
repeated test movie as CC / noise ceiling, median over reliable cells (split-half r > 0.5), per
cell type. It asks what a network on top of the backbone could at best read out linearly near
the RF, so a type a backbone serves badly here is one the twin cannot recover downstream
without luck. `pixels` and `raw` (the screen's luminance downsampled to the grid, no backbone
at all) are the references.

    python benchmarks/backbone_probe.py DATA.h5 [--backbones tiny,pixels,raw] [--cache DIR]

The probe reads each cell's feature neighbourhood from the cache file, and `raw` pools each
segment once, in blocks: memory is frames x (9 x channels + grid x grid), whatever the screen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stimuli.recording import open_recording  # noqa: E402
from stimuli.recording.reliability import split_half_reliability  # noqa: E402
from stimuli.recording.rf_geometry import rf_centre_pixel  # noqa: E402
from vist_model.backbone import load_backbone  # noqa: E402
from vist_model.data import RecordingFrames, default_train_segments  # noqa: E402
from vist_model.features import FeatureCache  # noqa: E402
from vist_model.metrics import evaluate  # noqa: E402

LAG_BINS = ((0, 2), (2, 4), (4, 8), (8, 16), (16, 30))
"""Causal lags (frames), summed within each bin: the probe's temporal basis."""
RIDGE = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)
RELIABLE = 0.5
QUANTILES = 20
BLOCK_FRAMES = 1024


def neighbourhood(grid_yx: tuple[int, int], g: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the 3 x 3 grid positions around `grid_yx` on a `g x g` grid (edges repeat)."""
    ys = np.clip(np.arange(grid_yx[0] - 1, grid_yx[0] + 2), 0, g - 1)
    xs = np.clip(np.arange(grid_yx[1] - 1, grid_yx[1] + 2), 0, g - 1)
    return ys, xs


def grid_features(path: Path, grid_yx: tuple[int, int]) -> np.ndarray:
    """Features `[T, 9 * C]` of the 3 x 3 grid neighbourhood of `grid_yx` in a feature cache file."""
    with h5py.File(path, "r") as f:
        feats = f["features"]
        ys, xs = neighbourhood(grid_yx, feats.shape[-1])
        block = feats[:, :, ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    block = block[:, :, ys - ys.min()][:, :, :, xs - xs.min()]
    return block.reshape(len(block), -1)


def pooled_luminance(rec, segment: str, grid: int) -> np.ndarray:
    """The segment's luminance, centred on grey and averaged to `grid x grid`: `[T, grid, grid]`.

    Read `BLOCK_FRAMES` at a time, once per segment; each cell's probe slices its neighbourhood.
    """
    seg = rec.segment(segment)
    _, h, w = rec.shape
    out = np.empty((seg.n_frames, grid, grid), np.float32)
    for a in range(seg.start, seg.stop, BLOCK_FRAMES):
        b = min(seg.stop, a + BLOCK_FRAMES)
        frames = rec.frames(start=a, stop=b).astype(np.float32) / 255.0 - 0.5
        frames = frames[:, : h // grid * grid, : w // grid * grid].reshape(b - a, grid, h // grid, grid, w // grid)
        out[a - seg.start:b - seg.start] = frames.mean(axis=(2, 4))
    return out


def raw_features(pooled: np.ndarray, grid_yx: tuple[int, int]) -> np.ndarray:
    """The 3 x 3 neighbourhood of `grid_yx` in pooled luminance `[T, g, g]`: `[T, 9]`."""
    ys, xs = neighbourhood(grid_yx, pooled.shape[-1])
    return pooled[:, ys][:, :, xs].reshape(len(pooled), -1)


def lagged(x: np.ndarray) -> np.ndarray:
    """`[T, D]` -> `[T, D * len(LAG_BINS)]`: each lag bin's causal sum (zeros before the start)."""
    c = np.concatenate([np.zeros((1, x.shape[1]), x.dtype), np.cumsum(x, axis=0)])
    t = np.arange(len(x)) + 1
    cols = []
    for a, b in LAG_BINS:  # sum of x[t - b + 1 .. t - a]
        hi, lo = np.clip(t - a, 0, None), np.clip(t - b, 0, None)
        cols.append(c[hi] - c[lo])
    return np.concatenate(cols, axis=1)


def fit_probe(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge weights on standardised `x [T, D]` for `y [T]`, strength picked on the last 10 %."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    n = int(len(z) * 0.9)
    best, best_cc = None, -np.inf
    for lam in RIDGE:
        w = _ridge(z[:n], y[:n], lam)
        cc = np.corrcoef(z[n:] @ w, y[n:])[0, 1]
        if np.isfinite(cc) and cc > best_cc:
            best, best_cc = lam, cc
    return _ridge(z, y, best if best is not None else RIDGE[-1]), mu, sd


def drive(probe: tuple[np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The probe's linear output `[T]` for inputs `x [T, D]`."""
    w, mu, sd = probe
    return np.c_[(x - mu) / sd, np.ones(len(x))] @ w


def _ridge(z: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    reg = lam * np.eye(z.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(z.T @ z + reg, z.T @ y)


def nonlinearity(drive: np.ndarray, y: np.ndarray):
    """Mean response per quantile bin of the drive, interpolated: a monotone-free static map."""
    edges = np.quantile(drive, np.linspace(0, 1, QUANTILES + 1))
    centres = np.array([drive[(drive >= a) & (drive <= b)].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    means = np.array([y[(drive >= a) & (drive <= b)].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return lambda d: np.interp(d, centres, means)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--backbones", default="tiny,pixels,raw")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: beside DATA)")
    ap.add_argument("--test", default="mov2")
    args = ap.parse_args()
    cache = FeatureCache(args.cache or args.data.parent.parent / "features")
    with open_recording(args.data) as rec:
        train = default_train_segments(rec)
        segs = {s.name: s for s in rec.segments}
        counts = rec.counts(args.test)
        types = np.array(rec.cell_types)
        rf = rec.rf
        _, h, w = rec.shape
        targets = {s: rec.mean_response(s) for s in train}
        reliable = split_half_reliability(counts) > RELIABLE
        centres = [rf_centre_pixel(m) for m in rf]
        print(f"{args.data}: {rec.n_cells} cells ({int(reliable.sum())} reliable), train {train}, test {args.test}")
        for name in args.backbones.split(","):
            grid = 16
            paths, pooled = {}, {}
            if name == "raw":
                pooled = {s: pooled_luminance(rec, s, grid) for s in [*train, args.test]}
            else:
                backbone = load_backbone(name)
                grid = backbone.spec.grid
                for s in [*train, args.test]:
                    seg = segs[s]
                    paths[s] = cache.features(backbone, RecordingFrames(args.data, seg.start, seg.stop)).path
            prediction = np.zeros(counts.shape[1:], np.float64)
            for i, (y, x) in enumerate(centres):
                gyx = (min(int(y * grid / h), grid - 1), min(int(x * grid / w), grid - 1))
                feats = {s: (raw_features(pooled[s], gyx) if name == "raw" else grid_features(paths[s], gyx))
                         for s in [*train, args.test]}
                x_train = np.concatenate([lagged(feats[s]) for s in train])
                y_train = np.concatenate([targets[s][:, i] for s in train])
                probe = fit_probe(x_train, y_train)
                f = nonlinearity(drive(probe, x_train), y_train)
                prediction[:, i] = np.maximum(f(drive(probe, lagged(feats[args.test]))), 0.0)
            m = evaluate(prediction, counts)
            ratio = m.cc / m.noise_ceiling
            per_type = {t: float(np.nanmedian(ratio[reliable & (types == t)]))
                        for t in sorted(set(types)) if (reliable & (types == t)).any()}
            print(f"  {name:<8} CC/ceiling {np.nanmedian(ratio[reliable]):.3f}  "
                  + "  ".join(f"{t} {v:.2f}" for t, v in per_type.items()), flush=True)


if __name__ == "__main__":
    main()

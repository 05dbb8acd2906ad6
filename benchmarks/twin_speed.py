"""Training-step time of the Vi-ST twin on CPU: grouped 3D convolutions channels-last or not.

One forward and backward pass of a `cpu`-preset Vi-ST on a batch of feature windows, with the
grouped (depthwise) convolutions run channels-last (as `vist_model.causal.CausalConv3d` does on
CPU) against the default memory layout, in the same run. Prints the best of `--repeats` times and
their ratio, and checks that both layouts give the same rates.

    python benchmarks/twin_speed.py [--cells 60] [--batch 4] [--window 128] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vist_model import causal  # noqa: E402
from vist_model.vist import ViST, vist_config  # noqa: E402


def _default_layout(self: causal.CausalConv3d, x: torch.Tensor) -> torch.Tensor:
    if any(self._pad):
        x = F.pad(x, self._pad, mode="constant", value=0.0)
    return self.conv(x)


def step_seconds(model: ViST, x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(x)
        out.sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best, out.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = vist_config(args.preset, args.cells, 32)
    model = ViST(cfg, torch.rand(args.cells, cfg.grid, cfg.grid)).eval()  # eval: no dropout noise
    x = torch.randn(args.batch, args.window, cfg.in_channels, cfg.grid, cfg.grid)
    fast, rates_fast = step_seconds(model, x, args.repeats)
    shipped = causal.CausalConv3d.forward
    causal.CausalConv3d.forward = _default_layout
    try:
        slow, rates_slow = step_seconds(model, x, args.repeats)
    finally:
        causal.CausalConv3d.forward = shipped
    print(f"Vi-ST {args.preset} preset, {args.cells} cells, batch {args.batch} x {args.window} frames, "
          f"{args.threads} threads")
    print(f"{'layout':<16}{'step s':>9}")
    print(f"{'default':<16}{slow:>9.2f}")
    print(f"{'channels-last':<16}{fast:>9.2f}")
    print(f"speed-up {slow / fast:.2f}x; max rate difference {float((rates_fast - rates_slow).abs().max()):.1e}")


if __name__ == "__main__":
    main()

"""Training-step time of the Vi-ST twin on CPU: three ways to run its depthwise 3D convolutions.

One forward and backward pass of a Vi-ST (`cpu` preset by default) on a batch of feature
windows, with the depthwise convolutions of the TCN and the CMST blocks run as shipped
(`vist_model.causal.depthwise_conv3d`: the dilated ones as a depthwise 2D convolution per
temporal tap, the others as `nn.Conv3d` channels-last), all of them as `nn.Conv3d` channels-last
(shipped until 2026-12-07), and as `nn.Conv3d` in its default layout, in the same run, the three interleaved
(best of `--repeats`). Prints each time and its speed-up over the default layout, and checks
that all three give the same rates.

    python benchmarks/twin_speed.py [--cells 60] [--channels 2] [--batch 4] [--window 128] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vist_model import causal  # noqa: E402
from vist_model.vist import ViST, vist_config  # noqa: E402

Forward = Callable[[causal.CausalConv3d, torch.Tensor], torch.Tensor]


def _conv3d(channels_last: bool) -> Forward:
    def forward(self: causal.CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        if any(self._pad):
            x = F.pad(x, self._pad, mode="constant", value=0.0)
        if channels_last and self.depthwise:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.conv(x)
    return forward


WAYS: dict[str, Forward] = {
    "nn.Conv3d": _conv3d(channels_last=False),
    "nn.Conv3d channels-last": _conv3d(channels_last=True),
    "shipped": causal.CausalConv3d.forward,
}


def step_seconds(model: ViST, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    out = model(x)
    out.sum().backward()
    return time.perf_counter() - t0, out.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=60)
    ap.add_argument("--channels", type=int, default=2, help="backbone feature channels (pixels: 2, DINOv2-large: 1024)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = vist_config(args.preset, args.cells, args.channels)
    model = ViST(cfg, torch.rand(args.cells, cfg.grid, cfg.grid)).eval()  # eval: no dropout noise
    x = torch.randn(args.batch, args.window, cfg.in_channels, cfg.grid, cfg.grid)
    best = dict.fromkeys(WAYS, float("inf"))
    rates: dict[str, torch.Tensor] = {}
    shipped = causal.CausalConv3d.forward
    try:
        for _ in range(args.repeats):
            for name, forward in WAYS.items():
                causal.CausalConv3d.forward = forward
                seconds, rates[name] = step_seconds(model, x)
                best[name] = min(best[name], seconds)
    finally:
        causal.CausalConv3d.forward = shipped
    print(f"Vi-ST {args.preset} preset, {args.cells} cells, {args.channels} feature channels, batch {args.batch} x "
          f"{args.window} frames, {args.threads} threads, best of {args.repeats}")
    print("| depthwise convolutions | step s | speed-up |\n|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {best['nn.Conv3d'] / seconds:.2f}x |")
    diff = max(float((r - rates["nn.Conv3d"]).abs().max()) for r in rates.values())
    print(f"max rate difference {diff:.1e}")


if __name__ == "__main__":
    main()

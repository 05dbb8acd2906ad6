"""Frames per second of headless PsychoPy rendering, with and without reading frames back.

Run under an X server, e.g.:

    xvfb-run -a -s "-screen 0 1024x768x24 +extension GLX" .venv/bin/python benchmarks/render.py

Flips are not paced (`pace=False`), so the numbers are how fast frames can be uploaded,
drawn, optionally captured and flipped: the ceiling for a rig's stimulus rate at that size.
Under Xvfb everything runs on the CPU (Mesa llvmpipe); a rig's GPU is faster.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from stimuli.presentation import Presenter, RigProfile

# (stimulus side, scale, frames): 64 px at the default rig's scale 4, 512 px unscaled.
CASES = ((64, 4, 240), (512, 1, 60))
CAPTURE = (("none", False, "screen"), ("stimulus", True, "stimulus"), ("screen", True, "screen"))


def run(repeats: int) -> list[tuple[str, str, float]]:
    profile = RigProfile(name="bench", monitor_width_px=800, monitor_height_px=600,
                         refresh_rate_hz=60.0, photodiode_size_px=32)
    rng = np.random.default_rng(0)
    rows = []
    for side, scale, n_frames in CASES:
        rig = dataclasses.replace(profile, scale=scale)
        frames = rng.integers(0, 256, size=(n_frames, side, side), dtype=np.uint8)
        with Presenter(rig, headless=True, pace=False) as presenter:
            presenter.present(frames[:5], 60.0)  # warm-up: shaders, first texture
            for label, capture, region in CAPTURE:
                fps = []
                for _ in range(repeats):
                    log = presenter.present(frames, 60.0, capture=capture, capture_region=region)
                    fps.append(n_frames / log.end_time)  # n frames span frame 0 -> closing flip
                rows.append((f"{side}x{side} (x{scale} -> {side * scale} px)", label, float(np.median(fps))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (median reported)")
    args = parser.parse_args()
    rows = run(args.repeats)
    print(f"{'stimulus':<28} {'capture':<10} {'frames/s':>9}")
    for stim, capture, fps in rows:
        print(f"{stim:<28} {capture:<10} {fps:9.1f}")


if __name__ == "__main__":
    main()

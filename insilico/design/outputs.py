"""Files of a design: the stimulus, a JSON summary, a contact sheet and an animation.

Per cell `designs/cell42*`:

* `cell42.h5`: stimulus-only recording-v1 file of the design, with attributes stating the
  cell, objective, time window, RMS contrast, method and seed (`insilico verify` reads them);
* `cell42_natural.h5`, `cell42_parametric.h5`: the best natural clip and the best parametric
  stimulus at the same budget, so they can be played to the retina next to the design;
* `cell42.json`: predicted responses to all three, the settings, seed and time taken;
* `cell42.png`: contact sheet (frames over time; the x-t and y-t profiles through the
  cell's receptive-field centre); `cell42.gif`: the clip, animated at its frame rate.

Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stimuli.files import atomic_path
from stimuli.recording import write_stimulus


def write_clip(path: Path, frames: np.ndarray, frame_rate: float, attrs: dict[str, Any],
               pixel_size_um: float | None = None) -> Path:
    """A stimulus-only recording-v1 file (atomic: the writer renames a temp file)."""
    clean = {k: (json.dumps(v) if isinstance(v, dict | list | tuple) else v) for k, v in attrs.items() if v is not None}
    return write_stimulus(path, np.ascontiguousarray(frames, dtype=np.uint8), frame_rate, attrs=clean,
                          pixel_size_um=pixel_size_um)


def contact_sheet(path: Path, frames: np.ndarray, centre: tuple[int, int], frame_rate: float,
                  title: str, n_shown: int = 8) -> Path:
    """PNG: `n_shown` frames evenly spaced up to the last, and x-t / y-t cuts through `centre`.

    Args:
        frames: uint8 `[T, H, W]`.
        centre: `(y, x)` of the receptive-field centre (marked on the frames).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = frames.shape[0]
    shown = np.unique(np.linspace(0, t - 1, min(n_shown, t)).round().astype(int))
    fig = plt.figure(figsize=(1.6 * len(shown), 5.2), constrained_layout=True)
    grid = fig.add_gridspec(2, len(shown), height_ratios=(1, 1.6))
    y, x = centre
    for k, f in enumerate(shown):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(frames[f], cmap="gray", vmin=0, vmax=255)
        ax.plot([x], [y], "r+", ms=6)
        ax.set_title(f"{f / frame_rate * 1000:.0f} ms", fontsize=8)
        ax.axis("off")
    half = max(1, len(shown) // 2)
    for k, (cut, label) in enumerate(((frames[:, y, :], "x"), (frames[:, :, x], "y"))):
        ax = fig.add_subplot(grid[1, k * half:(k + 1) * half if k == 0 else len(shown)])
        shown_cut = ax.imshow(cut, cmap="gray", vmin=0, vmax=255, aspect="auto",
                              extent=(0, cut.shape[1], t / frame_rate, 0))
        ax.set_xlabel(f"{label} (px) through the RF centre")
        ax.set_ylabel("time (s)")
    # Every panel shares the 0..255 scale, mean grey 128 in the middle.
    fig.colorbar(shown_cut, ax=ax, label="grey level", ticks=[0, 64, 128, 192, 255], fraction=0.05)
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path


def animation(path: Path, frames: np.ndarray, frame_rate: float, scale: int = 4) -> Path:
    """Animated GIF of uint8 `[T, H, W]`, each pixel shown as `scale x scale`, looping."""
    from PIL import Image

    big = np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2)
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in big]  # uint8 2-D -> "L"
    with atomic_path(path) as tmp:
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=round(1000 / frame_rate), loop=0)
    return path

"""Figures of training and evaluation (matplotlib, written to PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

from stimuli.files import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_loss_curve(train: Sequence[float], val: Sequence[float], best_epoch: int, path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, label="train")
    ax.plot(epochs, val, label="validation")
    if best_epoch >= 0:
        ax.axvline(best_epoch + 1, color="grey", ls="--", lw=0.8, label=f"best (epoch {best_epoch + 1})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no "1.2" ticks
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9, wrap=True)
    ax.legend(frameon=False)
    fig.tight_layout()
    return _save(fig, path, dpi=120)


def plot_traces(
    recorded: np.ndarray, predicted: np.ndarray, cells: Sequence[tuple[str, int, int, float]],
    frame_rate: float, path: Path,
) -> Path:
    """Recorded (trial-averaged) against predicted traces `[T, N]` for a few labelled cells.

    `cells` holds `(label, index, cell id, cc)` for each panel.
    """
    fig, axes = plt.subplots(len(cells), 1, figsize=(9, 1.9 * len(cells)), sharex=True, squeeze=False)
    t = np.arange(len(recorded)) / frame_rate
    for ax, (label, i, cid, cc) in zip(axes[:, 0], cells, strict=True):
        ax.plot(t, recorded[:, i], color="k", lw=0.8, label="recorded (trial mean)")
        ax.plot(t, predicted[:, i], color="tab:red", lw=0.8, label="twin")
        ax.set_title(f"{label}: cell {cid}, CC {cc:.2f}", fontsize=9, loc="left")
        ax.set_ylabel("spikes/bin")
    axes[0, 0].legend(frameon=False, fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def _save(fig: plt.Figure, path: str | Path, dpi: int) -> Path:
    """PNG written to a temporary name and renamed (a reader never sees half a figure).

    `bbox_inches="tight"` keeps what sticks out of the axes, such as a long backbone title
    that the fixed canvas cut at both ends.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)

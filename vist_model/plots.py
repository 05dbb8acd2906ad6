"""Figures of training and evaluation (matplotlib, written to PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_loss_curve(train: Sequence[float], val: Sequence[float], best_epoch: int, path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, label="train")
    ax.plot(epochs, val, label="validation")
    if best_epoch >= 0:
        ax.axvline(best_epoch + 1, color="grey", ls="--", lw=0.8, label=f"best (epoch {best_epoch + 1})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

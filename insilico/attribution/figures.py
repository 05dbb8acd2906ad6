"""The report's figures, rendered to PNG bytes (matplotlib, Agg)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from insilico.attribution.result import CellAttribution  # noqa: E402


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")  # nothing clipped at the edges
    plt.close(fig)
    return buf.getvalue()


def lag_label(lag_ms: float) -> str:
    """`-33 ms` before the clip's end; the last frame is `0 ms`, not `-0 ms`."""
    return "0 ms" if round(lag_ms) == 0 else f"\u2212{lag_ms:.0f} ms"


def _signed(ax: plt.Axes, image: np.ndarray, title: str, colorbar: bool = False) -> None:
    limit = float(np.nanmax(np.abs(image))) or 1.0
    shown = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        # Each map on its own symmetric scale: the bar says what red and blue amount to.
        # Each tick its own number: a shared "1e-4" offset sat on the next panel's title.
        bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, format="{x:.2g}")
        bar.ax.tick_params(labelsize=7)


def maps_figure(r: CellAttribution) -> bytes:
    """Spatial map beside the recorded RF (and the true filter, the randomised twin's map)."""
    panels = [(r.spatial, f"attribution ({r.method})"), (r.recorded_rf, f"recorded RF (r={r.rf_correlation:.2f})")]
    if r.true_filter is not None:
        panels.append((r.true_filter, f"true filter (r={r.truth_correlation:.2f})"))
    if r.random_spatial is not None:
        panels.append((r.random_spatial, f"randomised twin (rho={r.sanity_similarity:.2f})"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8))
    for ax, (image, title) in zip(np.atleast_1d(axes), panels, strict=True):
        _signed(ax, image, title, colorbar=True)
    cy, cx = r.effective_rf.centre
    if np.isfinite(cy):
        for ax in np.atleast_1d(axes)[:2]:
            ax.add_patch(plt.Circle((cx, cy), r.effective_rf.sigma, fill=False, color="k", lw=1))
    fig.tight_layout()
    return _png(fig)


def temporal_figure(r: CellAttribution) -> bytes:
    lags = np.arange(len(r.temporal)) / r.frame_rate * 1000.0
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    ax.axhline(0, color="grey", lw=0.6)
    ax.plot(lags, r.temporal, marker="o", ms=3, color="tab:purple")
    ax.set_xlabel("lag before the response (ms)")
    ax.set_ylabel("attribution")
    ax.set_title("temporal profile around the map's peak", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def clips_figure(r: CellAttribution, n_clips: int = 3, n_frames: int = 5) -> bytes:
    """Example clips: frames (grey) with the attribution overlaid (red/blue), last frames on the right."""
    k = min(n_clips, len(r.clips))
    length = r.frames.shape[1]
    picks = np.linspace(max(0, length - 2 * n_frames), length - 1, n_frames).round().astype(int)
    fig, axes = plt.subplots(k, n_frames, figsize=(1.6 * n_frames, 1.7 * k), squeeze=False)
    limit = float(np.abs(r.attributions[:k]).max()) or 1.0
    for row in range(k):
        for col, t in enumerate(picks):
            ax = axes[row, col]
            ax.imshow(r.frames[row, t], cmap="gray", vmin=0, vmax=255)
            a = r.attributions[row, t]
            ax.imshow(a, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=np.clip(np.abs(a) / limit * 2, 0, 0.85))
            ax.set_xticks([])
            ax.set_yticks([])
            lag = (length - 1 - t) / r.frame_rate * 1000
            if row == 0:
                ax.set_title(lag_label(lag), fontsize=8)
        clip = r.clips[row]
        axes[row, 0].set_ylabel(f"{clip.kind} @{clip.end}", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def responses_figure(r: CellAttribution, n_clips: int = 3) -> bytes:
    k = min(n_clips, len(r.clips))
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 2.4), squeeze=False, sharey=True)
    t = (np.arange(r.predicted.shape[1]) - r.predicted.shape[1] + 1) / r.frame_rate * 1000
    for j in range(k):
        ax = axes[0, j]
        ax.plot(t, r.recorded[j], color="k", lw=1, label="recorded (trial mean)")
        ax.plot(t, r.predicted[j], color="tab:red", lw=1, label="twin")
        ax.set_title(f"{r.clips[j].kind} clip @{r.clips[j].end}", fontsize=9)
        ax.set_xlabel("time to clip end (ms)")
    axes[0, 0].set_ylabel("spikes / bin")
    axes[0, 0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return _png(fig)


def mosaic_figure(results: list[CellAttribution], columns: int = 10) -> bytes:
    """All cells' spatial maps, each on its own symmetric colour scale."""
    rows = -(-len(results) // columns)
    cols = min(columns, len(results))
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), results, strict=False):
        _signed(ax, r.spatial, f"{r.cell_id}")
        ax.axis("on")
    fig.tight_layout()
    return _png(fig)

"""Rich tables for `insilico inspect`."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from insilico.console import console
from stimuli.cell_ids import id_ranges
from stimuli.recording.summary import RecordingSummary


def print_summary(s: RecordingSummary, *, verified: bool = False) -> None:
    """Print the summary; `verified`: every chunk was read and every value checked (`--deep`)."""
    head = Table(title=s.path, show_header=False)
    head.add_row("frames", f"{s.n_frames} ({s.duration_s:.1f} s at {s.frame_rate:g} Hz)")
    px = f", {s.pixel_size_um:g} um/px" if s.pixel_size_um else ""
    head.add_row("screen", f"{s.height} x {s.width} px{px}")
    if s.n_cells:
        rates = np.array(s.cell_mean_rate_hz)
        head.add_row("cells", f"{s.n_cells} (receptive fields: {'yes' if s.has_rf else 'no'})")
        head.add_row("cell ids", id_ranges(s.cell_ids))
        head.add_row("repeats", str(s.n_repeats))
        head.add_row("mean rate", f"{np.nanmean(rates):.2f} Hz (cells {np.nanmin(rates):.2f} .. {np.nanmax(rates):.2f})")
        if s.cell_types:
            head.add_row("cell types", ", ".join(f"{k}: {v}" for k, v in sorted(s.cell_types.items())))
    else:
        head.add_row("cells", "none (stimulus-only file)")
    head.add_row("checked", "every chunk read, every value checked" if verified
                 else "metadata and stored chunks (--deep reads every value)")
    console.print(head)
    seg = Table(title="segments", caption="rate: mean over cells and repeats; reliability: split-half, "
                "Spearman-Brown corrected, mean over cells")
    # Names are what users type back (--train, --test): never cut them, let numbers wrap instead.
    seg.add_column("name", no_wrap=True, min_width=max([4, *(len(g.name) for g in s.segments)]))
    for col in ("frames", "seconds", "repeats", "rate (Hz)", "reliability"):
        seg.add_column(col, overflow="fold")
    for g in s.segments:
        seg.add_row(
            g.name, f"[{g.start}, {g.stop})", f"{(g.stop - g.start) / s.frame_rate:.1f}", str(g.repeats),
            "-" if g.mean_rate_hz is None else f"{g.mean_rate_hz:.2f}",
            "-" if g.split_half_reliability is None else f"{g.split_half_reliability:.3f}",
        )
    console.print(seg)

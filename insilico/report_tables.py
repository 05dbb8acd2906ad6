"""Rich tables of evaluation results."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from insilico.console import console
from vist_model.evaluate import TwinEvaluation


def print_evaluation(result: TwinEvaluation) -> None:
    m = result.metrics
    t = Table(title=f"{result.kind} on {result.segment} ({m.n_cells} cells, {m.n_repeats} repeats)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("CC (mean over cells)", f"{m.mean_cc:.3f}")
    t.add_row("FEVE (mean)", f"{m.mean_feve:.3f}")
    t.add_row("noise ceiling (mean)", f"{m.mean_noise_ceiling:.3f}")
    t.add_row("SD-KL (mean)", f"{m.mean_sd_kl:.3f}")
    t.add_row("paper: mean |CC|", f"{m.mean_abs_cc:.3f}")
    t.add_row("paper: mean CC over CC > 0", f"{m.mean_positive_cc:.3f} ({m.n_positive_cc} cells)")
    best = int(np.nanargmax(m.cc))
    t.add_row("best cell", f"id {result.cell_ids[best]} (CC {m.cc[best]:.3f})")
    console.print(t)

"""Rich tables of evaluation results."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from insilico.console import console
from vist_model.evaluate import TwinEvaluation


def print_evaluation(result: TwinEvaluation) -> None:
    m = result.metrics
    t = Table(title=f"{result.kind} on {result.segment} ({m.n_cells} cells, {m.n_repeats} repeat{'' if m.n_repeats == 1 else 's'})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("CC (mean over cells)", _value(m.mean_cc))
    few = " (needs >= 2 repeats)" if m.n_repeats < 2 else ""
    t.add_row("FEVE (mean)", _value(m.mean_feve) + few)
    t.add_row("noise ceiling (mean)", _value(m.mean_noise_ceiling) + few)
    t.add_row("SD-KL (mean)", _value(m.mean_sd_kl))
    t.add_row("paper: mean |CC|", _value(m.mean_abs_cc))
    t.add_row("paper: mean CC over CC > 0", f"{_value(m.mean_positive_cc)} ({m.n_positive_cc} cells)")
    if np.isfinite(m.cc).any():
        best = int(np.nanargmax(m.cc))
        t.add_row("best cell", f"id {result.cell_ids[best]} (CC {m.cc[best]:.3f})")
    console.print(t)


def _value(x: float) -> str:
    return f"{x:.3f}" if np.isfinite(x) else "n/a"

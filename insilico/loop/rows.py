"""Figures of a closed-loop round from its design items, plan and responses (pure; no torch).

Shared by the orchestrator (`closed_loop`), the report and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from insilico.loop.records import ROLES, DesignItem, PlanEntry

__all__ = ["ROLES", "by_objective", "by_role", "design_error", "margin", "response_rows", "yardstick"]


def response_rows(items: Sequence[DesignItem], plan: Sequence[PlanEntry], predicted: dict[int, np.ndarray],
                  measured: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    """Per (target cell, objective, role): predicted and measured rates over the window.

    `predicted` holds rates `[T, N]` per plan index, `measured` spike counts `[R, T, N]` (NaN
    for repeats not shown) of the clips shown so far. Each row has the target's window mean
    (`predicted`, `measured`, and `measured_sem` over repeats) and its `*_margin`: the target's
    window mean minus that of the strongest other cell, which is what a discriminative design
    is for (> 0: the target leads the population).
    """
    rows = []
    for e in plan:
        for i, role in e.uses:
            item = items[i]
            a, b = item.window
            ci = item.cell_index
            pred = predicted[e.index][a:b].mean(axis=0)
            row = {
                "item": i, "plan_index": e.index, "cell": item.cell, "objective": item.objective, "role": role,
                "window": [a, b], "file": e.file, "predicted": float(pred[ci]),
                "predicted_margin": margin(pred, ci), "measured": None, "measured_sem": None, "measured_margin": None,
            }
            counts = measured.get(e.index)
            if counts is not None:
                per_repeat = counts[:, a:b].mean(axis=1)  # [R, N]
                shown = per_repeat[~np.isnan(per_repeat[:, ci])]
                if not len(shown):
                    rows.append(row)
                    continue
                mean = shown.mean(axis=0)
                row.update(measured=float(mean[ci]), measured_margin=margin(mean, ci),
                           measured_sem=float(shown[:, ci].std(ddof=1) / np.sqrt(len(shown))) if len(shown) > 1
                           else None)
            rows.append(row)
    rows.sort(key=lambda r: (r["item"], ROLES.index(r["role"])))
    return rows


def margin(rates: np.ndarray, cell_index: int) -> float:
    """`rates[cell] - max(rates of the other cells)` for window-mean rates `[N]`."""
    others = np.delete(np.asarray(rates, dtype=np.float64), cell_index)
    return float(rates[cell_index] - others.max()) if others.size else float(rates[cell_index])


def yardstick(row: dict[str, Any], what: str) -> float | None:
    """What the row's objective asks of the target: its rate, or its margin when discriminative."""
    return row[f"{what}_margin"] if row["objective"] == "discriminative" else row[what]


def design_error(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The twin's error predicting the measured response to its own designs (window means).

    `mae`: mean |predicted - measured| (spikes / bin); `relative`: that over the mean measured.
    """
    pairs = [(r["predicted"], r["measured"]) for r in rows if r["role"] == "design" and r["measured"] is not None]
    if not pairs:
        return {"mae": float("nan"), "relative": float("nan"), "n": 0}
    p, m = np.array(pairs).T
    mae = float(np.abs(p - m).mean())
    return {"mae": mae, "relative": mae / max(float(m.mean()), 1e-9), "n": len(pairs)}


def by_objective(rows: list[dict[str, Any]], what: str) -> dict[str, dict[str, float]]:
    """Per objective and role, the mean over targets of its `yardstick` ("predicted" or "measured")."""
    out: dict[str, dict[str, float]] = {}
    for objective in dict.fromkeys(r["objective"] for r in rows):
        values = {role: [yardstick(r, what) for r in rows if r["objective"] == objective and r["role"] == role]
                  for role in ROLES}
        out[objective] = {role: float(np.mean(v)) for role, v in values.items() if v and None not in v}
    return out


def by_role(rows: list[dict[str, Any]], what: str) -> dict[str, float]:
    """Mean over targets of the window-mean response, per role (design vs controls)."""
    out = {}
    for role in ROLES:
        values = [r[what] for r in rows if r["role"] == role and r[what] is not None]
        if values:
            out[role] = float(np.mean(values))
    return out

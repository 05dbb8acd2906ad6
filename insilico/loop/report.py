"""`OUT/report.html`: one self-contained page (PNGs inlined) about a closed-loop run.

Top: per round, the twin's error predicting the measured response to its own designs, the
measured response of the targets to designs and controls, and the held-out accuracy. Then per
round: predicted against measured response traces of each target to each design, and measured
design responses next to the controls, cell by cell.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from insilico.loop.records import ROLES  # noqa: E402
from stimuli.files import write_atomic  # noqa: E402

ROLE_COLORS = {"design": "#d62728", "natural": "#1f77b4", "parametric": "#2ca02c"}


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def load_rounds(out: Path) -> list[dict[str, Any]]:
    """Round summaries of a run folder, in round order."""
    rounds = []
    for d in sorted(out.glob("round_*"), key=lambda p: int(p.name.split("_")[1])):
        path = d / "summary.json"
        if path.is_file():
            summary = json.loads(path.read_text())
            # Runs summarised before objectives had their own yardsticks: the target's rate.
            summary.setdefault("measured_by_objective", {"all objectives": summary["measured_by_role"]})
            traces = d / "traces.npz"
            if traces.is_file():
                with np.load(traces) as z:
                    summary["traces"] = {k: z[k] for k in z.files}
            rounds.append(summary)
    return rounds


YARDSTICKS = {"increase": "target's rate (spikes/bin)", "decrease": "target's rate (spikes/bin; lower is the goal)",
              "discriminative": "target minus strongest other cell (spikes/bin)"}


def objectives_of(rounds: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(o for r in rounds for o in r.get("measured_by_objective", {})))


def overview_figure(rounds: list[dict[str, Any]], baseline_cc: float | None) -> str:
    ks = [r["round"] for r in rounds]
    objectives = objectives_of(rounds)
    fig, axes = plt.subplots(1, 2 + len(objectives), figsize=(4 * (2 + len(objectives)), 3.2))
    axes[0].plot(ks, [r["design_error"]["mae"] for r in rounds], "o-", color="k", label="absolute")
    axes[0].set_title("twin's error on its own designs")
    axes[0].set_ylabel("|predicted − measured| (spikes/bin)")
    # From zero: autoscaled, a change of 0.01 in 6 filled the panel and read as a steep fall.
    axes[0].set_ylim(bottom=0, top=1.15 * max([r["design_error"]["mae"] for r in rounds] + [1e-9]))
    # The designs drive the cells harder each round, so the error relative to the measured
    # response is the figure that compares rounds.
    rel = axes[0].twinx()
    rel.plot(ks, [r["design_error"]["relative"] for r in rounds], "s--", color="tab:red", label="relative")
    rel.set_ylabel("relative to measured", color="tab:red")
    rel.set_ylim(bottom=0, top=1.15 * max([r["design_error"]["relative"] for r in rounds] + [1e-9]))
    # Lower right: both lines sit high, errors drawn from zero.
    axes[0].legend(handles=axes[0].get_lines() + rel.get_lines(), fontsize=8, loc="lower right")
    # Each objective by what it asks: an increase design by the target's rate, a
    # discriminative one by how far the target leads the other cells.
    for ax, objective in zip(axes[1:], objectives, strict=False):
        for role, color in ROLE_COLORS.items():
            values = [r["measured_by_objective"].get(objective, {}).get(role) for r in rounds]
            if any(v is not None for v in values):
                ax.plot(ks, [np.nan if v is None else v for v in values], "o-", color=color, label=role)
        if objective == "discriminative":
            ax.axhline(0, color="grey", lw=0.8)
        else:
            ax.set_ylim(bottom=0)  # rates: differences read against zero, not against each other
        ax.set_title(f"measured: {objective}")
        ax.set_ylabel(YARDSTICKS.get(objective, "spikes/bin"), fontsize=8)
        ax.legend(fontsize=8)
    cc = [r["heldout"]["cc_mean"] for r in rounds]
    axes[-1].plot(ks, cc, "o-", color="purple", label="after fine-tuning")
    if baseline_cc is not None:
        axes[-1].axhline(baseline_cc, color="grey", ls="--", label="starting twin")
    axes[-1].set_title("held-out accuracy")
    axes[-1].set_ylabel("mean CC")
    axes[-1].set_ylim(min(0.0, *(c - 0.05 for c in cc if np.isfinite(c))), 1.0)
    axes[-1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(ks)
    fig.tight_layout()
    return _png(fig)


def traces_figure(summary: dict[str, Any], frame_rate: float | None = None) -> str | None:
    """Predicted against measured response of each target to each of its designs."""
    rows = [(n, r) for n, r in enumerate(summary["rows"]) if r["role"] == "design"]
    traces = summary.get("traces", {})
    if not rows or not traces:
        return None
    cols = min(4, len(rows))
    nrows = int(np.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, (n, r) in zip(axes.flat, rows, strict=False):
        pred, meas = traces[f"pred_{n}"], traces[f"meas_{n}"]
        t = np.arange(len(pred))
        ax.plot(t, meas, color="k", lw=1, label="measured (trial mean)")
        ax.plot(t, pred, color=ROLE_COLORS["design"], lw=1.2, label="predicted")
        a, b = r["window"]
        ax.axvspan(a - 0.5, b - 0.5, color="gold", alpha=0.3, lw=0)
        ax.set_title(f"cell {r['cell']} · {r['objective']}", fontsize=9)
        ax.set_xlabel("frame")
    axes.flat[0].set_ylabel("spikes / bin")
    # Above the panels: inside the first one, the legend hid the traces it names.
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig)


def controls_figure(summary: dict[str, Any]) -> str | None:
    """Measured (solid) and predicted (hatched) window response: design vs controls, per target."""
    items = sorted({(r["cell"], r["objective"]) for r in summary["rows"]})
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(items)), 3.2))
    width = 0.13
    for j, (role, color) in enumerate(ROLE_COLORS.items()):
        for n, key in enumerate(items):
            match = [r for r in summary["rows"] if (r["cell"], r["objective"]) == key and r["role"] == role]
            if not match:
                continue
            x = n + (j - 1) * 2 * width
            ax.bar(x - width / 2, match[0]["measured"] or 0.0, width, color=color,
                   label=f"{role} measured" if n == 0 else None)
            ax.bar(x + width / 2, match[0]["predicted"], width, color="white", edgecolor=color, hatch="//",
                   label=f"{role} predicted" if n == 0 else None)
    ax.set_xticks(range(len(items)), [f"cell {c}\n{o}" for c, o in items], fontsize=8)
    ax.set_ylabel("mean rate over window (spikes/bin)")
    # Below the axes: inside, the legend covered the tallest bar.
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    fig.tight_layout()
    return _png(fig)


def _table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def render_report(out: Path, description: str | None = None) -> str:
    """The page; `description` (the protocol's) is shown under the title."""
    rounds = load_rounds(out)
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    baseline = state.get("steps", {}).get("0", {}).get("baseline")
    baseline_cc = baseline["cc_mean"] if baseline else None
    parts = [f"<h1>Closed loop: {html.escape(str(out))}</h1>"]
    if description:
        parts.append(f"<p class='about'>{html.escape(description)}</p>")
    if not rounds:
        parts.append("<p>No round has finished yet.</p>")
    else:
        parts.append("<h2>Over rounds</h2>")
        objectives = objectives_of(rounds)
        parts.append(_table(
            ["round", "twin error on its designs (spikes/bin)", "relative error"]
            + [f"{o}: {role}" for o in objectives for role in ROLES] + ["held-out CC", "held-out FEVE"],
            [[str(r["round"]), _num(r["design_error"]["mae"]), _num(r["design_error"]["relative"], 2)]
             + [_num(r["measured_by_objective"].get(o, {}).get(role)) for o in objectives for role in ROLES]
             + [_num(r["heldout"]["cc_mean"]), _num(r["heldout"]["feve_mean"])] for r in rounds]))
        parts.append("<p>Measured, mean over the targets: " + "; ".join(
            f"<b>{html.escape(o)}</b> by the {html.escape(YARDSTICKS.get(o, 'rate'))}" for o in objectives)
            + ", over each design's objective window.</p>")
        if baseline_cc is not None:
            parts.append(f"<p>Starting twin: held-out CC {_num(baseline_cc)} on {html.escape(baseline['segment'])}.</p>")
        parts.append(_img(overview_figure(rounds, baseline_cc), "over rounds"))
        parts.append("<p>The error is measured before the twin is fine-tuned on the round's spikes: round k's designs "
                     "are predicted by the twin fine-tuned on rounds before k.</p>")
    for r in rounds:
        parts.append(f"<h2>Round {r['round']}</h2>")
        parts.append(f"<p>Designed with {html.escape(r['model'])}; spikes in {html.escape(r['session'])}; "
                     f"fine-tuned twin {html.escape(r['finetuned_model'])} ({html.escape(r['finetune']['mode'])}, "
                     f"{r['finetune']['epochs_run']} epochs). Held-out CC {_num(r['heldout']['cc_mean'])}.</p>")
        figure = traces_figure(r)
        if figure:
            parts.append("<h3>Predicted against measured response to each design</h3>" + _img(figure, "traces"))
        figure = controls_figure(r)
        if figure:
            parts.append("<h3>Designs against controls (same contrast budget)</h3>" + _img(figure, "controls"))
        parts.append(_table(["cell", "objective", "stimulus", "predicted", "measured", "± s.e.m. (repeats)",
                             "predicted margin", "measured margin", "file"],
                            [[str(x["cell"]), x["objective"], x["role"], _num(x["predicted"]), _num(x["measured"]),
                              _num(x.get("measured_sem")), _num(x.get("predicted_margin")),
                              _num(x.get("measured_margin")), html.escape(x["file"])] for x in r["rows"]]))
        parts.append("<p>Margin: the target's window rate minus the strongest other cell's.</p>")
        accuracy = r.get("target_accuracy") or {}
        if accuracy:
            parts.append("<h3>How well the twin that designed them knows each target</h3>")
            parts.append(_table(["cell", "held-out CC", "noise ceiling", "CC / ceiling", "twin knows the cell"],
                                [[c, _num(a["held_out_cc"]) if a else "not measured",
                                  _num(a["noise_ceiling"]) if a else "", _num(a["fraction_of_ceiling"], 2) if a else "",
                                  ("yes" if a["twin_knows_cell"] else "<b>no</b>: its predictions for this cell are "
                                   "not to be trusted") if a else ""]
                                 for c, a in accuracy.items()]))
        parts.append(_table(["stage", "seconds"], [[k, _num(v, 1)] for k, v in r["seconds"].items()]))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:right}img{max-width:100%}"
             ".about{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>insilico closed loop</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(out: str | Path, description: str | None = None) -> Path:
    """Write `OUT/report.html` atomically; returns its path."""
    out = Path(out)
    return write_atomic(out / "report.html", render_report(out, description))

"""Self-contained HTML pages (figures inlined as base64 PNG): one per cell and an index."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from insilico.attribution import figures
from insilico.attribution.result import CellAttribution
from stimuli.files import write_atomic

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.85em; }
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _num(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def _write(text: str, path: Path) -> Path:
    return write_atomic(path, text)


def numbers(r: CellAttribution) -> list[tuple[str, str]]:
    cy, cx = r.effective_rf.centre
    rows = [
        ("method", r.method),
        ("backbone", r.backbone),
        (f"twin CC on {r.test_segment}", _num(r.cc)),
        ("twin's held-out accuracy on this cell", r.held_out.describe() if r.held_out else "not measured"),
        ("map vs the readout mask the twin started from (|r|)", _num(r.start_mask_correlation)),
        *(("warning", note) for note in r.trust_notes()),
        ("map vs recorded RF (Pearson r)", _num(r.rf_correlation)),
        ("map vs true spatial filter (Pearson r)", _num(r.truth_correlation)),
        ("effective RF centre (row, col, px)", f"{_num(cy, 1)}, {_num(cx, 1)}"),
        ("effective RF size (sigma, px)", _num(r.effective_rf.sigma, 1)),
        ("completeness gap |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)|", _num(r.completeness_gap, 4)),
        ("sanity check: Spearman of |map|, trained vs randomised twin", _num(r.sanity_similarity)),
        ("clips (top, random)", f"{sum(c.kind == 'top' for c in r.clips)}, {sum(c.kind == 'random' for c in r.clips)}"),
    ]
    if r.is_linear is not None:
        rows.append(("simulated cell", "linear" if r.is_linear else "nonlinear"))
    return rows


def cell_page(r: CellAttribution) -> str:
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in numbers(r))
    body = f"""
<h1>Cell {r.cell_id}: what its twin responds to</h1>
<p class="note">Attributions of the twin's predicted response over each clip's last frames to every pixel
and frame of the clip ({r.attributions.shape[1]} frames; earlier frames held at the movie).
Integrated gradients use a uniform mean-grey baseline. Their sign (and occlusion's) says whether the
stimulus there raised the response: an OFF cell driven by a dark spot gets a positive map, and a
negative correlation with its (negative) receptive field. Saliency is the gradient itself and keeps the
cell's polarity. Compare the size of r, not its sign.</p>
<table>{table}</table>
<h2>Spatial map and receptive field</h2>
{_img(figures.maps_figure(r), "spatial map beside the recorded receptive field")}
<h2>Temporal profile</h2>
{_img(figures.temporal_figure(r), "temporal profile")}
<h2>Example clips with attribution overlays</h2>
{_img(figures.clips_figure(r), "example clips with attribution overlays")}
<h2>Predicted and recorded response on those clips</h2>
{_img(figures.responses_figure(r), "predicted against recorded response")}
"""
    return _page(f"cell {r.cell_id} attribution", body)


def write_cell_page(r: CellAttribution, path: str | Path) -> Path:
    return _write(cell_page(r), Path(path))


def index_page(results: list[CellAttribution]) -> str:
    header = ("<tr><th>cell</th><th>twin CC</th><th>map-RF r</th><th>map-truth r</th>"
              "<th>RF centre (row, col)</th><th>RF sigma</th><th>completeness gap</th><th>sanity rho</th></tr>")
    rows = []
    for r in results:
        cy, cx = r.effective_rf.centre
        rows.append(
            f"<tr><td><a href='cell{r.cell_id}.html'>cell {r.cell_id}</a></td><td>{_num(r.cc)}</td>"
            f"<td>{_num(r.rf_correlation)}</td><td>{_num(r.truth_correlation)}</td>"
            f"<td>{_num(cy, 1)}, {_num(cx, 1)}</td><td>{_num(r.effective_rf.sigma, 1)}</td>"
            f"<td>{_num(r.completeness_gap, 4)}</td><td>{_num(r.sanity_similarity)}</td></tr>")
    method = results[0].method if results else ""
    body = f"""
<h1>Attribution reports: {len(results)} cells ({html.escape(method)})</h1>
<p class="note">backbone: {html.escape(results[0].backbone if results else "")}</p>
<h2>Spatial maps</h2>
{_img(figures.mosaic_figure(results), "mosaic of all spatial maps")}
<h2>Cells</h2>
<table>{header}{''.join(rows)}</table>
"""
    return _page("attribution reports", body)


def write_index(results: list[CellAttribution], path: str | Path) -> Path:
    return _write(index_page(results), Path(path))

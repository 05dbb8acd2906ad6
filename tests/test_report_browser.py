"""The closed-loop report as a reader sees it: rendered by headless Chromium (Debian's `chromium`).

A page whose inlined figures fail to decode, or that lays them out off-screen, still passes any
check of its HTML; a screenshot does not. The run folder is made here (two rounds of summaries
and traces), so the test needs no closed loop, only a browser; it is skipped where there is none.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from insilico.loop.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _run_folder(out: Path) -> None:
    """Two rounds of a closed loop on cells 42 and 7, increase and discriminative designs."""
    rng = np.random.default_rng(0)
    keys = [(c, o, r) for c in (42, 7) for o in ("increase", "discriminative") for r in ("design", "natural", "parametric")]
    for k in (1, 2):
        d = out / f"round_{k}"
        d.mkdir(parents=True)
        rows, traces = [], {}
        for n, (cell, objective, role) in enumerate(keys):
            rows.append({"cell": cell, "objective": objective, "role": role, "predicted": float(rng.uniform(1, 8)),
                         "measured": float(rng.uniform(1, 8)), "measured_sem": 0.2, "predicted_margin": 0.5,
                         "measured_margin": 0.4, "file": f"round_{k}/{role}.h5", "window": [42, 45]})
            traces[f"pred_{n}"], traces[f"meas_{n}"] = rng.uniform(0, 6, 45), rng.uniform(0, 6, 45)
        summary = {
            "round": k, "design_error": {"mae": 6.07 - 0.005 * k, "relative": 0.9 - 0.1 * k},
            "measured_by_role": {"design": 7.0, "natural": 4.5, "parametric": 3.0},
            "measured_by_objective": {"increase": {"design": 7.6 + k, "natural": 4.5, "parametric": 3.0},
                                      "discriminative": {"design": k - 0.2, "natural": 0.1, "parametric": 0.3}},
            "heldout": {"cc_mean": 0.63 + 0.01 * k, "feve_mean": 0.4}, "model": "twin", "session": "session.h5",
            "finetuned_model": "twin_k", "finetune": {"mode": "readout", "epochs_run": 2}, "rows": rows,
            "seconds": {"design": 100.0, "present": 7.0},
        }
        (d / "summary.json").write_text(json.dumps(summary))
        np.savez(d / "traces.npz", **traces)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_the_report_renders_with_every_figure_in_a_browser(tmp_path: Path) -> None:
    _run_folder(tmp_path)
    page = write_report(tmp_path, "insilico demo: reduced settings for 2 CPU cores")
    html = page.read_text()
    assert "reduced settings" in html and html.count("<img ") == 5  # overview, 2 x (traces, controls)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,4200", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = iio.imread(shot)[..., :3].astype(int)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    # The design colour (#d62728) and the natural clip's (#1f77b4) appear only inside figures:
    # decoded and laid out on the page, every figure adds its share of them, in each band of rows.
    red = (abs(r - 0xD6) < 30) & (abs(g - 0x27) < 30) & (abs(b - 0x28) < 30)
    blue = (abs(r - 0x1F) < 30) & (abs(g - 0x77) < 30) & (abs(b - 0xB4) < 30)
    rows_with_red = np.flatnonzero(red.sum(axis=1) > 3)
    assert red.sum() > 5000 and blue.sum() > 2000, (red.sum(), blue.sum())
    assert rows_with_red.max() - rows_with_red.min() > 2000  # figures of both rounds, not the first alone

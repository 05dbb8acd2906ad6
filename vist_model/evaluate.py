"""Evaluate a twin on a held-out segment: what `insilico evaluate` calls."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stimuli.errors import InputError
from stimuli.files import write_atomic, write_json
from stimuli.recording import open_recording
from vist_model.data import RecordingFrames
from vist_model.features import FeatureCache
from vist_model.metrics import EvaluationResult, evaluate
from vist_model.plots import plot_traces
from vist_model.twin import Twin


@dataclass(frozen=True, eq=False)
class TwinEvaluation:
    metrics: EvaluationResult
    cell_ids: np.ndarray  # [N]
    prediction: np.ndarray  # [T, N]
    trial_mean: np.ndarray  # [T, N]
    kind: str
    backbone: str
    data: str
    segment: str

    def to_json_dict(self) -> dict[str, Any]:
        m = self.metrics.to_json_dict()
        per_cell = [
            {"id": int(cid), "cc": m["cc"][i], "feve": m["feve"][i], "sd_kl": m["sd_kl"][i],
             "noise_ceiling": m["noise_ceiling"][i]}
            for i, cid in enumerate(self.cell_ids)
        ]
        return {
            "model": self.kind, "backbone": self.backbone, "data": self.data, "segment": self.segment,
            "cc_mean": m["mean_cc"], "feve_mean": m["mean_feve"],
            "noise_ceiling_mean": m["mean_noise_ceiling"], "sd_kl_mean": m["mean_sd_kl"],
            "paper_mean_abs_cc": m["mean_abs_cc"],
            "paper_mean_cc_over_positive": m["mean_positive_cc"], "n_positive_cc": m["n_positive_cc"],
            "n_cells": m["n_cells"], "n_frames": m["n_frames"], "n_repeats": m["n_repeats"],
            "per_cell": per_cell,
        }


def evaluate_twin(
    twin: Twin, data: str | Path, segment: str, *, cache: FeatureCache | None = None,
    traces_png: str | Path | None = None,
) -> TwinEvaluation:
    """Predict a segment's responses and score them against every recorded repeat."""
    with open_recording(data) as rec:
        ids = tuple(int(i) for i in rec.cell_ids)
        if ids != twin.metadata.cell_ids:
            raise InputError(f"{data}: its {len(ids)} cells are not the {twin.metadata.n_cells} cells the twin was trained on")
        seg = rec.segment(segment)
        # The movie is read per batch for features and per piece for prediction; the counts of
        # every repeat are what the metrics need, and a repeated test segment is short.
        counts = rec.counts(segment)
    counts = counts[~np.isnan(counts).all(axis=(1, 2))]
    frames = RecordingFrames(data, seg.start, seg.stop)
    try:
        prediction = twin.predict(frames, cache)
    finally:
        frames.close()
    metrics = evaluate(prediction, counts)
    result = TwinEvaluation(
        metrics=metrics, cell_ids=np.array(ids), prediction=prediction, trial_mean=counts.mean(axis=0),
        kind=twin.metadata.kind, backbone=twin.metadata.describe_backbone(), data=str(data), segment=segment,
    )
    if traces_png is not None:
        order = np.argsort(np.nan_to_num(metrics.cc, nan=-2.0))
        picks = [("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])]
        plot_traces(result.trial_mean, prediction,
                    [(label, int(i), ids[i], float(metrics.cc[i])) for label, i in picks],
                    twin.metadata.frame_rate, Path(traces_png))
    return result


def write_evaluation(result: TwinEvaluation, json_path: str | Path | None = None,
                     csv_path: str | Path | None = None) -> None:
    """Write the summary JSON and the per-cell CSV (each atomically)."""
    summary = result.to_json_dict()
    if json_path is not None:
        write_json(json_path, summary)
    if csv_path is not None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["id", "cc", "feve", "sd_kl", "noise_ceiling"])
        writer.writeheader()
        writer.writerows(summary["per_cell"])
        write_atomic(csv_path, buf.getvalue())

"""A cell's attribution report as HDF5: `/spatial [H, W]`, `/temporal [L]`, `/attributions
[clips, L, H, W]` and what they were computed from. Written atomically (`stimuli.files`)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from insilico.attribution.result import CellAttribution
from stimuli.files import atomic_path

FORMAT = "insilico-attribution-v1"


def write_cell_file(result: CellAttribution, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({
            "format": FORMAT, "cell_id": result.cell_id, "method": result.method,
            "backbone": result.backbone, "test_segment": result.test_segment,
            "frame_rate": result.frame_rate, "cc": result.cc,
            "rf_correlation": result.rf_correlation, "truth_correlation": result.truth_correlation,
            "completeness_gap": result.completeness_gap, "sanity_similarity": result.sanity_similarity,
            "effective_rf_centre": np.asarray(result.effective_rf.centre), "effective_rf_sigma": result.effective_rf.sigma,
            "is_linear": -1 if result.is_linear is None else int(result.is_linear),
            "start_mask_correlation": result.start_mask_correlation,
            "held_out_cc": result.held_out.cc if result.held_out else float("nan"),
            "held_out_noise_ceiling": (result.held_out.noise_ceiling if result.held_out and
                                       result.held_out.noise_ceiling is not None else float("nan")),
        })
        spatial = f.create_dataset("spatial", data=result.spatial)
        spatial.attrs["description"] = ("spatial part of the best space-time separable fit of the clip-mean "
                                        "attributions, averaged over the twin's input patches [H, W]")
        temporal = f.create_dataset("temporal", data=result.temporal)
        temporal.attrs["description"] = "attributions summed over a disc around the map's peak [L], lag 0 first"
        attributions = f.create_dataset("attributions", data=result.attributions, compression="gzip")
        attributions.attrs["description"] = "per-clip attributions [clips, L, H, W], frames in time order"
        f.create_dataset("frames", data=result.frames, compression="gzip")
        clips = f.create_group("clips")
        clips.create_dataset("end", data=np.array([c.end for c in result.clips], dtype=np.int64))
        clips.create_dataset("kind", data=json.dumps([c.kind for c in result.clips]))
        clips.create_dataset("response", data=result.response)
        clips.create_dataset("baseline_response", data=result.baseline_response)
        clips.create_dataset("gap", data=result.gap)
        clips.create_dataset("predicted", data=result.predicted)
        clips.create_dataset("recorded", data=result.recorded)
        f.create_dataset("recorded_rf", data=result.recorded_rf)
        if result.true_filter is not None:
            f.create_dataset("true_filter", data=result.true_filter)
        if result.random_spatial is not None:
            f.create_dataset("random_spatial", data=result.random_spatial)
    return path

"""One cell's attribution report, as computed (before it is written to files)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from insilico.attribution.clips import Clip
from insilico.attribution.summaries import EffectiveRF
from vist_model.accuracy import CellAccuracy

MASK_LOOKALIKE_R = 0.7
"""A map this close to the readout's starting mask says little about what the twin learned."""


@dataclass(frozen=True, eq=False)
class CellAttribution:
    """Everything a cell's report shows.

    Shapes: L = window frames, H x W the screen, K = clips.

    Attributes:
        cell_id, index: the cell's id and its column in the twin's output.
        method: `ig`, `saliency` or `occlusion` (`+nt` when NoiseTunnel smoothed it).
        clips: the K clips, top clips first.
        frames: `[K, L, H, W]` uint8, the clips' stimulus.
        attributions: `[K, L, H, W]` float32.
        spatial: `[H, W]` spatial part of the clip-mean attributions' separable fit
            (`summaries.spatial_map`).
        temporal: `[L]` profile around the map's peak, lag 0 first.
        effective_rf: attribution-weighted centre and size (pixels).
        recorded_rf: `[H, W]` the recording's `/cells/rf` (the twin's copy if the file has none).
        true_filter: `[H, W]` the simulator's spatial filter (simulated data only, else None).
        is_linear: whether the simulated cell is linear (None on real data).
        rf_correlation, truth_correlation: Pearson r of `spatial` with those maps (NaN if absent).
        cc: the twin's correlation with the trial-mean response on the whole test segment.
        response, baseline_response: `[K]` f(x) and f(baseline) of the attributed response.
        completeness_gap: sum_k |sum(attr_k) - (f(x_k) - f(b_k))| / sum_k |f(x_k) - f(b_k)|
            (IG only; NaN otherwise); `gap` `[K]` is each clip's sum(attr) - (f(x) - f(b)),
            which is Captum's convergence delta (computed here from the forward passes the
            report makes anyway, so Captum need not repeat them).
        predicted, recorded: `[K, L]` the twin's rate and the trial-mean counts on the clips.
        sanity_similarity: Spearman r of |spatial map| between the trained and a
            randomised-weights twin on the same clips (low = the map depends on the training).
        random_spatial: `[H, W]` the randomised twin's map.
        seconds: compute time attributed to this cell.
        held_out: the twin's held-out accuracy on this cell, as its checkpoint records it (None:
            not measured).
        start_mask_correlation: Pearson r of `spatial` with the readout mask the twin started
            from (a Gaussian at the recorded RF; NaN for twins without one). Near 1 for a cell the
            twin predicts poorly, the map shows the starting mask, not what the twin learned.
    """

    cell_id: int
    index: int
    method: str
    clips: tuple[Clip, ...]
    frames: np.ndarray
    attributions: np.ndarray
    spatial: np.ndarray
    temporal: np.ndarray
    effective_rf: EffectiveRF
    recorded_rf: np.ndarray
    true_filter: np.ndarray | None
    is_linear: bool | None
    rf_correlation: float
    truth_correlation: float
    cc: float
    response: np.ndarray
    baseline_response: np.ndarray
    completeness_gap: float
    gap: np.ndarray
    predicted: np.ndarray
    recorded: np.ndarray
    sanity_similarity: float
    random_spatial: np.ndarray | None
    frame_rate: float
    backbone: str
    test_segment: str
    seconds: float
    held_out: CellAccuracy | None = None
    start_mask_correlation: float = float("nan")

    def trust_notes(self) -> list[str]:
        """Sentences a reader needs before trusting this map (empty when none apply)."""
        notes = []
        if self.held_out is not None and self.held_out.warning():
            notes.append(self.held_out.warning())
        if self.start_mask_correlation >= MASK_LOOKALIKE_R and (self.held_out is None or not self.held_out.known):
            notes.append(f"the map matches the readout mask the twin started from (r = {self.start_mask_correlation:.2f}): "
                         "it shows where the recorded RF put the mask, not what the twin learned")
        return notes

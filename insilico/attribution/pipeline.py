"""`attribute_cells`: attribution reports for some or all cells of a twin (what the CLI calls)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from insilico.attribution.clips import Clip, random_clips, select_clips
from insilico.attribution.config import AttributionConfig
from insilico.attribution.methods import ClipAttribution, attribute_clip
from insilico.attribution.response import ClipResponse
from insilico.attribution.result import CellAttribution
from insilico.attribution.sanity import randomised_network
from insilico.attribution.summaries import (
    EffectiveRF,
    effective_rf,
    map_correlation,
    rank_similarity,
    spatial_map,
    temporal_profile,
    to_resolution,
)
from insilico.cells import parse_cells
from stimuli.errors import InsilicoError
from stimuli.recording import open_recording
from stimuli.recording.rf_geometry import rf_centre_and_size
from vist_model.fit_twin import resolve_device
from vist_model.metrics import pearson_per_cell
from vist_model.readout import START_MASK_SIGMA
from vist_model.streaming import frozen
from vist_model.twin import Twin
from vist_model.vist import MASKED_READOUTS, ViSTConfig


@dataclass(frozen=True, eq=False)
class TestMovie:
    """The test segment as the attribution needs it.

    Attributes:
        frames: `[T, H, W]` uint8.
        recorded: `[T, N]` trial-mean counts, columns in the twin's cell order.
        predicted: `[T, N]` the twin's rates.
        recorded_rf: `[N, H, W]` recorded receptive fields, twin's cell order.
        true_filters: `[N, H, W]` simulator spatial filters, or None on real data.
        linear: `[N]` bool, or None on real data.
    """

    frames: np.ndarray
    recorded: np.ndarray
    predicted: np.ndarray
    recorded_rf: np.ndarray
    true_filters: np.ndarray | None
    linear: np.ndarray | None

    @property
    def grey(self) -> float:
        """The movie's mean luminance in [0, 1]: the baseline's uniform grey."""
        return float(self.frames.mean()) / 255.0


def load_test_movie(twin: Twin, data_path: str | Path, segment: str) -> TestMovie:
    from rig_bridge.retina.recording import retina_of_recording

    meta = twin.metadata
    with open_recording(data_path) as rec:
        if not rec.has_responses:
            raise InsilicoError(f"{data_path}: a stimulus-only file has no responses to compare with")
        frames = rec.frames(segment)
        counts = rec.counts(segment)
        rec_ids = [int(i) for i in rec.cell_ids]
        missing = [i for i in meta.cell_ids if i not in set(rec_ids)]
        if missing:
            raise InsilicoError(f"{data_path}: the recording lacks the twin's cells {missing[:5]}")
        order = [rec_ids.index(i) for i in meta.cell_ids]
        rf = rec.rf
        attrs = rec.attrs
    recorded = np.nanmean(counts, axis=0)[:, order]
    recorded_rf = rf[order] if rf is not None else meta.rf
    true_filters = linear = None
    if "sim_seed" in attrs:
        retina = retina_of_recording(attrs)
        idx = [retina.index_of(i) for i in meta.cell_ids]
        true_filters = np.stack([retina.spatial_filter(i) for i in idx])
        linear = np.array([retina.is_linear(i) for i in idx])
    return TestMovie(frames, recorded, twin.predict(frames), recorded_rf, true_filters, linear)


def attribute_cells(
    model_path: str | Path,
    data_path: str | Path,
    cells: str | Sequence[int],
    out_dir: str | Path | None,
    method: str = "ig",
    n_clips: int = 6,
    device: str | None = "auto",
    test_segment: str = "mov2",
    config: AttributionConfig | None = None,
    progress: Progress | None = None,
) -> list[CellAttribution]:
    """Attribution reports of a twin's cells on a recording's test movie.

    Writes `out_dir/cell<ID>.h5` and `.html` for each cell and, for more than one cell,
    `out_dir/index.html` (nothing is written when `out_dir` is None). `config` overrides
    `method` and `n_clips` when given.
    """
    config = config or AttributionConfig(method=method, n_clips=n_clips)
    twin = Twin.load(model_path, device=resolve_device(device))
    ids = parse_cells(cells, twin.metadata.cell_ids)
    movie = load_test_movie(twin, data_path, test_segment)
    results = attribute_twin(twin, movie, ids, config, test_segment=test_segment, progress=progress)
    if out_dir is not None:
        write_reports(results, Path(out_dir))
    return results


def write_reports(results: Sequence[CellAttribution], out: Path) -> None:
    """`out/cell<ID>.h5` and `.html` per cell and, for more than one cell, `out/index.html`."""
    from insilico.attribution.html_report import write_cell_page, write_index
    from insilico.attribution.report_file import write_cell_file

    for r in results:
        write_cell_file(r, out / f"cell{r.cell_id}.h5")
        write_cell_page(r, out / f"cell{r.cell_id}.html")
    if len(results) > 1:
        write_index(results, out / "index.html")


def attribute_twin(twin: Twin, movie: TestMovie, cell_ids: Sequence[int], config: AttributionConfig,
                   test_segment: str = "mov2", progress: Progress | None = None) -> list[CellAttribution]:
    """Attributions, summaries and the sanity check for `cell_ids` (no files written)."""
    meta = twin.metadata
    index = {cid: meta.cell_index(cid) for cid in cell_ids}
    n_frames = len(movie.frames)
    if n_frames < config.window_frames:
        raise InsilicoError(f"the test segment has {n_frames} frames, fewer than one "
                            f"{config.window_frames}-frame clip")
    shared = random_clips(n_frames, config.window_frames, config.n_random, config.seed)
    clips = {cid: select_clips(movie.recorded[:, index[cid]], config.window_frames, config.response_frames,
                               config.n_clips - len(shared), shared) for cid in cell_ids}
    cc = pearson_per_cell(movie.predicted, movie.recorded)

    started = time.perf_counter()
    encoded = encode_movie(twin, movie.frames)
    attrs = _run(twin.network, twin, movie, clips, index, config, progress, "attribute", encoded)
    sanity: dict[tuple[int, int], ClipAttribution] = {}
    if config.sanity_clips:
        subset = {cid: c[:config.sanity_clips] for cid, c in clips.items()}
        random_net = randomised_network(twin, config.seed)
        sanity = _run(random_net, twin, movie, subset, index, config, progress, "sanity check", encoded)
    seconds = (time.perf_counter() - started) / max(1, len(cell_ids))

    method = config.method + ("+nt" if config.noise_tunnel else "")
    grid = input_grid(twin) if config.twin_resolution else None
    run = _Attributed(attrs, sanity, movie, cc, method, meta.describe_backbone(), meta.frame_rate, test_segment,
                      seconds, grid)
    results = [_summarize(run, cid, index[cid], clips[cid]) for cid in cell_ids]
    return [replace(r, held_out=meta.cell_accuracy(r.cell_id),
                    start_mask_correlation=abs(map_correlation(r.spatial, start_mask(twin, r.index))))
            for r in results]


def start_mask(twin: Twin, i: int) -> np.ndarray | None:
    """`[H, W]` the readout mask cell i's twin started from, in pixels (None: no such mask)."""
    meta = twin.metadata
    config = meta.network_config
    if not isinstance(config, ViSTConfig) or config.readout not in MASKED_READOUTS:
        return None
    h, w = meta.frame_shape
    (cy, cx), _ = rf_centre_and_size(meta.rf[i])
    sigma = START_MASK_SIGMA * h / config.grid
    rows, cols = np.mgrid[0:h, 0:w]
    return np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * sigma ** 2))


def input_grid(twin: Twin) -> int | None:
    """Side of the patch grid through which the twin sees the screen (None if per pixel)."""
    config = twin.metadata.network_config
    return config.grid if isinstance(config, ViSTConfig) else getattr(config, "resolution", None)


def _run(network: nn.Module, twin: Twin, movie: TestMovie, clips: dict[int, list[Clip]],
         index: dict[int, int], config: AttributionConfig, progress: Progress | None,
         label: str, encoded: torch.Tensor | None) -> dict[tuple[int, int], ClipAttribution]:
    """Attributions of every (cell, clip end) pair; clips shared by cells are run once for all.

    `encoded` is the backbone's `[T, c, g, g]` features of the whole test movie (None for a
    pixel-space twin): every clip's history is sliced from it instead of encoded again.
    """
    by_clip: dict[int, list[int]] = defaultdict(list)
    for cid, cell_clips in clips.items():
        for clip in cell_clips:
            by_clip[clip.end].append(cid)
    window = config.window_frames
    context = max(0, twin.receptive_field - 1)
    device = twin.device
    frames = torch.from_numpy(movie.frames).to(device=device, dtype=torch.float32).div_(255.0)
    source = encoded if encoded is not None else frames
    task = progress.add_task(label, total=len(by_clip), status="") if progress is not None else None
    out: dict[tuple[int, int], ClipAttribution] = {}
    stream = True
    with frozen(network):
        for n, (end, cids) in enumerate(sorted(by_clip.items())):
            start = end - window
            history = source[max(0, start - context):start]
            forward = ClipResponse(network, twin.backbone, history, config.response_frames, stream=stream,
                                   encoded=encoded is not None)
            clip = frames[start:end]
            if n == 0 and not forward.verify(clip[None]):
                # Not a network whose history can be cached exactly: pay for the full pass.
                stream = False
                forward = ClipResponse(network, twin.backbone, history, config.response_frames, stream=False,
                                       encoded=encoded is not None)
            result = attribute_clip(forward, clip, [index[c] for c in cids], movie.grey, config)
            for j, cid in enumerate(cids):
                out[(cid, end)] = _row(result, j)
            if progress is not None and task is not None:
                progress.update(task, advance=1, status=f"{len(cids)} cells")
    return out


def encode_movie(twin: Twin, frames: np.ndarray) -> torch.Tensor | None:
    """The backbone's `[T, c, g, g]` features of `frames [T, H, W]` uint8 (None without a backbone)."""
    if twin.backbone is None:
        return None
    return torch.from_numpy(twin.backbone.extract(frames)).to(twin.device)


def _row(result: ClipAttribution, j: int) -> ClipAttribution:
    return ClipAttribution(result.attributions[j], result.response[j:j + 1], result.baseline_response[j:j + 1],
                           result.gap[j:j + 1])


@dataclass(frozen=True, eq=False)
class _Attributed:
    """What every cell's summary of one `attribute_twin` call shares."""

    attrs: dict[tuple[int, int], ClipAttribution]  # per (cell id, clip end)
    sanity: dict[tuple[int, int], ClipAttribution]  # the same on the randomised network (a subset)
    movie: TestMovie
    cc: np.ndarray  # [N] the twin's CC on the test movie
    method: str
    backbone: str
    frame_rate: float
    test_segment: str
    seconds: float  # per cell
    grid: int | None  # the twin's input grid, when maps are summarised at its resolution


def _summarize(run: _Attributed, cid: int, i: int, clips: list[Clip]) -> CellAttribution:
    """One cell's maps, completeness and sanity check from its clips' attributions."""
    rows = [run.attrs[(cid, c.end)] for c in clips]
    a = np.stack([r.attributions for r in rows]).astype(np.float32)
    response = np.concatenate([r.response for r in rows])
    base = np.concatenate([r.baseline_response for r in rows])
    gap = np.concatenate([r.gap for r in rows])
    spatial, temporal, erf = _maps(to_resolution(a, run.grid))
    drive = np.abs(response - base).sum()
    completeness = float(np.abs(gap).sum() / drive) if np.isfinite(gap).all() and drive > 0 else float("nan")
    similarity, random_spatial = _sanity(run, cid, clips)
    movie = run.movie
    true = movie.true_filters[i] if movie.true_filters is not None else None
    sl = [slice(c.start, c.end) for c in clips]
    return CellAttribution(
        cell_id=int(cid), index=i, method=run.method, clips=tuple(clips),
        frames=np.stack([movie.frames[s] for s in sl]), attributions=a, spatial=spatial.astype(np.float32),
        temporal=temporal.astype(np.float32), effective_rf=erf, recorded_rf=movie.recorded_rf[i],
        true_filter=true, is_linear=bool(movie.linear[i]) if movie.linear is not None else None,
        rf_correlation=map_correlation(spatial, movie.recorded_rf[i]),
        truth_correlation=map_correlation(spatial, true), cc=float(run.cc[i]),
        response=response, baseline_response=base, completeness_gap=completeness,
        gap=gap,
        predicted=np.stack([np.clip(movie.predicted[s, i], 0, None) for s in sl]),
        recorded=np.stack([movie.recorded[s, i] for s in sl]),
        sanity_similarity=similarity, random_spatial=random_spatial, frame_rate=run.frame_rate,
        backbone=run.backbone, test_segment=run.test_segment, seconds=run.seconds,
    )


def _maps(seen: np.ndarray) -> tuple[np.ndarray, np.ndarray, EffectiveRF]:
    """`(spatial [H, W], temporal [T], effective RF)` of attributions `[K, T, H, W]`."""
    spatial = spatial_map(seen)
    erf = effective_rf(spatial)
    radius = max(2.0, erf.sigma) if np.isfinite(erf.sigma) else 2.0
    return spatial, temporal_profile(seen, spatial, radius), erf


def _sanity(run: _Attributed, cid: int, clips: list[Clip]) -> tuple[float, np.ndarray | None]:
    """Rank similarity of the trained and the randomised network's maps, and the latter (NaN, None: not run)."""
    used = [c for c in clips if (cid, c.end) in run.sanity]
    if not used:
        return float("nan"), None
    trained = spatial_map(to_resolution(np.stack([run.attrs[(cid, c.end)].attributions for c in used]), run.grid))
    random_spatial = spatial_map(to_resolution(np.stack([run.sanity[(cid, c.end)].attributions for c in used]),
                                               run.grid))
    return rank_similarity(trained, random_spatial), random_spatial

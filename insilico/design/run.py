"""Library functions behind `insilico optimize` and `insilico verify`, one per command.

`optimize_cells` designs one stimulus per cell and writes its files (see `outputs`). For
each cell, at one contrast budget (`budget`):

1. the design: gradient ascent through the twin (`gradient` or `both`), a batch of `seeds`
   clips, the best kept, or the best Optuna stimulus (`optuna`);
2. the best parametric stimulus (`parametric`; the full Optuna search with `both`, a short
   search of `comparison_trials` as the comparison with `gradient`);
3. the best natural clip of the same length from the training movies (`natural_control`).

All three are scored the same way: quantised to grey levels, played from a grey screen
through the twin (the ensemble mean if several models are given), objective on the rates
clamped at 0. "Predicted response" in the outputs is the cell's mean rate (spikes per bin)
over the time window.

CPU defaults: 60 frames, 4 seeds and 12 steps; 24 TPE + 12 CMA-ES trials. Gradient designs
are confined to an envelope around the cell's recorded receptive field (`envelope`) and
start from grey, or with `sta_start` (the CLI's default where the recording has white noise)
from the cell's denoised STA (`sta_start`). `benchmarks/mei.py` measures what a design costs
and how well it drives the simulated retina (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from insilico.cells import parse_cells
from insilico.design.budget import Budget, resolve_budget, training_data
from insilico.design.envelope import MIN_RF_PEAK_SNR, rf_envelope, rf_peak_snr
from insilico.design.gradient import GradientConfig, GradientRun, optimise_gradient
from insilico.design.natural_control import NaturalClip, NaturalScreen, best_natural_clip
from insilico.design.objectives import OBJECTIVES, Objective, Window, named_objective
from insilico.design.outputs import animation, contact_sheet, write_clip
from insilico.design.parametric import ParametricResult, Screen, search_parametric, storage_for
from insilico.design.postprocess import ContrastBudget, clip_stats
from insilico.design.response import TwinResponse
from insilico.design.sta_start import noise_stas, sta_start
from stimuli.contrast import to_uint8
from stimuli.errors import InputError, InsilicoError
from stimuli.files import write_json
from stimuli.recording import open_recording
from stimuli.recording.rf_geometry import rf_centre_and_size, rf_centre_pixel
from vist_model.features import FeatureCache
from vist_model.fit_twin import resolve_device
from vist_model.twin import Twin, TwinMetadata

METHODS = ("gradient", "optuna", "both")


@dataclass(frozen=True)
class DesignSettings:
    """Everything that shapes a design, recorded in each cell's JSON."""

    method: str = "gradient"
    n_frames: int = 60
    objective: str = "increase"
    window_frames: int = 3
    temperature: float = 0.1
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    gradient: GradientConfig = GradientConfig()
    trials: int = 24
    cmaes_trials: int = 12
    comparison_trials: int = 16
    natural_top_k: int = 8
    sta_start: bool = False  # gradient designs start from the cell's denoised STA (`sta_start`)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.n_frames < self.window_frames:
            raise InputError(f"--frames {self.n_frames} is shorter than the {self.window_frames}-frame window")
        if not self.seeds:
            raise InputError("--seeds must be >= 1")


@dataclass(frozen=True, eq=False)
class DesignResult:
    """One cell's design and its comparisons (frames uint8 `[T, H, W]`, all at one budget).

    `predicted` maps "design", "natural", "parametric" to the twin's mean rate of the cell
    over the window; `objective` maps them to the objective's value.
    """

    cell_id: int
    cell_index: int
    method: str
    seed: int | None
    design: np.ndarray
    natural: NaturalClip
    parametric: ParametricResult | None
    predicted: dict[str, float]
    objective: dict[str, float]
    budget: Budget
    window: tuple[int, int]
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)
    gradient_run: GradientRun | None = None
    envelope: dict[str, object] | None = None  # the gradient design's RF envelope (`design_envelope`)


def load_twins(model_path: str | Path | Sequence[str | Path], device: str = "auto") -> list[Twin]:
    """One twin, or several checkpoints (an ensemble); `device` auto/cpu/cuda[:N]."""
    dev = resolve_device(device)
    paths = [model_path] if isinstance(model_path, str | Path) else list(model_path)
    if not paths:
        raise InputError("name at least one model")
    return [Twin.load(p, device=dev) for p in paths]


def _study_key(twins: Sequence[Twin]) -> str:
    """Short, machine-independent key of the models (their weights), for Optuna study names."""
    h = hashlib.blake2b(digest_size=6)
    for twin in twins:
        for name, value in sorted(twin.network.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _score(response: TwinResponse, objective: Objective, i: int, window: slice,
           clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(objective [K], mean rate of cell i over the window [K])` of uint8 clips `[K, T, H, W]`."""
    rates = response.rates(clips)
    with torch.no_grad():
        values = objective(torch.from_numpy(rates)).numpy()
    return values.astype(np.float64), rates[:, window, i].mean(axis=1).astype(np.float64)


def optimize_cells(
    model_path: str | Path | Sequence[str | Path] | Twin | Sequence[Twin],
    cells: Sequence[int] | str,
    out_dir: str | Path,
    method: str = "gradient",
    n_frames: int = 60,
    objective: str = "increase",
    rms_contrast: float | None = None,
    seeds: int | Sequence[int] = 4,
    storage: str | None = None,
    device: str = "auto",
    *,
    settings: DesignSettings | None = None,
    cache: FeatureCache | None = None,
    progress: Progress | None = None,
    starts: Mapping[int, str | Path] | None = None,
) -> list[DesignResult]:
    """Design the most exciting (or other `objective`) stimulus of each cell; write its files.

    Args:
        model_path: run folder(s) / model.pt file(s), or loaded twins; several = an ensemble.
        cells: cell ids, or "all" / "3,42,77".
        out_dir: where `cell<ID>.h5/.json/.png/.gif` (and siblings) go.
        method: "gradient", "optuna" or "both".
        n_frames: clip length.
        objective: "increase", "decrease" or "discriminative".
        rms_contrast: the budget; None for the training movies' RMS contrast.
        seeds: how many seeds (0..n-1), or the seeds themselves.
        storage: Optuna storage URL (None: a journal file `out_dir/optuna.journal`).
        device: auto, cpu, cuda, cuda:N (ignored for loaded twins).
        settings: finer settings; the explicit arguments above override its fields.
        cache: backbone feature cache for the natural-clip screen.
        progress: a rich progress display to report on.
        starts: per cell id, a clip file (e.g. an earlier design) the gradient design refines
            instead of starting from grey; it must match the clip length, screen and frame rate.
    """
    twins = _twins(model_path, device)
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    base = settings or DesignSettings()
    s = DesignSettings(**{**asdict(base), "gradient": base.gradient, "method": method, "n_frames": n_frames,
                          "objective": objective, "seeds": seed_list})
    window = Window(s.window_frames)
    bounds = window.bounds(s.n_frames)
    response = TwinResponse(twins)
    meta = response.metadata
    ids = parse_cells(cells, meta.cell_ids)
    starts = dict(starts or {})
    start_clips = {c: read_start(starts[c], (s.n_frames, *meta.frame_shape), meta.frame_rate) for c in ids
                   if c in starts}
    budget_info = resolve_budget(meta, rms_contrast)
    budget = ContrastBudget(budget_info.rms, budget_info.mean)
    h, w = meta.frame_shape
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, segments = _training_data_or_fail(meta)
    stas = noise_stas(data) if s.sta_start and s.method in ("gradient", "both") else {}
    natural_screen = NaturalScreen.build(twins[0], str(data), segments, cache)
    opt_storage = storage_for(storage, out / "optuna.journal")
    key = _study_key(twins)
    results = []
    bar = progress
    cells_task = bar.add_task("design", total=len(ids), status="") if bar is not None else None
    for cell_id in ids:
        cell_started = time.perf_counter()
        i = meta.cell_index(cell_id)
        obj = named_objective(s.objective, i, window, s.temperature)
        if bar is not None:
            bar.update(cells_task, status=f"cell {cell_id}")
        centre, sigma = rf_centre_and_size(meta.rf[i])
        envelope, envelope_record = design_envelope(meta.rf[i], s.gradient.rf_envelope)
        # A map that does not locate the cell (`envelope.MIN_RF_PEAK_SNR`) leaves the search the whole screen.
        focus = (*centre, sigma) if envelope_record["rf_locates_cell"] else None
        screen = Screen(s.n_frames, h, w, meta.frame_rate, focus=focus)
        run = None
        if s.method not in ("gradient", "both"):
            envelope_record = None  # no gradient design to confine
        else:
            start = start_clips.get(cell_id)
            if start is None and cell_id in stas:
                start = sta_start(stas[cell_id], s.n_frames, bounds)
            run = optimise_gradient(response, obj, (s.n_frames, h, w), budget, s.seeds, s.gradient,
                                    device=response.device, envelope=envelope, start=start)
        trials = s.trials if s.method in ("optuna", "both") else s.comparison_trials
        cma = s.cmaes_trials if s.method in ("optuna", "both") else 0
        study = f"cell{cell_id}-{s.objective}-{s.n_frames}f-w{s.window_frames}-rms{budget.rms:.4f}-{key}"
        param = search_parametric(response, obj, budget, screen, study, opt_storage, trials, cma,
                                  seed=s.seeds[0])
        natural = best_natural_clip(response, natural_screen, obj, s.n_frames, s.window_frames, budget,
                                    s.natural_top_k)
        if run is not None:
            # "both" keeps the gradient design and writes the full Optuna search beside it
            # (`cell<ID>_parametric.h5`). Letting the twin pick between the two was measured
            # to lose: it prefers the parametric stimulus where the cell does not.
            clips = np.stack([to_uint8(c) for c in run.stimuli])
            values, _ = _score(response, obj, i, window.slice(s.n_frames), clips)
            best = int(np.argmax(values))
            design, design_method, seed = clips[best], "gradient", s.seeds[best]
        else:
            design, design_method, seed = param.frames, f"optuna ({param.family})", s.seeds[0]
        named = {"design": design, "natural": natural.frames, "parametric": param.frames}
        values, rates = _score(response, obj, i, window.slice(s.n_frames), np.stack(list(named.values())))
        result = DesignResult(
            cell_id=cell_id, cell_index=i, method=design_method, seed=seed, design=design,
            natural=natural, parametric=param,
            predicted={k: float(r) for k, r in zip(named, rates, strict=True)},
            objective={k: float(v) for k, v in zip(named, values, strict=True)},
            budget=budget_info, window=bounds, seconds=time.perf_counter() - cell_started,
            gradient_run=run, envelope=envelope_record,
        )
        started = starts.get(cell_id) or (f"denoised STA of {data}" if cell_id in stas else None)
        result.paths.update(_write(out, result, s, meta, obj, twins, started))
        results.append(result)
        if bar is not None:
            bar.update(cells_task, advance=1)
    return results


def design_envelope(rf: np.ndarray, width: float) -> tuple[np.ndarray | None, dict[str, object]]:
    """The gradient design's envelope (`envelope`), or None when off or the map is noise; and why."""
    snr = rf_peak_snr(rf)
    located = snr >= MIN_RF_PEAK_SNR
    record = {"width_rf_sigmas": width, "rf_peak_snr": round(snr, 2), "rf_locates_cell": located, "used": False,
              "note": "off"}
    if not width:
        return None, record
    if not located:
        return None, {**record, "note": f"not used: the recorded RF's peak is {snr:.1f} noise SDs (< "
                                        f"{MIN_RF_PEAK_SNR:g}), so the map does not locate the cell"}
    return rf_envelope(rf, width), {**record, "used": True, "note": "used"}


def _twins(model_path, device: str) -> list[Twin]:
    if isinstance(model_path, Twin):
        return [model_path]
    if isinstance(model_path, Sequence) and not isinstance(model_path, str) and model_path \
            and all(isinstance(t, Twin) for t in model_path):
        return list(model_path)
    return load_twins(model_path, device)


def _training_data_or_fail(meta) -> tuple[Path, list[str]]:
    data, segments = training_data(meta, ": the best natural clip (the comparison every design is reported "
                                         "against) is drawn from it")
    return data, segments


def read_start(path: str | Path, shape: tuple[int, int, int], frame_rate: float) -> np.ndarray:
    """A clip file to start a design from, as float32 `[T, H, W]` in [0, 1]."""
    with open_recording(path) as rec:
        frames, rate = np.asarray(rec.frames()), float(rec.frame_rate)
    if tuple(frames.shape) != tuple(shape):
        raise InsilicoError(f"{path}: a design start must be {shape[0]} frames of {shape[1]} x {shape[2]} px, "
                            f"got {frames.shape[0]} of {frames.shape[1]} x {frames.shape[2]}")
    if abs(rate - frame_rate) > 1e-6 * frame_rate:
        raise InsilicoError(f"{path}: a design start must play at the twin's {frame_rate:g} Hz, not {rate:g} Hz")
    return frames.astype(np.float32) / 255.0


SIM_IDENTITY = ("sim_seed", "sim_n_cells", "sim_size")


def twin_retina(meta) -> dict[str, int]:  # noqa: ANN001
    """`twin_sim_seed` etc. of the simulated retina behind the twin's training data ({} if not simulated).

    Written into each design so that `insilico verify` can say when it plays a design to a
    retina the twin never saw (another seed or population), where a ratio means little.
    """
    data, _ = training_data(meta)
    with open_recording(data) as rec:
        attrs = rec.attrs
    if not all(k in attrs for k in SIM_IDENTITY):
        return {}
    return {f"twin_{k}": int(attrs[k]) for k in SIM_IDENTITY}


def _write(out: Path, r: DesignResult, s: DesignSettings, meta, obj: Objective,
           twins: Sequence[Twin], start: str | Path | None = None) -> dict[str, Path]:
    stem = f"cell{r.cell_id}"
    mean, rms = clip_stats(r.design)
    common = {
        "cell_id": r.cell_id, "n_cells": meta.n_cells, "objective": obj.describe(), "window": list(r.window),
        "window_unit": "frames [start, stop) of the clip", "rms_contrast": r.budget.rms, "mean_grey": r.budget.mean,
        "budget_source": r.budget.source, "training_data": meta.training.get("data"),
        **twin_retina(meta),
    }
    paths = {
        "design": write_clip(out / f"{stem}.h5", r.design, meta.frame_rate,
                             {**common, "method": r.method, "seed": r.seed, "achieved_rms": rms, "achieved_mean": mean},
                             meta.pixel_size_um),
        "natural": write_clip(out / f"{stem}_natural.h5", r.natural.frames, meta.frame_rate,
                              {**common, "method": "natural clip", "source_segment": r.natural.segment,
                               "source_start": r.natural.start}, meta.pixel_size_um),
    }
    if r.parametric is not None:
        paths["parametric"] = write_clip(out / f"{stem}_parametric.h5", r.parametric.frames, meta.frame_rate,
                                         {**common, "method": "optuna", "family": r.parametric.family,
                                          "params": r.parametric.params}, meta.pixel_size_um)
    centre = rf_centre_pixel(meta.rf[r.cell_index])  # the envelope's centre
    title = f"cell {r.cell_id}: {obj.describe()} ({r.method}), RMS {r.budget.rms:.3f}"
    paths["contact_sheet"] = contact_sheet(out / f"{stem}.png", r.design, centre, meta.frame_rate, title)
    paths["animation"] = animation(out / f"{stem}.gif", r.design, meta.frame_rate)
    if r.gradient_run is not None:
        paths["history"] = r.gradient_run.plot(out / f"{stem}_steps.png")
    summary = {
        "cell_id": r.cell_id, "method": r.method, "seed": r.seed, "objective": obj.describe(),
        "window": {"frames": list(r.window), "unit": "frames [start, stop) of the clip",
                   "seconds": [r.window[0] / meta.frame_rate, r.window[1] / meta.frame_rate]},
        "budget": {"rms_contrast": r.budget.rms, "mean": r.budget.mean, "source": r.budget.source,
                   "design_achieved": {"rms": rms, "mean": mean}},
        "predicted_response": r.predicted,
        "predicted_response_unit": "mean expected spikes per frame bin over the window (twin)",
        "objective_value": r.objective,
        "natural_clip": {"segment": r.natural.segment, "start": r.natural.start,
                         "candidates_confirmed": r.natural.candidates},
        "parametric": None if r.parametric is None else {
            "family": r.parametric.family, "params": r.parametric.params,
            "trials": r.parametric.n_trials, "studies": list(r.parametric.studies)},
        "settings": {**asdict(s), "seeds": list(s.seeds)},
        "started_from": None if start is None else str(start),
        "rf_envelope": r.envelope,
        "ensemble_size": len(twins),
        # Every predicted number above is only as good as the twin's word on this cell.
        "twin_accuracy": _accuracy_record(meta, r.cell_id),
        "training_data": meta.training.get("data"),
        "backbone": twins[0].metadata.describe_backbone(),
        "device": str(twins[0].device),
        "seconds": r.seconds,
        "files": {k: str(v) for k, v in paths.items()},
    }
    if r.gradient_run is not None:
        c = r.gradient_run.curves()
        summary["gradient_history"] = {k: v.tolist() for k, v in c.items()}
    paths["summary"] = write_json(out / f"{stem}.json", summary)
    return paths


def _accuracy_record(meta: TwinMetadata, cell_id: int) -> dict[str, object]:
    acc = meta.cell_accuracy(cell_id)
    if acc is None:
        return {"measured": False, "note": "this twin was saved without held-out accuracy (retrain to measure it)"}
    return {"measured": True, "segment": meta.accuracy.segment, **acc.to_json(), "note": acc.warning()}

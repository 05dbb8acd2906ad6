"""Library functions behind `insilico optimize` and `insilico verify`, one per command.

`optimize_cells` designs one stimulus per cell and writes its files (see `outputs`). For
each cell, at one contrast budget (`budget`; a whole-clip RMS, and a per-frame ceiling with
`frame_rms`):

1. the best natural clips of the training movies (`natural_control`): the control, and the
   clips the prior is read from;
2. the twin's attribution map over them (`prior`): where and when the cell looks;
3. the envelope (`envelope`) around the recorded RF, or around the attribution map where the
   RF does not locate the cell (`envelope_source`); every start and every step stays inside it;
4. the design: gradient ascent through the twin (`gradient` or `both`) from each start
   (`start`: the denoised STA where the recording has white noise, the attribution map, the
   best natural clip within `natural_distance` of it, grey; "auto": all of them in one batch),
   `seeds` clips per start, the best kept and why recorded; or the best Optuna stimulus (`optuna`);
5. the best parametric stimulus (`parametric`; the full Optuna search with `both`, a short
   search of `comparison_trials` as the comparison with `gradient`), focused on the envelope's
   map, TPE's first trial and CMA-ES's start the gradient design's parametric fit.

All are scored the same way: quantised to grey levels, played from a grey screen
through the twin (the ensemble mean if several models are given), objective on the rates
clamped at 0. "Predicted response" in the outputs is the cell's mean rate (spikes per bin)
over the time window. Each clip's contrast frame by frame is in the JSON too.

Every setting and its default (sized for a CPU) is in `insilico.design.settings`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from insilico.cells import parse_cells
from insilico.design.budget import Budget, resolve_budget, training_data
from insilico.design.envelope import MIN_RF_PEAK_SNR, rf_envelope, rf_peak_snr
from insilico.design.gradient import GradientRun, optimize_gradient
from insilico.design.natural_control import NaturalClip, NaturalScreen, best_natural_clip
from insilico.design.objectives import Objective, Window, named_objective
from insilico.design.outputs import animation, contact_sheet, write_clip
from insilico.design.parametric import (
    ParametricFit,
    ParametricResult,
    Screen,
    fit_parametric,
    search_parametric,
    storage_for,
)
from insilico.design.postprocess import ContrastBudget, clip_stats, frame_contrast
from insilico.design.prior import AttributionPrior, attribution_prior, attribution_start
from insilico.design.response import TwinResponse
from insilico.design.settings import METHODS, DesignSettings
from insilico.design.sta_start import has_noise_segment, noise_stas, sta_start
from stimuli.contrast import to_uint8
from stimuli.errors import InputError, InsilicoError
from stimuli.files import write_json
from stimuli.recording import open_recording
from stimuli.recording.rf_geometry import rf_centre_and_size, rf_centre_pixel
from vist_model.features import FeatureCache
from vist_model.fit_twin import resolve_device
from vist_model.twin import Twin, TwinMetadata

__all__ = ["METHODS", "DesignResult", "DesignSettings", "load_twins", "optimize_cells"]


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
    start: dict[str, object] | None = None  # which start the gradient design kept and why (`_start_record`)
    chosen_start: str | None = None  # "sta", "attribution", "natural", "grey" or "file"
    prior: dict[str, object] | None = None  # the attribution prior's summary (`prior.AttributionPrior.to_json`)
    parametric_fit: dict[str, object] | None = None  # the gradient design's parametric fit (CMA-ES's x0)


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
    twins: Twin | Sequence[Twin] | str | Path | Sequence[str | Path],
    cells: Sequence[int] | str,
    out_dir: str | Path,
    settings: DesignSettings | None = None,
    *,
    cache: FeatureCache | None = None,
    progress: Progress | None = None,
    starts: Mapping[int, str | Path] | None = None,
) -> list[DesignResult]:
    """Design the most exciting (or other `settings.objective`) stimulus of each cell; write its files.

    Args:
        twins: loaded twins (`load_twins` picks the device), or run folder(s) / model.pt
            file(s) loaded on the default device; several = an ensemble.
        cells: cell ids, or "all" / "3,42,77".
        out_dir: where `cell<ID>.h5/.json/.png/.gif` (and siblings) go.
        settings: everything that shapes the designs (`insilico.design.settings`); None: the defaults.
        cache: backbone feature cache for the natural-clip screen.
        progress: a rich progress display to report on.
        starts: per cell id, a clip file (e.g. an earlier design) the gradient design refines
            instead of `settings.start`; it must match the clip length, screen and frame rate.
    """
    twins = _twins(twins)
    s = settings or DesignSettings()
    run = _DesignRun.prepare(twins, s, Path(out_dir), cache, starts or {})
    ids = parse_cells(cells, run.meta.cell_ids)
    start_clips = {c: read_start(run.starts[c], (s.n_frames, *run.meta.frame_shape), run.meta.frame_rate)
                   for c in ids if c in run.starts}
    results = []
    task = progress.add_task("design", total=len(ids), status="") if progress is not None else None
    for cell_id in ids:
        if progress is not None:
            progress.update(task, status=f"cell {cell_id}")
        result = run.design_cell(cell_id, start_clips.get(cell_id))
        result.paths.update(_write(run.out, result, run.recorded_settings, run.meta, run.objective(result.cell_index),
                                   twins, run.started_from(cell_id, result.chosen_start)))
        results.append(result)
        if progress is not None:
            progress.update(task, advance=1)
    return results


@dataclass(frozen=True, eq=False)
class _DesignRun:
    """What every cell's design of one `optimize_cells` call shares (twins, budget, screens)."""

    settings: DesignSettings
    response: TwinResponse
    meta: TwinMetadata
    budget_info: Budget
    budget: ContrastBudget
    window: Window
    out: Path
    data: Path
    stas: dict[int, np.ndarray]
    natural_screen: NaturalScreen
    storage: object
    key: str
    starts: Mapping[int, str | Path]

    @classmethod
    def prepare(cls, twins: Sequence[Twin], s: DesignSettings, out: Path, cache: FeatureCache | None,
                starts: Mapping[int, str | Path]) -> _DesignRun:
        response = TwinResponse(twins)
        meta = response.metadata
        budget_info = resolve_budget(meta, s.rms_contrast, frame_rms=s.frame_rms)
        out.mkdir(parents=True, exist_ok=True)
        data, segments = _training_data_or_fail(meta)
        stas = noise_stas(data) if s.gradient_design and starts_from_sta(s.start, meta) else {}
        return cls(settings=s, response=response, meta=meta, budget_info=budget_info,
                   budget=ContrastBudget(budget_info.rms, budget_info.mean, frame_rms=budget_info.frame_rms), window=Window(s.window_frames), out=out,
                   data=data, stas=stas, natural_screen=NaturalScreen.build(twins[0], str(data), segments, cache),
                   storage=storage_for(s.storage, out / "optuna.journal"), key=_study_key(twins), starts=dict(starts))

    @property
    def recorded_settings(self) -> DesignSettings:
        """The settings as given (what `start = "auto"` chose is in each cell's "start" record)."""
        return self.settings

    def objective(self, i: int) -> Objective:
        return named_objective(self.settings.objective, i, self.window, self.settings.temperature)

    def started_from(self, cell_id: int, chosen: str | None = None) -> str | Path | None:
        if cell_id in self.starts:
            return self.starts[cell_id]
        return {"sta": f"denoised STA of {self.data}", "attribution": "the twin's attribution map over the best "
                f"natural clips ({self.settings.attribution_method})", "natural": "the best natural clip"}.get(chosen)

    def _needs_prior(self, rf_located: bool) -> bool:
        s = self.settings
        return (s.gradient_design and s.start in ("auto", "attribution")) or s.envelope_source == "attribution" \
            or (s.envelope_source == "auto" and not rf_located)

    def design_cell(self, cell_id: int, start: np.ndarray | None) -> DesignResult:
        """One cell: 1. best natural clips, 2. attribution prior, 3. envelope, 4. gradient design
        from each start, 5. parametric search, 6. scores."""
        s, meta = self.settings, self.meta
        started = time.perf_counter()
        i = meta.cell_index(cell_id)
        obj = self.objective(i)
        bounds = self.window.bounds(s.n_frames)
        natural = best_natural_clip(self.response, self.natural_screen, obj, s.n_frames, s.window_frames,   # 1.
                                    self.budget, s.natural_top_k)
        rf = meta.rf[i]
        rf_located = rf_peak_snr(rf) >= MIN_RF_PEAK_SNR
        prior = None
        if self._needs_prior(rf_located):                                          # 2. attribution prior
            prior = attribution_prior(self.response, obj, natural.ranked, s.attribution_method, s.attribution_steps)
        source = s.envelope_source if s.envelope_source != "auto" else ("rf" if rf_located or prior is None
                                                                        else "attribution")
        place = rf if source == "rf" else prior.spatial
        envelope, envelope_record = design_envelope(place, s.gradient.rf_envelope)  # 3. envelope
        envelope_record = {"source": "recorded RF (/cells/rf)" if source == "rf" else "attribution map",
                           **envelope_record}
        located = bool(envelope_record["rf_locates_cell"])
        run, start_record, design_budget = None, None, self.budget
        if s.gradient_design:                                                       # 4. gradient design
            if envelope is not None:
                design_budget = replace(self.budget, support=envelope > 0)
            candidates = self._starts(cell_id, start, prior, natural, obj, design_budget, envelope)
            # "auto" shares the batch out: `seeds` clips in all, at least one per start, so it
            # costs what one start with all its seeds does (1 seed each of 4 starts by default).
            per_start = s.seeds[:max(1, -(-len(s.seeds) // len(candidates)))]
            member_starts, anchors, seeds, names = [], [], [], []
            for c, (name, clip, anchor) in enumerate(candidates):
                for seed in per_start:
                    member_starts.append(clip)
                    anchors.append(anchor)
                    seeds.append(int(seed) + START_SEED_STRIDE * c)  # distinct generators across starts
                    names.append((name, int(seed)))
            run = optimize_gradient(self.response, obj, (s.n_frames, *meta.frame_shape), design_budget, seeds,
                                    s.gradient, device=self.response.device, envelope=envelope, start=member_starts,
                                    anchors=anchors, max_distance=s.natural_distance * self.budget.rms)
        else:
            envelope_record = None  # no gradient design to confine
        window = self.window.slice(s.n_frames)
        fit = None
        if run is not None:
            clips = np.stack([to_uint8(c) for c in run.stimuli])
            values, _ = _score(self.response, obj, i, window, clips)
            best = int(np.argmax(values))
            design, design_method = clips[best], "gradient"
            chosen, seed = names[best]
            start_record = _start_record(s.start if cell_id not in self.starts else "file", names, values, chosen)
            if s.parametric_fit_trials:
                fit = fit_parametric(run.stimuli[best], self._screen(i, located, place), s.parametric_fit_trials,
                                     seed=s.seeds[0])
        param = self._search(cell_id, i, obj, located, place, fit)                  # 5. parametric search
        if run is None:
            design, design_method, seed, chosen = param.frames, f"optuna ({param.family})", s.seeds[0], None
        named = {"design": design, "natural": natural.frames, "parametric": param.frames}   # 6. scores
        values, rates = _score(self.response, obj, i, window, np.stack(list(named.values())))
        return DesignResult(
            cell_id=cell_id, cell_index=i, method=design_method, seed=seed, design=design,
            natural=natural, parametric=param,
            predicted={k: float(r) for k, r in zip(named, rates, strict=True)},
            objective={k: float(v) for k, v in zip(named, values, strict=True)},
            budget=self.budget_info, window=bounds, seconds=time.perf_counter() - started,
            gradient_run=run, envelope=envelope_record, start=start_record, chosen_start=chosen,
            prior=None if prior is None else prior.to_json(), parametric_fit=None if fit is None else fit.to_json(),
        )

    def _starts(self, cell_id: int, given: np.ndarray | None, prior: AttributionPrior | None, natural: NaturalClip,
                obj: Objective, budget: ContrastBudget, envelope: np.ndarray | None,
                ) -> list[tuple[str, np.ndarray | None, np.ndarray | None]]:
        """`(name, start clip or None for grey, anchor or None)` of each start the design runs from."""
        s = self.settings
        if given is not None:
            return [("file", given, None)]
        names = [s.start] if s.start != "auto" else [*(["sta"] if cell_id in self.stas else []),
                                                     "attribution", "natural", "grey"]
        out = []
        for name in names:
            if name == "sta":
                if cell_id not in self.stas:
                    raise InsilicoError(f"{self.data}: cell {cell_id} has no STA to start from (design setting "
                                        "start = \"sta\")")
                out.append(("sta", sta_start(self.stas[cell_id], s.n_frames, self.window.bounds(s.n_frames)), None))
            elif name == "attribution":
                out.append(("attribution", attribution_start(prior, self.response, obj, budget), None))
            elif name == "natural":
                clip = natural.frames.astype(np.float32) / 255.0
                if envelope is not None:
                    clip = GREY + (clip - GREY) * envelope
                anchor = budget(torch.from_numpy(clip[None]))[0].numpy()
                out.append(("natural", anchor, anchor))
            else:
                out.append(("grey", None, None))
        return out

    def _screen(self, i: int, located: bool, place: np.ndarray) -> Screen:
        s, meta = self.settings, self.meta
        centre, sigma = rf_centre_and_size(place)
        # A map that does not locate the cell (`envelope.MIN_RF_PEAK_SNR`) leaves the search the whole screen.
        return Screen(s.n_frames, *meta.frame_shape, meta.frame_rate, focus=(*centre, sigma) if located else None)

    def _search(self, cell_id: int, i: int, obj: Objective, located: bool, place: np.ndarray,
                fit: ParametricFit | None) -> ParametricResult:
        """The parametric search of cell position `i`, focused on the envelope's map where it `located` the
        cell, CMA-ES started from the gradient design's `fit` where there is one."""
        s = self.settings
        screen = self._screen(i, located, place)
        trials, cma = s.search_trials()
        study = f"cell{cell_id}-{s.objective}-{s.n_frames}f-w{s.window_frames}-rms{self.budget.rms:.4f}-{self.key}"
        if self.budget.frame_rms is not None:
            study += f"-frame{self.budget.frame_rms:.4f}"
        if fit is not None:
            study += "-fit"
        return search_parametric(self.response, obj, self.budget, screen, study, self.storage, trials, cma,
                                 seed=s.seeds[0], x0=fit)


START_SEED_STRIDE = 7919  # member seeds of the k-th start: seed + k * stride (a prime, never a user's seed)
GREY = 0.5


def _start_record(start: str, names: list[tuple[str, int]], values: np.ndarray, chosen: str) -> dict[str, object]:
    """Why the design starts where it does: each start's best objective after the steps."""
    best: dict[str, float] = {}
    for (name, _), v in zip(names, values, strict=True):
        best[name] = max(best.get(name, -np.inf), float(v))
    rule = ("the start whose design the twin rates highest after the gradient steps (objective, "
            "best seed of each)" if start == "auto" else f"design setting start = \"{start}\""
            if start != "file" else "a given clip")
    return {"setting": start, "chosen": chosen, "rule": rule, "objective_after_steps": best}


def starts_from_sta(start: str, meta: TwinMetadata) -> bool:
    """Whether gradient designs start from the STA: `start` "sta", or "auto" with white noise recorded."""
    if start != "auto":
        return start == "sta"
    try:
        data, _ = training_data(meta)
    except InsilicoError:
        return False  # no training recording named: the design itself says what is missing
    return data.is_file() and has_noise_segment(data)


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


def _twins(twins) -> list[Twin]:  # noqa: ANN001
    if isinstance(twins, Twin):
        return [twins]
    if isinstance(twins, Sequence) and not isinstance(twins, str) and twins and all(isinstance(t, Twin) for t in twins):
        return list(twins)
    return load_twins(twins)


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
        "budget_source": r.budget.source, "training_data": meta.training_record.data,
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
        "budget": {**r.budget.to_json(), "design_achieved": {"rms": rms, "mean": mean}},
        # Each clip's contrast frame by frame: a whole-clip budget says nothing about how it is spread.
        "frame_contrast": {
            "unit": "RMS deviation of each frame's pixels from mean grey, full range",
            **{k: [round(float(c), 4) for c in frame_contrast(v, r.budget.mean)]
               for k, v in (("design", r.design), ("natural", r.natural.frames),
                            ("parametric", None if r.parametric is None else r.parametric.frames)) if v is not None}},
        "predicted_response": r.predicted,
        "predicted_response_unit": "mean expected spikes per frame bin over the window (twin)",
        "objective_value": r.objective,
        "natural_clip": {"segment": r.natural.segment, "start": r.natural.start,
                         "candidates_confirmed": r.natural.candidates},
        "parametric": None if r.parametric is None else {
            "family": r.parametric.family, "params": r.parametric.params,
            "trials": r.parametric.n_trials, "studies": list(r.parametric.studies),
            "cmaes_start": r.parametric.cmaes_start, "gradient_design_fit": r.parametric_fit},
        "start": r.start,
        "attribution_prior": r.prior,
        "settings": s.to_json(),
        "started_from": None if start is None else str(start),
        "rf_envelope": r.envelope,
        "ensemble_size": len(twins),
        # Every predicted number above is only as good as the twin's word on this cell.
        "twin_accuracy": _accuracy_record(meta, r.cell_id),
        "training_data": meta.training_record.data,
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

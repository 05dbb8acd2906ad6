"""Rounds of an `mei_closed_loop` protocol: design -> present -> record -> fine-tune -> evaluate.

Round k works in `OUT/round_k/`:

1. design: for every target cell and objective, `optimize_cells` writes the design and its
   controls (best natural clip, best parametric stimulus; same contrast budget) under
   `designs/<objective>/`; with `design.refine`, from round 2 on each design starts from the
   round before's, which the twin has just been fine-tuned on;
2. plan: the clips to show, each distinct clip once (a natural control may serve two
   objectives), in a fixed order;
3. predict: the round's twin (fine-tuned on rounds < k) predicts every clip, from a grey
   screen as the rig shows it (`predicted.npz`, `[T, N]` per clip);
4. present: each clip `repeats` times through the rig bridge into `session.h5`, one at a time,
   each stored exactly once (`presenting`);
5. finetune: the twin learns from every session so far (and, by default, its training data)
   into `twin/`;
6. evaluate: the fine-tuned twin on the held-out natural movie;
7. summary: `summary.json` and `traces.npz` for the report. Each objective is scored by
   what it asks (`yardstick`): an increase design by the target's rate over the window, a
   discriminative one by the target's margin over the strongest other cell.

Every step is recorded in the run state when it finishes; a rerun skips finished steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from insilico.design.gradient import GradientConfig
from insilico.design.response import TwinResponse
from insilico.design.run import DesignSettings, optimize_cells
from insilico.loop.archive import round_designs, write_session_nwb
from insilico.loop.live import LiveView, ResponseRow
from insilico.loop.presenting import present_planned
from insilico.loop.protocol import ClosedLoopProtocol, FinetunePlan
from insilico.loop.rig_link import RigLink
from insilico.loop.state import RunState
from stimuli.errors import InsilicoError
from stimuli.files import atomic_path, write_json
from stimuli.nwb import NwbSessionMetadata
from stimuli.recording import open_recording
from vist_model.data import LossFocus
from vist_model.evaluate import evaluate_twin
from vist_model.features import FeatureCache
from vist_model.fit_twin import finetune_twin, resolve_device
from vist_model.provenance import TrainingDataMissing, locate_training_data
from vist_model.train import TrainConfig
from vist_model.twin import Twin

ROLES = ("design", "natural", "parametric")


@dataclass(frozen=True)
class LoopPaths:
    out: Path

    def round_dir(self, k: int) -> Path:
        return self.out / f"round_{k}"

    def session(self, k: int) -> Path:
        return self.round_dir(k) / "session.h5"

    def twin(self, k: int) -> Path:
        return self.round_dir(k) / "twin"


def _seconds_since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def heldout_source(protocol: ClosedLoopProtocol | Any, twin: Twin) -> tuple[Path, str]:
    """The held-out recording and segment (default: the twin's own training recording)."""
    data = protocol.evaluation.data or twin_training_recording(twin, "[evaluation] data")
    if not Path(data).is_file():
        raise FileNotFoundError(f"held-out recording {data} not found (set [evaluation] data in the protocol)")
    with open_recording(data) as rec:
        names = [s.name for s in rec.segments]
    segment = protocol.evaluation.segment
    if segment not in names:
        raise InsilicoError(f"held-out segment {segment!r} is not in {data} (segments: {', '.join(names)})")
    train_segments = twin.metadata.training.get("train_segments") or []
    try:
        trained_on = twin_training_recording(twin, "[evaluation] data")
    except InsilicoError:
        trained_on = None  # gone: then it cannot be the held-out recording named here
    if trained_on is not None and trained_on.resolve() == Path(data).resolve() and segment in train_segments:
        raise InsilicoError(f"held-out segment {segment!r} is one the twin was trained on: choose another")
    return Path(data), segment


def twin_training_recording(twin: Twin, setting: str) -> Path:
    """The twin's training recording, found where it was stored (or moved to the current folder).

    `setting` is the protocol key that names another recording instead, for the error.
    """
    try:
        data = locate_training_data(twin.metadata.training)
    except TrainingDataMissing as err:
        raise InsilicoError(f"{err}: set {setting} in the protocol") from None
    if data is None:
        raise InsilicoError(f"the twin does not name its training recording: set {setting} in the protocol")
    return data


def evaluation_record(twin: Twin, data: Path, segment: str, cache: FeatureCache) -> dict[str, Any]:
    t0 = time.perf_counter()
    ev = evaluate_twin(twin, data, segment, cache=cache)
    summary = ev.to_json_dict()
    return {"data": str(data), "segment": segment, "cc_mean": summary["cc_mean"], "feve_mean": summary["feve_mean"],
            "cc": [float(c) for c in ev.metrics.cc], "seconds": _seconds_since(t0)}


def finetune_config(plan: FinetunePlan) -> TrainConfig:
    # No early stopping inside a round: the protocol names the epochs.
    return TrainConfig(epochs=plan.epochs, window=plan.window, lr=plan.lr, warmup_epochs=plan.warmup_epochs,
                       batch_size=plan.batch_size, readout_only=plan.readout_only, seed=plan.seed,
                       patience=plan.epochs + 1, final_lr=min(1e-4, plan.lr))


def val_fraction_for(recordings: list[tuple[Path, list[str]]], window: int) -> float:
    """Hold out 10% for validation only if every segment stays long enough to train on.

    Presented clips are short (one design each): carving validation frames from them would
    leave nothing of the window length to learn from, so then all frames train.
    """
    for path, segments in recordings:
        with open_recording(path) as rec:
            if any(rec.segment(s).n_frames < 4 * window for s in segments):
                return 0.0
    return 0.1


class ClosedLoop:
    """One closed-loop run; `run()` does (or resumes) every round."""

    def __init__(self, protocol: ClosedLoopProtocol, model: Path, out: Path, link: RigLink, view: LiveView,
                 cache: FeatureCache, *, nwb: NwbSessionMetadata | None = None) -> None:
        self.p = protocol
        self.model = Path(model)
        self.paths = LoopPaths(Path(out))
        self.link = link
        self.view = view
        self.cache = cache
        self.device = resolve_device(protocol.design.device)
        self.state = RunState.open(out, protocol.digest, protocol.kind, str(self.model))
        self.rows: list[ResponseRow] = []
        self.nwb = nwb  # with metadata, each round's session is also written as NWB

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> list[Path]:
        twin0 = self._load(self.model)
        if self.p.design.cells:
            missing = [c for c in self.p.design.cells if c not in twin0.metadata.cell_ids]
            if missing:
                raise InsilicoError(f"{self.p.path}: design.cells names cell {missing[0]}, which the twin does not model")
        if self.p.finetune.readout_only and not hasattr(twin0.network, "readout"):
            # Found here, not after a round of design and presentation.
            raise InsilicoError(f"{self.p.path}: [finetune] mode = \"readout\" (the default) needs a twin with a "
                                f"readout layer; this {twin0.metadata.kind} twin has none: set mode = \"full\"")
        self.link.cell_ids = twin0.metadata.cell_ids
        self.link.frame_shape = twin0.metadata.frame_shape
        self.link.frame_rate = twin0.metadata.frame_rate
        self.heldout = heldout_source(self.p, twin0)
        if not self.state.done(0, "baseline"):
            self.view.step(f"round 0: the starting twin on the held-out movie ({self.heldout[1]})")
            record = evaluation_record(twin0, *self.heldout, self.cache)
            self.state.mark(0, "baseline", record)
        self.view.note(f"starting twin: held-out CC {self.state.record(0, 'baseline')['cc_mean']:.3f}")
        summaries = []
        model = self.model
        for k in range(1, self.p.rounds + 1):
            summaries.append(self._round(k, model))
            model = self.paths.twin(k)
        return summaries

    def _load(self, path: Path) -> Twin:
        return Twin.load(path, device=self.device)

    def _round(self, k: int, model: Path) -> Path:
        if self.state.done(k, "summary"):
            self._show_summary(k)
            return self.paths.round_dir(k) / "summary.json"
        twin = self._load(model)
        items = self._design(k, twin)
        plan = self._plan(k, items)
        predicted = self._predict(k, twin, plan)
        self._show_rows(k, items, plan, predicted, {})
        measured = self._present(k, items, plan, predicted)
        if self.nwb is not None:
            designs = round_designs(items, plan, self.state.get(k, "presented", {}), model)
            write_session_nwb(self.paths.session(k), self.nwb, designs)
        self._finetune(k, model)
        self._evaluate(k)
        return self._summarise(k, model, items, plan, predicted, measured)

    # --- steps -------------------------------------------------------------------------------------
    def _design(self, k: int, twin: Twin) -> list[dict[str, Any]]:
        if self.state.done(k, "design"):
            return self.state.record(k, "design")
        d = self.p.design
        settings = DesignSettings(window_frames=d.window_frames, gradient=GradientConfig(steps=d.steps),
                                  trials=d.comparison_trials, cmaes_trials=max(1, d.comparison_trials // 2),
                                  comparison_trials=d.comparison_trials, natural_top_k=d.natural_top_k)
        rdir = self.paths.round_dir(k)
        items = []
        # One call per objective designs every target: the natural-clip screen (the twin over
        # the whole training movie) is built once per call, not once per cell.
        for n, objective in enumerate(d.objectives, 1):
            key = f"design:{objective}"
            if not self.state.done(k, key):
                self.view.step(f"round {k}/{self.p.rounds}: design {objective} ({n}/{len(d.objectives)}) for "
                               f"cells {', '.join(map(str, d.cells))}")
                t0 = time.perf_counter()
                starts = self._starts(k, objective)
                results = optimize_cells(twin, list(d.cells), rdir / "designs" / objective, method=d.method,
                                         n_frames=d.n_frames, objective=objective, rms_contrast=d.rms_contrast,
                                         seeds=d.seeds, settings=settings, cache=self.cache,
                                         progress=self.view.progress, starts=starts)
                records = []
                for r in results:
                    files = {role: str(r.paths[role].relative_to(self.paths.out)) for role in ROLES if role in r.paths}
                    records.append({
                        "cell": r.cell_id, "cell_index": r.cell_index, "objective": objective,
                        "window": list(r.window), "files": files, "design_predicted": r.predicted,
                        "rms_contrast": r.budget.rms, "method": r.method, "seconds": round(r.seconds, 3),
                        "refined_from": str(starts[r.cell_id]) if r.cell_id in starts else None,
                        "twin_accuracy": None if (acc := twin.metadata.cell_accuracy(r.cell_id)) is None
                        else acc.to_json(),
                    })
                    known = "" if acc is None else f"; {acc.describe()}" + ("" if acc.known else " (twin does not know it)")
                    self.view.note(f"round {k}: cell {r.cell_id} {objective}: predicted design "
                                   f"{r.predicted['design']:.3f}, natural {r.predicted['natural']:.3f}, "
                                   f"parametric {r.predicted.get('parametric', float('nan')):.3f}{known}")
                self.state.mark(k, key, {"items": records, "seconds": _seconds_since(t0)})
            items.extend(self.state.record(k, key)["items"])
        self.state.mark(k, "design", items)
        return items

    def _starts(self, k: int, objective: str) -> dict[int, Path]:
        """With `design.refine`, round k-1's design files of this objective, per cell."""
        if not self.p.design.refine or k == 1:
            return {}
        return {item["cell"]: self.paths.out / item["files"]["design"] for item in self.state.record(k - 1, "design")
                if item["objective"] == objective}

    def _plan(self, k: int, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Distinct clips to show, in order; each lists the (item, role) pairs it serves."""
        if self.state.done(k, "plan"):
            return self.state.record(k, "plan")
        from rig_bridge.protocol import stimulus_id

        roles = ("design", *self.p.design.controls)
        plan: list[dict[str, Any]] = []
        by_id: dict[str, dict[str, Any]] = {}
        for i, item in enumerate(items):
            for role in roles:
                if role not in item["files"]:
                    continue
                frames, rate = self._frames(item["files"][role])
                sid = stimulus_id(frames, rate)
                if sid not in by_id:
                    by_id[sid] = {"index": len(plan), "file": item["files"][role], "stimulus_id": sid,
                                  "n_frames": int(frames.shape[0]), "uses": []}
                    plan.append(by_id[sid])
                by_id[sid]["uses"].append([i, role])
        self.state.mark(k, "plan", plan)
        return plan

    def _frames(self, rel: str) -> tuple[np.ndarray, float]:
        with open_recording(self.paths.out / rel) as rec:
            return np.asarray(rec.frames()), float(rec.frame_rate)

    def _predict(self, k: int, twin: Twin, plan: list[dict[str, Any]]) -> dict[int, np.ndarray]:
        path = self.paths.round_dir(k) / "predicted.npz"
        if self.state.done(k, "predict") and path.is_file():
            with np.load(path) as z:
                return {int(name[1:]): z[name] for name in z.files}
        self.view.step(f"round {k}/{self.p.rounds}: the twin predicts {len(plan)} clips")
        t0 = time.perf_counter()
        response = TwinResponse([twin], lead_in=None)  # the whole receptive field of grey before each clip
        clips = {e["index"]: self._frames(e["file"])[0] for e in plan}
        out: dict[int, np.ndarray] = {}
        for length in sorted({len(c) for c in clips.values()}):
            same = [i for i, c in clips.items() if len(c) == length]  # one batched pass per clip length
            out.update(zip(same, response.rates(np.stack([clips[i] for i in same])), strict=True))
        with atomic_path(path) as tmp:
            np.savez(tmp, **{f"p{i}": v for i, v in out.items()})
        self.state.mark(k, "predict", {"seconds": _seconds_since(t0)})
        return out

    def _present(self, k: int, items, plan, predicted) -> dict[int, np.ndarray]:  # noqa: ANN001
        """Measured spike counts `[R, T, N]` (one row per repeat) per plan index."""
        session = self.paths.session(k)
        reps, isi = self.p.presentation.repeats, self.p.presentation.isi_grey_frames
        shown = dict(self.state.get(k, "presented", {}))
        measured: dict[int, np.ndarray] = {}
        t0 = time.perf_counter()
        for e in plan:
            i = e["index"]
            if str(i) not in shown:
                self.view.step(f"round {k}/{self.p.rounds}: present {i + 1}/{len(plan)} ({reps} repeats) "
                               f"{e['file']}")
            frames, rate = self._frames(e["file"])
            result = present_planned(self.link, session, i, frames, rate, reps, isi)
            measured[i] = np.asarray(result.counts, dtype=np.float32)
            if str(i) not in shown:
                shown[str(i)] = {"segment": result.segment, "stimulus_id": result.stimulus_id,
                                 "resumed": result.resumed}
                self.state.mark(k, "presented", shown)
            self._show_rows(k, items, plan, predicted, measured)
        if not self.state.done(k, "present"):
            self.state.mark(k, "present", {"session": str(session.relative_to(self.paths.out)),
                                           "presentations": len(plan), "seconds": _seconds_since(t0)})
        return measured

    def _finetune(self, k: int, model: Path) -> None:
        if self.state.done(k, "finetune"):
            return
        f = self.p.finetune
        twin = self._load(model)
        recordings: list[tuple[Path, list[str]]] = []
        if f.include_training_data:
            data = twin_training_recording(twin, "[finetune] include_training_data = false")
            segments = list(twin.metadata.training.get("train_segments") or [])
            if not segments:
                raise InsilicoError("the twin does not name its training segments: set [finetune] "
                                    "include_training_data = false in the protocol")
            recordings.append((data, segments))
        for j in range(1, k + 1):
            with open_recording(self.paths.session(j)) as rec:
                recordings.append((self.paths.session(j), [s.name for s in rec.segments]))
        n_sessions = k
        self.view.step(f"round {k}/{self.p.rounds}: fine-tune ({f.mode}, {f.epochs} epoch{'s' if f.epochs > 1 else ''}) "
                       f"on {n_sessions} "
                       f"session{'s' if n_sessions > 1 else ''}" + (" + training data" if f.include_training_data else ""))
        t0 = time.perf_counter()
        shares = None
        if f.include_training_data and f.session_share is not None:
            # The training data keeps the rest; the sessions split the share by length.
            shares = [1.0 - f.session_share] + [None] * n_sessions
        focus = ([[]] if f.include_training_data else []) + [self._focus(j) for j in range(1, k + 1)]
        run = finetune_twin(twin, recordings, self.paths.twin(k), config=finetune_config(f), cache=self.cache,
                            val_fraction=val_fraction_for(recordings, f.window), shares=shares,
                            focus=focus, focus_weight=f.focus_weight, progress=self.view.progress)
        self.state.mark(k, "finetune", {"model": str(self.paths.twin(k).relative_to(self.paths.out)),
                                        "mode": f.mode, "epochs_run": run.result.epochs_run,
                                        "final_loss": run.result.train_loss[-1], "seconds": _seconds_since(t0)})

    def _focus(self, k: int) -> list[LossFocus]:
        """Round k's session: each target cell over its objective window, in every clip shown for it."""
        items, plan = self.state.record(k, "design"), self.state.record(k, "plan")
        shown = self.state.get(k, "presented", {})
        return [LossFocus(shown[str(e["index"])]["segment"], items[i]["cell_index"], *items[i]["window"])
                for e in plan for i, _ in e["uses"]]

    def _evaluate(self, k: int) -> None:
        if self.state.done(k, "evaluate"):
            return
        self.view.step(f"round {k}/{self.p.rounds}: the fine-tuned twin on the held-out movie")
        record = evaluation_record(self._load(self.paths.twin(k)), *self.heldout, self.cache)
        self.state.mark(k, "evaluate", record)
        self.view.note(f"round {k}: held-out CC {record['cc_mean']:.3f} (start "
                       f"{self.state.record(0, 'baseline')['cc_mean']:.3f})")

    def _summarise(self, k: int, model: Path, items, plan, predicted, measured) -> Path:  # noqa: ANN001
        rows = response_rows(items, plan, predicted, measured)
        traces = {}
        for n, r in enumerate(rows):
            e = plan[r["plan_index"]]
            ci = items[r["item"]]["cell_index"]
            traces[f"pred_{n}"] = predicted[e["index"]][:, ci]
            traces[f"meas_{n}"] = np.nanmean(measured[e["index"]][:, :, ci], axis=0)
        rdir = self.paths.round_dir(k)
        with atomic_path(rdir / "traces.npz") as tmp:
            np.savez(tmp, **traces)
        steps = {s: self.state.get(k, s) for s in ("predict", "present", "finetune", "evaluate")}
        design_seconds = sum(self.state.record(k, f"design:{o}")["seconds"] for o in self.p.design.objectives)
        summary = {
            "round": k, "model": str(model), "finetuned_model": str(self.paths.twin(k)),
            "session": str(self.paths.session(k)), "rows": rows,
            "design_error": design_error(rows), "measured_by_role": by_role(rows, "measured"),
            "predicted_by_role": by_role(rows, "predicted"),
            "measured_by_objective": by_objective(rows, "measured"),
            "predicted_by_objective": by_objective(rows, "predicted"),
            "heldout": {key: steps["evaluate"][key] for key in ("cc_mean", "feve_mean", "segment")},
            "heldout_baseline": self.state.record(0, "baseline")["cc_mean"],
            "target_accuracy": {str(it["cell"]): it.get("twin_accuracy") for it in items},
            "seconds": {"design": round(design_seconds, 3), "predict": steps["predict"]["seconds"],
                        "present": steps["present"]["seconds"], "finetune": steps["finetune"]["seconds"],
                        "evaluate": steps["evaluate"]["seconds"]},
            "finetune": steps["finetune"],
        }
        path = write_json(rdir / "summary.json", summary)
        self.state.mark(k, "summary", {"path": str(path.relative_to(self.paths.out))})
        self._show_summary(k)
        return path

    # --- live view ---------------------------------------------------------------------------------
    def _show_rows(self, k: int, items, plan, predicted, measured) -> None:  # noqa: ANN001
        current = [ResponseRow(k, r["cell"], r["objective"], r["role"], r["predicted"], r["measured"])
                   for r in response_rows(items, plan, predicted, measured)]
        self.rows = [r for r in self.rows if r.round_index != k] + current
        self.view.set_rows(self.rows)

    def _show_summary(self, k: int) -> None:
        import json

        s = json.loads((self.paths.round_dir(k) / "summary.json").read_text())
        self.rows = [r for r in self.rows if r.round_index != k] + [
            ResponseRow(k, r["cell"], r["objective"], r["role"], r["predicted"], r["measured"]) for r in s["rows"]]
        self.view.set_rows(self.rows)
        err = s["design_error"]["mae"]
        self.view.note(f"round {k}: twin error on its designs {err:.3f} spikes/bin; held-out CC "
                       f"{s['heldout']['cc_mean']:.3f}")


# --- figures of a round (pure functions, shared with the report) -------------------------------------
def response_rows(items: list[dict[str, Any]], plan: list[dict[str, Any]], predicted: dict[int, np.ndarray],
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
        for i, role in e["uses"]:
            item = items[i]
            a, b = item["window"]
            ci = item["cell_index"]
            pred = predicted[e["index"]][a:b].mean(axis=0)
            row = {
                "item": i, "plan_index": e["index"], "cell": item["cell"], "objective": item["objective"], "role": role,
                "window": [a, b], "file": e["file"], "predicted": float(pred[ci]),
                "predicted_margin": margin(pred, ci), "measured": None, "measured_sem": None, "measured_margin": None,
            }
            counts = measured.get(e["index"])
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

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from insilico.design.response import TwinResponse
from insilico.design.run import DesignResult, optimize_cells
from insilico.loop.archive import round_designs, write_session_nwb
from insilico.loop.evaluation import (
    evaluation_record,
    finetune_config,
    heldout_source,
    seconds_since,
    training_recording_and_segments,
    val_fraction_for,
)
from insilico.loop.live import LiveView, ResponseRow
from insilico.loop.presenting import present_planned
from insilico.loop.protocol import ClosedLoopProtocol
from insilico.loop.records import ROLES, DesignItem, PlanEntry
from insilico.loop.rig_link import RigLink
from insilico.loop.rows import by_objective, by_role, design_error, response_rows
from insilico.loop.state import RunState
from stimuli.errors import InsilicoError
from stimuli.files import atomic_path, write_json
from stimuli.nwb import NwbSessionMetadata
from stimuli.recording import open_recording
from vist_model.data import LossFocus
from vist_model.features import FeatureCache
from vist_model.fit_twin import finetune_twin, resolve_device
from vist_model.twin import Twin


@dataclass(frozen=True)
class LoopPaths:
    out: Path

    def round_dir(self, k: int) -> Path:
        return self.out / f"round_{k}"

    def session(self, k: int) -> Path:
        return self.round_dir(k) / "session.h5"

    def twin(self, k: int) -> Path:
        return self.round_dir(k) / "twin"


@dataclass(frozen=True, eq=False)
class Round:
    """What one round has so far: its designs, plan, predicted rates `[T, N]` and measured
    counts `[R, T, N]` per plan index (empty before the presentations)."""

    k: int
    model: Path
    items: list[DesignItem]
    plan: list[PlanEntry]
    predicted: dict[int, np.ndarray]
    measured: dict[int, np.ndarray] = field(default_factory=dict)


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
        r = Round(k, model, items, plan, self._predict(k, twin, plan))
        self._show_rows(r)
        r = self._present(r)
        if self.nwb is not None:
            designs = round_designs(items, plan, self.state.get(k, "presented", {}), model)
            write_session_nwb(self.paths.session(k), self.nwb, designs)
        self._finetune(k, model)
        self._evaluate(k)
        return self._summarize(r)

    # --- steps -------------------------------------------------------------------------------------
    def _design(self, k: int, twin: Twin) -> list[DesignItem]:
        if self.state.done(k, "design"):
            return [DesignItem.from_json(d) for d in self.state.record(k, "design")]
        d = self.p.design
        rdir = self.paths.round_dir(k)
        items: list[DesignItem] = []
        # One call per objective designs every target: the natural-clip screen (the twin over
        # the whole training movie) is built once per call, not once per cell.
        for n, objective in enumerate(d.objectives, 1):
            key = f"design:{objective}"
            if not self.state.done(k, key):
                self.view.step(f"round {k}/{self.p.rounds}: design {objective} ({n}/{len(d.objectives)}) for "
                               f"cells {', '.join(map(str, d.cells))}")
                t0 = time.perf_counter()
                starts = self._starts(k, objective)
                results = optimize_cells(twin, list(d.cells), rdir / "designs" / objective, d.settings_for(objective),
                                         cache=self.cache, progress=self.view.progress, starts=starts)
                records = [self._item(k, twin, objective, r, starts) for r in results]
                self.state.mark(k, key, {"items": [r.to_json() for r in records], "seconds": seconds_since(t0)})
            items.extend(DesignItem.from_json(x) for x in self.state.record(k, key)["items"])
        self.state.mark(k, "design", [item.to_json() for item in items])
        return items

    def _item(self, k: int, twin: Twin, objective: str, r: DesignResult, starts: dict[int, Path]) -> DesignItem:
        """The design item of one result, said in the live view."""
        acc = twin.metadata.cell_accuracy(r.cell_id)
        item = DesignItem(
            cell=r.cell_id, cell_index=r.cell_index, objective=objective, window=tuple(r.window),
            files={role: str(r.paths[role].relative_to(self.paths.out)) for role in ROLES if role in r.paths},
            design_predicted=r.predicted, rms_contrast=r.budget.rms, method=r.method, seconds=round(r.seconds, 3),
            refined_from=str(starts[r.cell_id]) if r.cell_id in starts else None,
            twin_accuracy=None if acc is None else acc.to_json())
        known = "" if acc is None else f"; {acc.describe()}" + ("" if acc.known else " (twin does not know it)")
        self.view.note(f"round {k}: cell {r.cell_id} {objective}: predicted design "
                       f"{r.predicted['design']:.3f}, natural {r.predicted['natural']:.3f}, "
                       f"parametric {r.predicted.get('parametric', float('nan')):.3f}{known}")
        return item

    def _starts(self, k: int, objective: str) -> dict[int, Path]:
        """With `design.refine`, round k-1's design files of this objective, per cell."""
        if not self.p.design.refine or k == 1:
            return {}
        earlier = (DesignItem.from_json(d) for d in self.state.record(k - 1, "design"))
        return {item.cell: self.paths.out / item.files["design"] for item in earlier if item.objective == objective}

    def _plan(self, k: int, items: list[DesignItem]) -> list[PlanEntry]:
        """Distinct clips to show, in order; each lists the (item, role) pairs it serves."""
        if self.state.done(k, "plan"):
            return [PlanEntry.from_json(e) for e in self.state.record(k, "plan")]
        from rig_bridge.protocol import stimulus_id

        roles = ("design", *self.p.design.controls)
        order: list[str] = []
        first: dict[str, tuple[str, int]] = {}  # stimulus id -> (file, frames)
        uses: dict[str, list[tuple[int, str]]] = {}
        for i, item in enumerate(items):
            for role in roles:
                if role not in item.files:
                    continue
                frames, rate = self._frames(item.files[role])
                sid = stimulus_id(frames, rate)
                if sid not in first:
                    order.append(sid)
                    first[sid] = (item.files[role], int(frames.shape[0]))
                uses.setdefault(sid, []).append((i, role))
        plan = [PlanEntry(n, first[sid][0], sid, first[sid][1], tuple(uses[sid])) for n, sid in enumerate(order)]
        self.state.mark(k, "plan", [e.to_json() for e in plan])
        return plan

    def _frames(self, rel: str) -> tuple[np.ndarray, float]:
        with open_recording(self.paths.out / rel) as rec:
            return np.asarray(rec.frames()), float(rec.frame_rate)

    def _predict(self, k: int, twin: Twin, plan: list[PlanEntry]) -> dict[int, np.ndarray]:
        path = self.paths.round_dir(k) / "predicted.npz"
        if self.state.done(k, "predict") and path.is_file():
            with np.load(path) as z:
                return {int(name[1:]): z[name] for name in z.files}
        self.view.step(f"round {k}/{self.p.rounds}: the twin predicts {len(plan)} clips")
        t0 = time.perf_counter()
        response = TwinResponse([twin], lead_in=None)  # the whole receptive field of grey before each clip
        clips = {e.index: self._frames(e.file)[0] for e in plan}
        out: dict[int, np.ndarray] = {}
        for length in sorted({len(c) for c in clips.values()}):
            same = [i for i, c in clips.items() if len(c) == length]  # one batched pass per clip length
            out.update(zip(same, response.rates(np.stack([clips[i] for i in same])), strict=True))
        with atomic_path(path) as tmp:
            np.savez(tmp, **{f"p{i}": v for i, v in out.items()})
        self.state.mark(k, "predict", {"seconds": seconds_since(t0)})
        return out

    def _present(self, r: Round) -> Round:
        """The round with its measured spike counts `[R, T, N]` (one row per repeat) per plan index."""
        k = r.k
        session = self.paths.session(k)
        reps, isi = self.p.presentation.repeats, self.p.presentation.isi_grey_frames
        shown = dict(self.state.get(k, "presented", {}))
        measured: dict[int, np.ndarray] = {}
        t0 = time.perf_counter()
        for e in r.plan:
            i = e.index
            if str(i) not in shown:
                self.view.step(f"round {k}/{self.p.rounds}: present {i + 1}/{len(r.plan)} ({reps} repeats) {e.file}")
            frames, rate = self._frames(e.file)
            result = present_planned(self.link, session, i, frames, rate, reps, isi)
            measured[i] = np.asarray(result.counts, dtype=np.float32)
            if str(i) not in shown:
                shown[str(i)] = {"segment": result.segment, "stimulus_id": result.stimulus_id,
                                 "resumed": result.resumed}
                self.state.mark(k, "presented", shown)
            self._show_rows(replace(r, measured=measured))
        if not self.state.done(k, "present"):
            self.state.mark(k, "present", {"session": str(session.relative_to(self.paths.out)),
                                           "presentations": len(r.plan), "seconds": seconds_since(t0)})
        return replace(r, measured=measured)

    def _finetune(self, k: int, model: Path) -> None:
        if self.state.done(k, "finetune"):
            return
        f = self.p.finetune
        twin = self._load(model)
        recordings: list[tuple[Path, list[str]]] = []
        if f.include_training_data:
            recordings.append(training_recording_and_segments(twin, "[finetune] include_training_data = false"))
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
                                        "final_loss": run.result.train_loss[-1], "seconds": seconds_since(t0)})

    def _focus(self, k: int) -> list[LossFocus]:
        """Round k's session: each target cell over its objective window, in every clip shown for it."""
        items = [DesignItem.from_json(d) for d in self.state.record(k, "design")]
        plan = [PlanEntry.from_json(e) for e in self.state.record(k, "plan")]
        shown = self.state.get(k, "presented", {})
        return [LossFocus(shown[str(e.index)]["segment"], items[i].cell_index, *items[i].window)
                for e in plan for i, _ in e.uses]

    def _evaluate(self, k: int) -> None:
        if self.state.done(k, "evaluate"):
            return
        self.view.step(f"round {k}/{self.p.rounds}: the fine-tuned twin on the held-out movie")
        record = evaluation_record(self._load(self.paths.twin(k)), *self.heldout, self.cache)
        self.state.mark(k, "evaluate", record)
        self.view.note(f"round {k}: held-out CC {record['cc_mean']:.3f} (start "
                       f"{self.state.record(0, 'baseline')['cc_mean']:.3f})")

    def _summarize(self, r: Round) -> Path:
        """`summary.json` and `traces.npz` of a finished round (the report reads them)."""
        k = r.k
        rows = response_rows(r.items, r.plan, r.predicted, r.measured)
        rdir = self.paths.round_dir(k)
        self._write_traces(rdir / "traces.npz", r, rows)
        steps = {s: self.state.get(k, s) for s in ("predict", "present", "finetune", "evaluate")}
        design_seconds = sum(self.state.record(k, f"design:{o}")["seconds"] for o in self.p.design.objectives)
        summary = {
            "round": k, "model": str(r.model), "finetuned_model": str(self.paths.twin(k)),
            "session": str(self.paths.session(k)), "rows": rows,
            "design_error": design_error(rows), "measured_by_role": by_role(rows, "measured"),
            "predicted_by_role": by_role(rows, "predicted"),
            "measured_by_objective": by_objective(rows, "measured"),
            "predicted_by_objective": by_objective(rows, "predicted"),
            "heldout": {key: steps["evaluate"][key] for key in ("cc_mean", "feve_mean", "segment")},
            "heldout_baseline": self.state.record(0, "baseline")["cc_mean"],
            "target_accuracy": {str(it.cell): it.twin_accuracy for it in r.items},
            "seconds": {"design": round(design_seconds, 3), "predict": steps["predict"]["seconds"],
                        "present": steps["present"]["seconds"], "finetune": steps["finetune"]["seconds"],
                        "evaluate": steps["evaluate"]["seconds"]},
            "finetune": steps["finetune"],
        }
        path = write_json(rdir / "summary.json", summary)
        self.state.mark(k, "summary", {"path": str(path.relative_to(self.paths.out))})
        self._show_summary(k)
        return path

    @staticmethod
    def _write_traces(path: Path, r: Round, rows: list[dict]) -> None:
        """Per row, the predicted `[T]` and repeat-mean measured `[T]` trace of its target cell."""
        traces = {}
        for n, row in enumerate(rows):
            e = r.plan[row["plan_index"]]
            ci = r.items[row["item"]].cell_index
            traces[f"pred_{n}"] = r.predicted[e.index][:, ci]
            traces[f"meas_{n}"] = np.nanmean(r.measured[e.index][:, :, ci], axis=0)
        with atomic_path(path) as tmp:
            np.savez(tmp, **traces)

    # --- live view ---------------------------------------------------------------------------------
    def _show_rows(self, r: Round) -> None:
        current = [ResponseRow(r.k, x["cell"], x["objective"], x["role"], x["predicted"], x["measured"])
                   for x in response_rows(r.items, r.plan, r.predicted, r.measured)]
        self.rows = [x for x in self.rows if x.round_index != r.k] + current
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

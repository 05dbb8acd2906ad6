"""`insilico run PROTOCOL`: run (or resume) a protocol against a rig, into one folder.

The run state (`OUT/state.json`) is rewritten after every step and the rig bridge journals
every presentation, so after a crash or Ctrl-C the same command continues where it stopped
and never shows a stored presentation again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from insilico.console import console
from insilico.loop.archive import nwb_metadata, write_session_nwb
from insilico.loop.characterize import render
from insilico.loop.evaluation import (
    evaluation_record,
    finetune_config,
    heldout_source,
    training_recording_and_segments,
    val_fraction_for,
)
from insilico.loop.live import LiveView
from insilico.loop.presenting import present_planned
from insilico.loop.protocol import (
    CharacterizeProtocol,
    ClosedLoopProtocol,
    EvaluationPlan,
    FinetuneProtocol,
    NewRetinaProtocol,
    Protocol,
    load_protocol,
)
from insilico.loop.rig_link import RigLink
from insilico.loop.state import RunState
from stimuli.errors import InsilicoError
from stimuli.files import write_json
from stimuli.nwb import NwbSessionMetadata
from stimuli.recording import open_recording

if TYPE_CHECKING:
    from vist_model.features import FeatureCache
    from vist_model.twin import Twin


@dataclass(frozen=True)
class RunOutcome:
    """Where a finished run left its results."""

    kind: str
    out: Path
    report: Path | None
    files: tuple[Path, ...]
    seconds: float


def run_protocol(
    protocol_path: str | Path | Protocol,
    model: str | Path | None,
    rig: str | None,
    out_dir: str | Path,
    *,
    keys: str | Path | None = None,
    insecure: bool = False,
    timeout_s: float = 30.0,
    data: str | Path | None = None,
    live: bool = True,
    feature_cache: str | Path | None = None,
    nwb: str | Path | None = None,
) -> RunOutcome:
    """Run or resume a protocol.

    Args:
        protocol_path: TOML file (`protocols/*.toml`), or a protocol built in code (the demo's).
        model: the twin's run folder (closed loop, fine-tuning); unused by `characterize`.
        rig: rig server address `tcp://HOST:PORT` (closed loop, characterize).
        out_dir: the experiment folder; rerun with the same arguments to resume.
        keys: CurveZMQ key folder (`insilico rig keys`); or `insecure` for plain TCP on loopback.
        timeout_s: seconds of rig silence before a presentation fails.
        data: `finetune`: the session file (overrides the protocol's `[data] session`).
        live: show the rich live view (off: one line per step).
        feature_cache: backbone feature cache folder (default `OUT/features`).
        nwb: TOML of session and subject metadata: also write every session as NWB
            (`session.nwb` beside `session.h5`; see `insilico.loop.archive`).
    """
    t0 = time.perf_counter()
    protocol = protocol_path if isinstance(protocol_path, Protocol) else load_protocol(protocol_path)
    archive = nwb_metadata(nwb) if nwb is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from vist_model.features import (
        FeatureCache,  # torch: loaded when a protocol runs, not on import
    )

    cache = FeatureCache(Path(feature_cache) if feature_cache else out / "features")
    link = RigLink(rig, Path(keys) if keys else None, insecure=insecure, timeout_s=timeout_s)
    view = LiveView(f"{protocol.kind} · {protocol.path.name}", enabled=live)
    try:
        with view:
            if isinstance(protocol, ClosedLoopProtocol):
                from insilico.loop.closed_loop import ClosedLoop

                model_path = _need_model(model)
                summaries = ClosedLoop(protocol, model_path, out, link, view, cache, nwb=archive).run()
                view.step("writing the report")
                from insilico.loop.report import write_report

                report = write_report(out, protocol.description)
                view.step("done")
                return RunOutcome(protocol.kind, out, report, (*summaries, report), time.perf_counter() - t0)
            if isinstance(protocol, NewRetinaProtocol):
                files = run_new_retina(protocol, model, out, link, view, cache, nwb=archive)
                return RunOutcome(protocol.kind, out, files[-1], files, time.perf_counter() - t0)
            if isinstance(protocol, CharacterizeProtocol):
                files = run_characterize(protocol, out, link, view, nwb=archive)
                return RunOutcome(protocol.kind, out, None, files, time.perf_counter() - t0)
            files = run_finetune(protocol, _need_model(model), data, out, view, cache)
            return RunOutcome(protocol.kind, out, None, files, time.perf_counter() - t0)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: progress is saved in {out / 'state.json'}; "
                      "run the same command again to continue")
        raise
    finally:
        link.close()


def _need_model(model: str | Path | None) -> Path:
    if model is None:
        raise InsilicoError("this protocol needs a twin: give --model RUN_DIR")
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"--model {path}: no such run folder or checkpoint")
    return path


def run_characterize(protocol: CharacterizeProtocol, out: Path, link: RigLink, view: LiveView, *,
                     nwb: NwbSessionMetadata | None = None) -> tuple[Path, ...]:
    """Show every stimulus of the protocol into `OUT/characterize/session.h5`.

    A session file holds as many repeats per presentation as its first presentation, so the
    stimuli are shown in order of decreasing repeats (stable: equal repeats keep file order).
    """
    state = RunState.open(out, protocol.digest, protocol.kind, None)
    session = out / "characterize" / "session.h5"
    order = sorted(protocol.stimuli, key=lambda s: -s.repeats)
    client = None
    for k, spec in enumerate(order):
        key = f"present:{spec.name}"
        if state.done(0, key):
            continue
        if client is None:
            client = link()
        h, w = client.rig.screen or (None, None)
        if h is None:
            raise InsilicoError(f"the rig at {link.address} does not report its screen size")
        rate = client.rig.frame_rate
        view.step(f"present {k + 1}/{len(order)}: {spec.name} ({spec.family}, {spec.repeats} repeats)")
        t0 = time.perf_counter()
        frames = render(spec, h, w, rate)
        shown = present_planned(link, session, k, frames, rate, spec.repeats, protocol.presentation.isi_grey_frames)
        state.mark(0, key, {"segment": shown.segment, "family": spec.family, "frames": int(frames.shape[0]),
                            "repeats": spec.repeats, "spikes": float(shown.counts.sum()),
                            "seconds": round(time.perf_counter() - t0, 3)})
        view.note(f"{spec.name}: {int(shown.counts.sum())} spikes stored as {shown.segment}")
    index = {s.name: state.record(0, f"present:{s.name}") for s in protocol.stimuli}
    path = write_json(out / "characterize" / "stimuli.json", {"session": str(session), "stimuli": index})
    if nwb is not None:
        view.step(f"writing {session.with_suffix('.nwb')}")
        return session, path, write_session_nwb(session, nwb)
    view.step(f"done: {session}")
    return session, path


def run_new_retina(protocol: NewRetinaProtocol, model: str | Path | None, out: Path, link: RigLink, view: LiveView,
                   cache: FeatureCache, *, nwb: NwbSessionMetadata | None = None) -> tuple[Path, ...]:
    """Characterise a new retina, fit it onto a trained core, then run the closed-loop rounds.

    OUT/characterize/ holds the characterisation (as `characterize`), OUT/twin/ the fitted twin
    (`vist_model.core.fit_on_core`; a rerun finding it skips the fit), OUT/loop/ the rounds and
    their report (as `mei_closed_loop`).
    """
    from dataclasses import replace

    from vist_model.core import fit_on_core

    core = Path(model) if model is not None else protocol.core.path
    if core is None:
        raise InsilicoError(f"{protocol.path}: name the trained core in [core] path, or give --model RUN_DIR")
    if not core.exists():
        raise FileNotFoundError(f"core {core}: no such run folder or twin")
    session, index_path = run_characterize(protocol.characterize, out, link, view, nwb=nwb)[:2]
    index = json.loads(index_path.read_text(encoding="utf-8"))["stimuli"]
    plan = protocol.core
    segment = {name: index[name]["segment"] for name in (*plan.train, plan.noise, plan.test)}
    twin_dir = out / "twin"
    if not (twin_dir / "model.pt").is_file():  # written last, by rename: there only once the fit finished
        view.step(f"fit the new retina onto {core} (readout on {' and '.join(plan.train)}, receptive fields "
                  f"from {plan.noise})")
        fit_on_core(core, session, [segment[name] for name in plan.train], twin_dir, finetune_core=plan.finetune_core,
                    noise_segment=segment[plan.noise], cache=cache, progress=view.progress)
    from vist_model.twin import Twin

    twin = Twin.load(twin_dir)
    cells = protocol.loop.design.cells or _best_cells(twin, plan.top_cells)
    view.note(f"fitted twin: held-out median CC {twin.metadata.accuracy.median_cc():.3f} on {plan.test}; designing "
              f"for cells {', '.join(map(str, cells))}")
    loop = replace(protocol.loop, design=replace(protocol.loop.design, cells=tuple(cells)),
                   evaluation=EvaluationPlan(segment=segment[plan.test], data=session))
    from insilico.loop.closed_loop import ClosedLoop
    from insilico.loop.report import write_report

    summaries = ClosedLoop(loop, twin_dir, out / "loop", link, view, cache, nwb=nwb).run()
    view.step("writing the report")
    report = write_report(out / "loop", protocol.description)
    view.step("done")
    return (session, index_path, twin_dir, *summaries, report)


def _best_cells(twin: Twin, k: int) -> list[int]:
    """The `k` cells the twin predicts best on its held-out segment (by CC)."""
    acc = twin.metadata.accuracy
    if acc is None or not acc.n_frames:
        raise InsilicoError("the fitted twin has no held-out accuracy to choose cells by: name [design] cells")
    known = sorted((c for c in acc.cells if np.isfinite(c.cc)), key=lambda c: -c.cc)
    return [c.cell_id for c in known[:k]]


def run_finetune(protocol: FinetuneProtocol, model: Path, data: str | Path | None, out: Path, view: LiveView,
                 cache: FeatureCache) -> tuple[Path, ...]:
    """Fine-tune a twin on a session file; score it on the held-out movie before and after."""
    from vist_model.fit_twin import finetune_twin
    from vist_model.twin import Twin

    session = Path(data) if data else protocol.session
    if session is None:
        raise InsilicoError(f"{protocol.path}: name the session file in [data] session, or give --data FILE")
    if not session.is_file():
        raise FileNotFoundError(f"session file {session} not found")
    state = RunState.open(out, protocol.digest, protocol.kind, str(model))
    twin = Twin.load(model)
    with open_recording(session) as rec:
        names = [s.name for s in rec.segments]
    segments = list(protocol.segments) or names
    unknown = [s for s in segments if s not in names]
    if unknown:
        raise InsilicoError(f"segment {unknown[0]!r} is not in {session} (segments: {', '.join(names)})")
    heldout = heldout_source(protocol, twin)
    if not state.done(0, "before"):
        view.step("the twin on the held-out movie, before fine-tuning")
        state.mark(0, "before", evaluation_record(twin, *heldout, cache))
    f = protocol.finetune
    recordings: list[tuple[Path, list[str]]] = [(session, segments)]
    if f.include_training_data:
        recordings.insert(0, training_recording_and_segments(twin, "[finetune] include_training_data = false"))
    if not state.done(0, "finetune"):
        view.step(f"fine-tune ({f.mode}, {f.epochs} epochs) on {session}")
        t0 = time.perf_counter()
        finetune_twin(twin, recordings, out / "twin", config=finetune_config(f), cache=cache,
                      val_fraction=val_fraction_for(recordings, f.window), progress=view.progress)
        state.mark(0, "finetune", {"model": str(out / "twin"), "seconds": round(time.perf_counter() - t0, 3)})
    if not state.done(0, "after"):
        view.step("the fine-tuned twin on the held-out movie")
        state.mark(0, "after", evaluation_record(Twin.load(out / "twin"), *heldout, cache))
    before, after = state.record(0, "before"), state.record(0, "after")
    path = write_json(out / "finetune.json", {
        "session": str(session), "segments": segments, "model": str(model), "finetuned_model": str(out / "twin"),
        "heldout_before": {k: before[k] for k in ("cc_mean", "feve_mean", "segment")},
        "heldout_after": {k: after[k] for k in ("cc_mean", "feve_mean", "segment")},
    })
    view.note(f"held-out CC {before['cc_mean']:.3f} -> {after['cc_mean']:.3f}")
    return out / "twin", path


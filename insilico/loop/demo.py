"""`insilico demo`: the whole closed loop on built-in data, on one machine, no GPU.

Simulate a small retina recording -> train a twin (cpu preset, default backbone) -> pick target
cells (42 and the two the twin predicts best) -> start a simulated rig server (a subprocess,
the same retina as the recording) -> two closed-loop rounds through the bridge -> report.

With `new_retina` (`insilico demo --new-retina`), then: a second simulated rig with a retina the
twin never saw (another seed, other cells) -> the `new_retina` protocol at demo sizes: a short
characterisation, the new retina fitted onto the demo twin's core (its readout alone), one round
of design on the fitted twin -> its report.

Every stage is resumable: run the same command again after an interruption.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from insilico.console import console, progress
from insilico.design.settings import DESIGN_PRESETS, DesignSettings, design_settings
from insilico.loop.protocol import (
    CONTROLS,
    CharacterizeProtocol,
    CharacterizeStimulus,
    ClosedLoopProtocol,
    CorePlan,
    DesignPlan,
    EvaluationPlan,
    FinetunePlan,
    NewRetinaProtocol,
    Presentation,
    protocol_digest,
)
from insilico.loop.runner import RunOutcome, run_protocol
from insilico.loop.state import STATE_FILE
from rig_bridge.retina.recording import SimulationConfig
from rig_bridge.transport import free_port
from stimuli.files import write_json
from vist_model.accuracy import KNOWS_CELL_CC


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo, chosen to finish in minutes on 2 CPU cores.

    The closed loop's settings are the protocol's own records (`design`, `presentation`,
    `finetune`, `evaluation`), built here as objects: `demo_protocol` puts them together.
    """

    simulation: SimulationConfig = SimulationConfig(
        n_cells=20, size=32, seed=0, train_seconds=45.0, test_seconds=10.0, noise_seconds=30.0)
    # 3 epochs left the demo's twin visibly less accurate than 4 (measured with the `tiny`
    # backbone, docs/benchmarks.md, "The demo's settings"; with `pixels` 4 epochs take 2.6 min).
    train_epochs: int = 4
    backbone: str | None = None  # None: the twin's default (`vist_model.fit_twin.TwinSpec`)
    # The published dense readout on the trimmed grid learns faster than the cpu preset's
    # factorized one, which wins on full recordings: a few epochs on 45 s of movie is the demo.
    readout: str = "dense"
    cmst_padding: str = "valid"
    cells: tuple[int, ...] = (42,)  # always designed for; plus `extra_cells` the twin predicts best
    extra_cells: int = 1
    objectives: tuple[str, ...] = ("increase", "discriminative")
    rounds: int = 2
    # The demo preset of the design settings (`DESIGN_PRESETS["demo"]`: smaller, the same start).
    design: DesignSettings = design_settings(**DESIGN_PRESETS["demo"])
    refine: bool = True  # see DesignPlan.refine (protocols/mei_closed_loop.toml)
    presentation: Presentation = Presentation(repeats=5, isi_grey_frames=30)
    finetune: FinetunePlan = FinetunePlan(mode="readout", epochs=2, batch_size=16, window=40, lr=1e-3,
                                          warmup_epochs=0, include_training_data=True)
    evaluation: EvaluationPlan = EvaluationPlan(segment="mov2")
    # `--new-retina`: a retina the twin never saw, on the same screen and frame rate (the rig's).
    new_retina_seed: int = 1  # the recording's retina is `simulation.seed`
    new_retina_cells: int = 16
    # The shipped protocol's characterisation (protocols/new_retina.toml) cut to demo length.
    new_retina_stimuli: tuple[CharacterizeStimulus, ...] = (
        CharacterizeStimulus("test_movie", "natural_movie", repeats=3, seconds=10.0, seed=1),
        CharacterizeStimulus("white_noise", "white_noise", repeats=1, seconds=30.0, seed=0),
        CharacterizeStimulus("train_movie", "natural_movie", repeats=1, seconds=30.0, seed=2),
    )
    new_retina_rounds: int = 1


def demo_protocol(c: DemoConfig, cells: list[int], where: Path) -> ClosedLoopProtocol:
    """The demo's closed-loop protocol for its target `cells`, as an object (no file)."""
    s = c.simulation
    description = (f"insilico demo: {c.rounds} rounds on a small simulated retina at reduced settings for 2 CPU "
                   f"cores ({s.n_cells} cells, {s.train_seconds:g} s of training movie, {c.train_epochs} training "
                   f"epochs, {len(c.design.seeds)} seed and {c.design.gradient.steps} steps per design, "
                   f"{c.finetune.epochs} fine-tuning epochs, {c.finetune.mode}): it shows the loop working, its "
                   "numbers are not measurements (benchmarks/closed_loop.py for those)")
    design = DesignPlan(cells=tuple(cells), objectives=c.objectives, controls=CONTROLS, settings=c.design,
                        device="cpu", refine=c.refine)
    protocol = ClosedLoopProtocol(path=where, digest="", description=description, rounds=c.rounds,
                                  presentation=c.presentation, design=design, finetune=c.finetune,
                                  evaluation=c.evaluation)
    return replace(protocol, digest=protocol_digest(protocol))


NEW_RETINA_LABEL = Path("insilico demo --new-retina")
"""What the demo's new-retina protocol names as its file (it has none) in messages and the report."""


def new_retina_protocol(c: DemoConfig, where: Path) -> NewRetinaProtocol:
    """The demo's `new_retina` protocol (as `protocols/new_retina.toml`, at demo sizes), as an object."""
    description = (f"insilico demo --new-retina: a simulated retina the twin never saw ({c.new_retina_cells} cells, "
                   f"seed {c.new_retina_seed}), {sum(s.seconds * s.repeats for s in c.new_retina_stimuli):g} s of "
                   f"characterisation, fitted onto the demo twin's core, {c.new_retina_rounds} round(s) of design "
                   "at the demo's reduced settings: it shows the protocol working, its numbers are not measurements "
                   "(benchmarks/core_transfer.py for those)")
    core = CorePlan(top_cells=len(c.cells) + c.extra_cells)
    characterize = CharacterizeProtocol(where, "", description, c.presentation, c.new_retina_stimuli)
    design = DesignPlan(cells=(), objectives=c.objectives, controls=CONTROLS, settings=c.design, device="cpu",
                        refine=c.refine)
    loop = ClosedLoopProtocol(where, "", description, c.new_retina_rounds, c.presentation, design, c.finetune,
                              EvaluationPlan(segment=core.test))
    protocol = NewRetinaProtocol(where, "", description, characterize, core, loop)
    digest = protocol_digest(protocol)  # each part resumes under the whole protocol's digest, as a file's
    return replace(protocol, digest=digest, characterize=replace(characterize, digest=digest),
                   loop=replace(loop, digest=digest))


@contextmanager
def sim_rig(out: Path, seed: int, n_cells: int, size: int) -> Iterator[str]:
    """A simulated rig server (subprocess) of the same retina as the recording; yields its address."""
    port = free_port()
    log = out / "rig.log"
    cmd = [sys.executable, "-m", "rig_bridge.cli", "serve", "--backend", "sim", "--insecure", "--port", str(port),
           "--sim-seed", str(seed), "--sim-cells", str(n_cells), "--sim-size", str(size), "--store",
           str(out / "rig_store")]
    with open(log, "ab") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _stage(timings: dict[str, float], name: str, t0: float) -> None:
    timings[name] = round(time.perf_counter() - t0, 1)
    console.print(f"[green]✓[/] {name}: {timings[name]:.1f} s")


def pick_cells(cc: np.ndarray, cell_ids: tuple[int, ...], fixed: tuple[int, ...], extra: int,
               min_cc: float = KNOWS_CELL_CC) -> tuple[list[int], list[int]]:
    """Targets: the `fixed` cells the twin knows (held-out CC >= `min_cc`), then the cells it
    predicts best until `len(fixed) + extra` are picked. Returns `(picked, fixed cells dropped)`:
    a design for a cell the twin does not predict shows the recorded STA, not the twin."""
    cc = np.nan_to_num(np.asarray(cc, dtype=np.float64), nan=-2.0)
    score = dict(zip(cell_ids, cc, strict=True))
    order = [cell_ids[i] for i in np.argsort(-cc)]
    dropped = [c for c in fixed if c in score and score[c] < min_cc]
    picked = [c for c in fixed if c in score and score[c] >= min_cc]
    picked += [c for c in order if c not in picked and c not in dropped][:len(fixed) + extra - len(picked)]
    return picked, dropped


def run_demo(out_dir: str | Path = "demo", config: DemoConfig | None = None, *, live: bool = True,
             new_retina: bool = False) -> RunOutcome:
    """Run the demo into `out_dir`; returns the closed-loop outcome (its report path), or with
    `new_retina` the new retina's (`out_dir/new_retina/`)."""
    from rig_bridge.retina.recording import simulate_recording
    from stimuli.recording import open_recording
    from vist_model.data import default_train_segments
    from vist_model.evaluate import evaluate_twin
    from vist_model.features import FeatureCache
    from vist_model.fit_twin import TwinSpec, train_twin
    from vist_model.train import CPU_TRAINING
    from vist_model.twin import Twin

    c = config or DemoConfig()
    out = Path(out_dir).resolve()  # the twin records its training data's path: keep it valid from anywhere
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cache = FeatureCache(out / "features")
    started = time.perf_counter()

    data = out / "data" / "sim.h5"
    t0 = time.perf_counter()
    if not data.is_file():
        simulate_recording(data, c.simulation)
    _stage(timings, "simulate the retina recording", t0)

    model = out / "twin"
    t0 = time.perf_counter()
    if not (model / "model.pt").is_file():
        with progress() as bar:
            spec = TwinSpec(kind="vist", preset="cpu", readout=c.readout, cmst_padding=c.cmst_padding,
                            **({"backbone": c.backbone} if c.backbone else {}))
            with open_recording(data) as rec:
                segments = default_train_segments(rec)
            train_twin(data, segments, model, spec=spec,
                       config=replace(CPU_TRAINING, epochs=c.train_epochs), device="cpu", cache=cache,
                       progress=bar)
    _stage(timings, "train the twin", t0)

    t0 = time.perf_counter()
    twin = Twin.load(model, device="cpu")
    acc = twin.metadata.accuracy  # training scored the twin on mov2 already
    cc = (np.array([c.cc for c in acc.cells]) if acc is not None and acc.segment == "mov2"
          else evaluate_twin(twin, data, "mov2", cache=cache).metrics.cc)
    cells, dropped = pick_cells(cc, twin.metadata.cell_ids, c.cells, c.extra_cells)
    for cell in dropped:
        console.print(f"[yellow]note[/]: the twin predicts cell {cell} poorly (held-out CC "
                      f"{cc[twin.metadata.cell_index(cell)]:.2f} < {KNOWS_CELL_CC}); it designs for the cells it "
                      "predicts best instead")
    protocol = demo_protocol(c, cells, Path("insilico demo"))
    _start_over_if_changed(out / "exp", protocol.digest, "the closed loop")
    console.print(f"target cells: {', '.join(map(str, cells))} (the twin's held-out CC "
                  + ", ".join(f"{cc[twin.metadata.cell_index(x)]:.2f}" for x in cells) + ")")
    _stage(timings, "pick target cells", t0)

    t0 = time.perf_counter()
    sim = c.simulation
    with sim_rig(out, sim.seed, sim.n_cells, sim.size) as address:
        console.print(f"simulated rig serving on {address} (log: {out / 'rig.log'})")
        outcome = run_protocol(protocol, model, address, out / "exp", insecure=True, timeout_s=60.0, live=live,
                               feature_cache=out / "features")
    _stage(timings, f"closed loop ({c.rounds} rounds)", t0)
    if new_retina:
        t0 = time.perf_counter()
        outcome = _new_retina(c, out, model, live)
        _stage(timings, "a new retina on the twin's core", t0)
    timings["total"] = round(time.perf_counter() - started, 1)
    write_json(out / "timings.json", timings)
    console.print(f"\n[bold]report:[/] {outcome.report}")
    return outcome


def _new_retina(c: DemoConfig, out: Path, core: Path, live: bool) -> RunOutcome:
    """The `new_retina` protocol on the demo twin's core, against a rig whose retina the twin never saw."""
    from vist_model.twin import Twin

    where = out / "new_retina"
    protocol = new_retina_protocol(c, NEW_RETINA_LABEL)
    _start_over_if_changed(where, protocol.digest, "the new retina")
    where.mkdir(parents=True, exist_ok=True)
    with sim_rig(where, c.new_retina_seed, c.new_retina_cells, c.simulation.size) as address:
        console.print(f"a second simulated rig, a retina the twin never saw (seed {c.new_retina_seed}, "
                      f"{c.new_retina_cells} cells), on {address} (log: {where / 'rig.log'})")
        outcome = run_protocol(protocol, core, address, where, insecure=True, timeout_s=60.0, live=live,
                               feature_cache=out / "features")
    acc = Twin.load(where / "twin", device="cpu").metadata.accuracy
    if acc is not None:
        ratios = [r for r in (x.fraction_of_ceiling for x in acc.cells) if r is not None]
        of_ceiling = f", {np.median(ratios):.2f} of the noise ceiling" if ratios else ""
        console.print(f"the new retina fitted onto the core: held-out median CC {acc.median_cc():.2f}{of_ceiling} "
                      f"on {acc.segment}")
    return outcome


def _start_over_if_changed(folder: Path, digest: str, what: str) -> None:
    """Move `folder` aside when the run in it was started with other settings (another digest)."""
    state = folder / STATE_FILE
    if state.is_file() and json.loads(state.read_text()).get("protocol_digest") != digest:
        console.print(f"[yellow]note[/]: the demo's settings changed; {what} in {folder} starts over")
        _clear_loop(folder)


def _clear_loop(exp: Path) -> None:
    """Move an outdated closed-loop folder aside (never delete an experiment)."""
    exp.rename(exp.with_name(f"{exp.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))

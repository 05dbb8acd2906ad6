"""Closed loop on the simulated retina: wall time of each stage of a round, and the loop's figures.

Runs the demo pipeline (simulate -> train -> design for the targets -> present to a simulated
rig server in a subprocess -> fine-tune -> evaluate) with `--targets` target cells (42 and
the cells the twin predicts best) over `--rounds` rounds, then prints, per round:

- seconds per stage (design, predict, present, fine-tune, evaluate);
- the twin's error predicting the measured response to its own designs;
- the measured response of the targets to the designs and to the controls (best natural
  clip, best parametric stimulus, same contrast budget), per objective by what it asks:
  increase by the target's rate, discriminative by its margin over the strongest other cell;
- the held-out accuracy (mean CC on the repeated test movie) after fine-tuning.

    python benchmarks/closed_loop.py                          # 10 targets, 3 rounds, CPU
                                                              # (fine-tuning as protocols/mei_closed_loop.toml)
    python benchmarks/closed_loop.py --targets 3 --rounds 2 --steps 2 --work /tmp/cl
    python benchmarks/closed_loop.py --start grey     # round 1 from grey (the demo's start before 2026-12-07)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from math import nan
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insilico.design.settings import STARTS, DesignSettings, design_settings  # noqa: E402
from insilico.loop.demo import DemoConfig, run_demo  # noqa: E402
from insilico.loop.report import YARDSTICKS, load_rounds, objectives_of  # noqa: E402
from rig_bridge.retina.recording import SimulationConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/insilico_closed_loop"))
    p.add_argument("--targets", type=int, default=10, help="target cells (42 plus the best predicted)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cells", type=int, default=20, help="cells of the simulated retina")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--retina-seed", type=int, default=0, help="seed of the simulated retina and its stimuli")
    p.add_argument("--train-seconds", type=float, default=60.0)
    p.add_argument("--epochs", type=int, default=4, help="training epochs of the twin")
    p.add_argument("--objectives", default="increase,discriminative")
    p.add_argument("--frames", type=int, default=45)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--trials", type=int, default=4, help="parametric comparison trials")
    p.add_argument("--start", choices=STARTS, default=DesignSettings().start,
                   help="where round 1's designs start (default: as `insilico optimize`, the protocol and the demo)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--finetune", choices=("readout", "full"), default="full")
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--finetune-batch-size", type=int, default=4)
    p.add_argument("--focus-weight", type=float, default=20.0,
                   help="loss weight of each target cell's objective window in the shown clips")
    p.add_argument("--session-share", type=float, default=0.5,
                   help="fraction of fine-tuning windows drawn from the sessions")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                   help="from round 2 on, start each design from the round before's (design.refine)")
    a = p.parse_args()
    base = DemoConfig()
    config = replace(
        base,
        simulation=SimulationConfig(n_cells=a.cells, size=a.size, train_seconds=a.train_seconds,
                                    test_seconds=10.0, noise_seconds=30.0, seed=a.retina_seed),
        train_epochs=a.epochs, extra_cells=a.targets - 1,
        objectives=tuple(a.objectives.split(",")), rounds=a.rounds,
        design=design_settings(base.design, n_frames=a.frames, seeds=a.seeds, steps=a.steps,
                               comparison_trials=a.trials, start=a.start),
        presentation=replace(base.presentation, repeats=a.repeats),
        finetune=replace(base.finetune, mode=a.finetune, epochs=a.finetune_epochs, batch_size=a.finetune_batch_size,
                         session_share=a.session_share, focus_weight=a.focus_weight),
        refine=a.refine,
    )
    outcome = run_demo(a.work, config, live=False)
    timings = json.loads((a.work / "timings.json").read_text())
    rounds = load_rounds(outcome.out)
    state = json.loads((outcome.out / "state.json").read_text())
    baseline = state["steps"]["0"]["baseline"]
    n_targets = len({r["cell"] for r in rounds[0]["rows"]}) if rounds else 0

    print("\nset-up (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"\nstage wall time per round (s), {n_targets} target cells x {len(config.objectives)} objectives, CPU")
    stages = ("design", "predict", "present", "finetune", "evaluate")
    print("round " + " ".join(f"{s:>9}" for s in stages) + "     total")
    for r in rounds:
        sec = r["seconds"]
        print(f"{r['round']:>5} " + " ".join(f"{sec[s]:9.1f}" for s in stages) + f" {sum(sec.values()):9.1f}")

    print(f"\nthe loop's figures (starting twin: held-out CC {baseline['cc_mean']:.3f}, FEVE "
          f"{baseline['feve_mean']:.3f})")
    objectives = objectives_of(rounds)
    print("round  design error  rel.   " + "".join(f"{o[:14] + ': design':>22} {'natural':>8} {'param.':>7}"
                                                   for o in objectives) + "   held-out CC   FEVE")
    for r in rounds:
        m = r["measured_by_objective"]
        print(f"{r['round']:>5}  {r['design_error']['mae']:12.3f}  {r['design_error']['relative']:4.2f}   "
              + "".join(f"{m[o].get('design', nan):22.3f} {m[o].get('natural', nan):8.3f} "
                        f"{m[o].get('parametric', nan):7.3f}" for o in objectives)
              + f"   {r['heldout']['cc_mean']:11.3f}  {r['heldout']['feve_mean']:5.3f}")
    print("(measured, mean over the targets: " + "; ".join(f"{o} by the {YARDSTICKS.get(o, 'rate')}"
                                                           for o in objectives) + ")")
    print(f"\nreport: {outcome.report}")


if __name__ == "__main__":
    main()

"""A new retina on a trained core against twins trained from scratch (issue 19's "done when").

A shared core is trained on some members of `rig_bridge.retina.recording.retina_family(6, seed=0)` (the
first `--core-members`); `--new-member` (the last, 5, unless named) is the new retina, simulated
three times with the same retina and test movie and training movies of `--short` seconds (30),
`--long` seconds (120) and its full family length. On each, on the held-out repeated movie
`mov2`, per-cell CC / noise ceiling (median over cells whose ceiling is above
`RELIABLE_CEILING`) and the wall time of:

- `core+short`, `core+long`: the new retina fitted onto the core (readout only, core frozen,
  `vist_model.core.CORE_FITTING` as `insilico train --core` uses it, whatever `--epochs`);
- `scratch+short`, `scratch+long`: a twin trained from scratch on the same data (`cpu` preset);
- `scratch+full`: from scratch on the full recording.

Done when: core+short >= 0.6 of the ceiling, >= 1.3 x scratch+short, in less time; core+long
within 10 % of scratch+full.

    python benchmarks/core_transfer.py --work W [--core-members 4] [--short 30] [--long 120] [--epochs 16]
    python benchmarks/core_transfer.py --work W --scratch-only   # beside it: the from-scratch twins
    python benchmarks/core_transfer.py --work W --new-member 2   # another new retina on the same core

The core and each from-scratch twin resume from their last epoch after an interruption, and a
core or twin already trained is read back (with the seconds its training took), so the
from-scratch twins can train in a second process while the core trains, and one core serves
every new retina. The new retina's files are named by its member (`new5_short.h5`,
`new5_scratch_short/`, `new5_core_short/`, `core_transfer_new5.json`).

A reduced run for a smoke test (tiny members, few epochs; its figures prove the script runs,
not the claim): `--smoke` (2 core members of 16 cells on 32 px, 20 s training each; the new
member 16 cells with 10 s / 20 s / 40 s; 2 epochs for the core and the from-scratch twins).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rig_bridge.retina.recording import SimulationConfig, retina_family, simulate_recording  # noqa: E402
from vist_model.accuracy import HeldOutAccuracy  # noqa: E402
from vist_model.core import CORE_FITTING, fit_on_core  # noqa: E402
from vist_model.features import FeatureCache  # noqa: E402
from vist_model.fit_twin import train_twin  # noqa: E402
from vist_model.multi import CORE_INDEX, SharedCoreTwin, recording_name, train_shared_core  # noqa: E402
from vist_model.train import CPU_TRAINING  # noqa: E402
from vist_model.twin import Twin, training_finished  # noqa: E402

RELIABLE_CEILING = 0.5
"""Cells whose noise ceiling on mov2 is below this are left out of the median (as unreliable)."""


def normalised_cc(acc: HeldOutAccuracy) -> float:
    """Median over reliable cells of CC / noise ceiling."""
    ratios = [c.cc / c.noise_ceiling for c in acc.cells
              if c.noise_ceiling is not None and c.noise_ceiling > RELIABLE_CEILING and np.isfinite(c.cc)]
    return float(np.median(ratios)) if ratios else float("nan")


def simulate(path: Path, config: SimulationConfig) -> Path:
    return path if path.is_file() else simulate_recording(path, config)


def from_scratch(data: Path, out: Path, config, cache: FeatureCache) -> tuple[Twin, int, float]:  # noqa: ANN001
    """A twin trained from scratch on `data`'s `mov1`, its epochs and training seconds. A twin
    already finished in `out` (by an earlier run, or by `--scratch-only` in a second process
    beside the core's training) is read back with the seconds its training took."""
    if not training_finished(out):
        t = time.perf_counter()
        trained = train_twin(data, ["mov1"], out, config=config, device="cpu", cache=cache)
        return trained.twin, trained.result.epochs_run, time.perf_counter() - t
    summary = json.loads((out / "train.json").read_text())
    return Twin.load(out, device="cpu"), int(summary["epochs_run"]), float(summary["seconds"])


def shared_core(paths: list[Path], out: Path, config, cache: FeatureCache) -> tuple[SharedCoreTwin, float]:  # noqa: ANN001
    """The core trained on `paths` and its training seconds; a core already finished in `out` is
    read back (it must have been trained on the same members)."""
    if not training_finished(out, CORE_INDEX):
        t = time.perf_counter()
        run = train_shared_core([(p, ["mov1"]) for p in paths], out, config=config, device="cpu", cache=cache)
        return run.core, time.perf_counter() - t
    core = SharedCoreTwin.load(out, device="cpu")
    wanted = tuple(recording_name(p) for p in paths)
    if core.names != wanted:
        raise SystemExit(f"{out}: the core there was trained on {list(core.names)}, not {list(wanted)}: "
                         "name another --work or the same --core-members")
    return core, float(json.loads((out / CORE_INDEX).read_text())["result"]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--core-members", type=int, default=4)
    parser.add_argument("--short", type=float, default=30.0)
    parser.add_argument("--long", type=float, default=120.0)
    parser.add_argument("--epochs", type=int, default=CPU_TRAINING.epochs)
    parser.add_argument("--new-member", type=int, default=None,
                        help="the family member fitted as the new retina (default: the last); not a core member")
    parser.add_argument("--smoke", action="store_true", help="tiny members and 2 epochs: proves the script runs")
    parser.add_argument("--scratch-only", action="store_true",
                        help="train only the from-scratch twins (a second process beside the core's; the full run "
                             "then reads them back)")
    args = parser.parse_args()
    family = retina_family(6, seed=0)
    new_member = len(family) - 1 if args.new_member is None else args.new_member
    if not args.core_members <= new_member < len(family):
        parser.error(f"--new-member {new_member}: the core is trained on members 0 to {args.core_members - 1} of "
                     f"{len(family)}; name a member it never saw")
    core_configs, new_config = family[:args.core_members], family[new_member]
    epochs, short, long = args.epochs, args.short, args.long
    if args.smoke:
        shrink = dict(n_cells=16, size=32, test_seconds=6.0, noise_seconds=20.0)
        core_configs = [replace(c, train_seconds=20.0, **shrink) for c in family[:2]]
        new_config = replace(new_config, train_seconds=40.0, **shrink)
        epochs, short, long = 2, 10.0, 20.0
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(work / "features")
    core_paths = [simulate(work / f"member{k}.h5", c) for k, c in enumerate(core_configs)]
    tag = f"new{new_member}"
    new = {name: simulate(work / f"{tag}_{name}.h5", replace(new_config, train_seconds=seconds))
           for name, seconds in (("short", short), ("long", long), ("full", new_config.train_seconds))}
    config = replace(CPU_TRAINING, epochs=epochs)
    if args.scratch_only:
        for name in ("short", "long", "full"):
            _, epochs_run, seconds = from_scratch(new[name], work / f"{tag}_scratch_{name}", config, cache)
            print(f"scratch+{name}: {epochs_run} epochs, {seconds:.0f} s", flush=True)
        return
    rows: dict[str, dict] = {}

    core, core_seconds = shared_core(core_paths, work / "core", config, cache)
    core_ratio = {n: normalised_cc(core.twin(n).metadata.accuracy) for n in core.names}
    print(f"core on {len(core_paths)} members: {core_seconds:.0f} s; CC / ceiling per member {core_ratio}", flush=True)

    def record(name: str, twin: Twin, epochs: int, seconds: float) -> None:
        acc = twin.metadata.accuracy
        rows[name] = {"cc_over_ceiling": normalised_cc(acc), "median_cc": acc.median_cc(), "seconds": seconds,
                      "epochs": epochs}
        print(f"{name:<14} CC / ceiling {rows[name]['cc_over_ceiling']:.3f}  median CC {acc.median_cc():.3f}  "
              f"{seconds:.0f} s", flush=True)

    for name in ("short", "long"):
        t = time.perf_counter()
        fitted = fit_on_core(work / "core", new[name], ["mov1"], work / f"{tag}_core_{name}",
                             config=CORE_FITTING, device="cpu", cache=cache)
        record(f"core+{name}", fitted.twin, fitted.result.epochs_run, time.perf_counter() - t)
    for name in ("short", "long", "full"):
        record(f"scratch+{name}", *from_scratch(new[name], work / f"{tag}_scratch_{name}", config, cache))

    checks = {
        "core+short >= 0.6 of ceiling": rows["core+short"]["cc_over_ceiling"] >= 0.6,
        "core+short >= 1.3 x scratch+short": rows["core+short"]["cc_over_ceiling"]
        >= 1.3 * rows["scratch+short"]["cc_over_ceiling"],
        "core+short faster than scratch+short": rows["core+short"]["seconds"] < rows["scratch+short"]["seconds"],
        "core+long within 10 % of scratch+full": rows["core+long"]["cc_over_ceiling"]
        >= 0.9 * rows["scratch+full"]["cc_over_ceiling"],
    }
    for claim, ok in checks.items():
        print(f"{'yes' if ok else 'NO ':<4}{claim}")
    summary = {"smoke": args.smoke, "core_members": [asdict(c) for c in core_configs], "new_member": new_member,
               "new_config": asdict(new_config),
               "short_seconds": short, "long_seconds": long, "epochs": epochs, "core_seconds": core_seconds,
               "core_cc_over_ceiling": core_ratio, "rows": rows, "checks": checks}
    (work / f"core_transfer_{tag}.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()

"""How far each cell's white-noise RF estimate lies from the simulator's true RF centre, per type.

For recordings written by `insilico simulate` (their retina rebuilds from the file): the linear
STA at each cell's peak lag against `receptive_field_maps` (linear STA or contrast-energy STA,
per cell), both streamed over the noise segment, both located by `rf_centre_and_size`.

    python benchmarks/rf_location.py W/member3/data.h5 [more files]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rig_bridge.retina.recording import retina_of_recording  # noqa: E402
from stimuli.recording import open_recording  # noqa: E402
from stimuli.recording.rf_geometry import rf_centre_and_size  # noqa: E402
from stimuli.recording.sta import ReceptiveFieldAccumulator, StaAccumulator  # noqa: E402

BLOCK = 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recordings", nargs="+", type=Path)
    ap.add_argument("--segment", default="noise")
    args = ap.parse_args()
    print("| file | type | cells | STA: median (max) px, > 4 px | STA or energy: median (max) px | maps chosen |")
    print("|---|---|---|---|---|---|")
    for path in args.recordings:
        with open_recording(path) as rec:
            truth = {c.cell_id: c for c in retina_of_recording(rec.attrs).cells}
            seg = rec.segment(args.segment)
            _, h, w = rec.shape
            sta, both = StaAccumulator(rec.n_cells, h, w), ReceptiveFieldAccumulator(rec.n_cells, h, w)
            for a in range(seg.start, seg.stop, BLOCK):
                b = min(a + BLOCK, seg.stop)
                frames = rec.frames(start=a, stop=b).astype(np.float32) / 255.0
                counts = np.nanmean(rec.counts(start=a, stop=b), axis=0)
                sta.add(frames, counts)
                both.add(frames, counts)
            linear, chosen = sta.result().spatial, both.result()
            rows: dict[str, list[tuple[float, float, str]]] = {}
            for i, cid in enumerate(rec.cell_ids):
                cell = truth[int(cid)]

                def error(rf: np.ndarray, cell=cell) -> float:  # noqa: ANN001
                    return float(np.hypot(*np.subtract(rf_centre_and_size(rf)[0], cell.centre)))

                rows.setdefault(str(cell.type), []).append((error(linear[i]), error(chosen.maps[i]), chosen.kinds[i]))
        for kind, r in sorted(rows.items()):
            old, new = np.array([x[0] for x in r]), np.array([x[1] for x in r])
            picks = ", ".join(f"{k} {n}" for k, n in Counter(x[2] for x in r).items())
            print(f"| {path.parent.name}/{path.name} | {kind} | {len(r)} | {np.median(old):.1f} ({old.max():.1f}), "
                  f"{np.mean(old > 4):.0%} | {np.median(new):.1f} ({new.max():.1f}) | {picks} |")


if __name__ == "__main__":
    main()

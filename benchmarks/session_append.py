"""Cost of appending one presentation to a session file as the file grows (issue 20, item 6).

Both writers are measured in the same run on the same presentations: `RecordingWriter.extend`
(in place, with an undo record) and `RecordingWriter.append_to` (a copy of the whole file,
renamed over it). Each presentation is `--frames` frames of 64 x 64 with counts for `--cells`
cells and `--repeats` repeats.

    python benchmarks/session_append.py [--presentations 60] [--frames 900]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stimuli.recording import RecordingWriter  # noqa: E402


def _append(path: Path, name: str, frames: np.ndarray, counts: np.ndarray, how: str) -> float:
    t0 = time.perf_counter()
    if not path.exists():
        writer = RecordingWriter(path, frame_rate=30.0, height=frames.shape[1], width=frames.shape[2],
                                 cell_ids=np.arange(counts.shape[2]), n_repeats=counts.shape[0])
    else:
        writer = RecordingWriter.extend(path) if how == "in place" else RecordingWriter.append_to(path)
    writer.append_segment(name, frames, counts)
    writer.commit()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presentations", type=int, default=60)
    ap.add_argument("--frames", type=int, default=900)
    ap.add_argument("--cells", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, 64, 64), dtype=np.uint8)
    counts = rng.poisson(1.0, (args.repeats, args.frames, args.cells)).astype(np.float32)
    marks = sorted({0, 1, args.presentations // 2, args.presentations - 1})
    rows: dict[str, list[tuple[int, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for how in ("in place", "copy"):
            path = Path(tmp) / f"{how.replace(' ', '_')}.h5"
            rows[how] = []
            for i in range(args.presentations):
                size = path.stat().st_size / 1e6 if path.exists() else 0.0
                dt = _append(path, f"present{i:03d}", frames, counts, how)
                if i in marks:
                    rows[how].append((i + 1, size, dt))
    print(f"append one presentation ({args.frames} frames 64x64, {args.cells} cells, {args.repeats} repeats)")
    print(f"{'presentation':>13}{'file before (MB)':>18}{'in place (ms)':>15}{'copy (ms)':>11}{'ratio':>8}")
    for (n, size, a), (_, _, b) in zip(rows["in place"], rows["copy"], strict=True):
        print(f"{n:>13}{size:>18.1f}{a * 1e3:>15.1f}{b * 1e3:>11.1f}{b / a:>8.1f}")


if __name__ == "__main__":
    main()

"""Seconds to hash a twin's training recording at `insilico train` (its content digest).

    .venv/bin/python benchmarks/digest.py [--data sim.h5] [--mib 256] [--repeats 3]

`train` stores the recording's SHA-256 (`vist_model.provenance.file_digest`) so that a moved
file is found again by content; that costs one read of the file. The table gives MB/s of the
digest used against BLAKE2b (the baseline, the other hash in the toolkit), best of
`--repeats`, on `--data` or on a file of `--mib` random bytes written for the run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vist_model.provenance import CHUNK_BYTES, file_digest


def _blake2b(path: Path) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _best_seconds(fn, path: Path, repeats: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(path)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data
        if path is None:
            path = Path(tmp) / "random.bin"
            path.write_bytes(os.urandom(args.mib << 20))
        mb = path.stat().st_size / 1e6
        base = _best_seconds(_blake2b, path, args.repeats)
        used = _best_seconds(file_digest, path, args.repeats)
    table = Table(title=f"content digest of {mb:.0f} MB (best of {args.repeats})")
    for col in ("hash", "seconds", "MB/s", "vs BLAKE2b"):
        table.add_column(col, justify="right")
    table.add_row("BLAKE2b-512 (baseline)", f"{base:.3f}", f"{mb / base:.0f}", "1.00")
    table.add_row("SHA-256 (train's digest)", f"{used:.3f}", f"{mb / used:.0f}", f"{base / used:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()

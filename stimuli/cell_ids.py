"""Cell ids as a reader wants them: runs of consecutive ids joined, `0-18, 42`."""

from __future__ import annotations

from collections.abc import Iterable


def id_ranges(ids: Iterable[int]) -> str:
    """`[0, 1, 2, 5, 42]` -> `"0-2, 5, 42"` (sorted, duplicates dropped)."""
    values = sorted({int(i) for i in ids})
    if not values:
        return "none"
    runs: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(runs)

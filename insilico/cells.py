"""Which cells a command works on: `--cell 42`, `--cells 3,42,77` or `--cells all`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from stimuli.cell_ids import id_ranges
from stimuli.errors import InputError, InsilicoError

if TYPE_CHECKING:  # the CLI imports this module before torch is needed
    from vist_model.twin import TwinMetadata


def parse_cells(spec: str | Sequence[int], cell_ids: Sequence[int]) -> list[int]:
    """`"all"`, `"3,42"` or a list of ids -> ids (deduplicated, in order), checked against the twin's."""
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return list(cell_ids)
        try:
            ids = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise InputError(f"cells must be 'all' or comma-separated ids like 3,42, got {spec!r}") from None
    else:
        ids = [int(i) for i in spec]
    if not ids:
        raise InputError("cells names no cell: give an id (42), ids (3,42) or 'all'")
    known = set(cell_ids)
    missing = [i for i in ids if i not in known]
    if missing:
        raise InsilicoError(f"the twin has no cells with ids {missing} (its cell ids: {id_ranges(cell_ids)})")
    return list(dict.fromkeys(ids))


def describe_cell_accuracy(meta: TwinMetadata, cell_id: int) -> str:
    """One console line: how well the twin predicts this cell on held-out data, a warning if poorly."""
    acc = meta.cell_accuracy(cell_id)
    if acc is None:
        return f"[yellow]note[/]: the twin's accuracy on cell {cell_id} was not measured (trained by an older version)"
    warning = acc.warning()
    where = f" on {meta.accuracy.segment}"
    if warning is not None:
        return f"[yellow]warning[/]: {warning}"
    return f"twin's {acc.describe()}{where}"

"""Which cells a command works on: `--cell 42`, `--cells 3,42,77` or `--cells all`.

On a shared-core run folder (`insilico train --data A.h5 --data B.h5`) cells are named by
recording, `--cell A:42` or `--cells A:3,A:42` or `--cells A:all`: a stimulus is shown to one
retina, so the command works on that recording's twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stimuli.cell_ids import id_ranges
from stimuli.errors import InputError, InsilicoError, NotFoundError

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


def on_recording(models: Sequence[Path], spec: str, flag: str = "--cells") -> tuple[list[Path], str]:
    """`--model` paths and a cell list that may name cells `recording:id` -> twins of one recording, plain ids.

    A shared-core run folder becomes its recording's twin (`OUT/A/model.pt` for `A:42`); a folder
    or checkpoint of one recording's twin takes plain ids only.
    """
    from vist_model.core_index import is_shared_core
    from vist_model.multi import core_recordings

    parts = [s.strip() for s in spec.split(",") if s.strip()]
    names = {s.rpartition(":")[0] for s in parts if ":" in s}
    plain = ",".join(s.rpartition(":")[2] for s in parts)
    if len(names) > 1:
        raise InputError(f"{flag} {spec}: a stimulus is shown to one retina, so name cells of one recording "
                         f"(got {', '.join(sorted(names))})")
    if len(names) == 1 and len(parts) > 1 and any(":" not in s for s in parts):
        raise InputError(f"{flag} {spec}: name every cell with its recording ({next(iter(names))}:ID) or none")
    resolved = []
    for model in models:
        if not is_shared_core(model):
            if names:
                raise InputError(f"--model {model} is the twin of one recording: give plain cell ids ({flag} "
                                 f"{plain}), or point --model at the shared-core folder")
            resolved.append(Path(model))
            continue
        recordings = core_recordings(model)
        if not names:
            first = next(iter(recordings))
            raise InputError(f"--model {model} is a shared core of recordings {', '.join(recordings)}: name cells as "
                             f"recording:id ({flag} {first}:{parts[0] if parts else 42}) or use --model "
                             f"{Path(model) / first}")
        name = next(iter(names))
        if name not in recordings:
            raise NotFoundError(f"--model {model}: the core has no recording {name!r} (its recordings: "
                                f"{', '.join(recordings)})")
        resolved.append(recordings[name])
    return resolved, plain


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

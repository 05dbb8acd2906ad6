"""Sessions of a protocol run written as NWB as well (`insilico run --nwb META.toml`).

Each session file `session.h5` gets an NWB copy `session.nwb` beside it once its
presentations are stored; a closed-loop round's copy lists every designed and control clip
(objective, target cell, twin) in its `designs` table. The metadata is checked before the
run shows anything, so an hour of recording never ends in a refused export.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from insilico.loop.records import DesignItem, PlanEntry
from stimuli.errors import InsilicoError
from stimuli.nwb import DesignRecord, NwbSessionMetadata, export_nwb


def nwb_metadata(path: str | Path) -> NwbSessionMetadata:
    """Session and subject metadata from a TOML file, refused now if a required field is missing."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such NWB metadata file")
    meta = NwbSessionMetadata.from_toml(path)
    if meta.missing():
        raise InsilicoError(f"{path}: NWB metadata lacks the subject's {', '.join(meta.missing())} "
                            "(archives require them)")
    return meta


def write_session_nwb(session: Path, meta: NwbSessionMetadata, designs: list[DesignRecord] | None = None) -> Path:
    """Export `session` (recording-v1) to the NWB file beside it; returns its path."""
    out = session.with_suffix(".nwb")
    export_nwb(session, out, meta, designs or ())
    return out


def round_designs(items: Sequence[DesignItem], plan: Sequence[PlanEntry], shown: Mapping[str, Any],
                  twin: Path) -> list[DesignRecord]:
    """One record per (clip, use): the segment that showed it, its objective, cell and role."""
    records = []
    for entry in plan:
        segment = shown[str(entry.index)]["segment"]
        for i, role in entry.uses:
            records.append(DesignRecord(segment, items[i].objective, items[i].cell, str(twin), role))
    return records

"""Show a planned list of clips through the rig bridge, each stored exactly once.

The bridge's session journal (`session.h5.journal`) records an intent before every present
and a "stored" mark after the segment is committed; `RigClient.present` resumes a pending
intent by itself. What it cannot know is that a presentation stored just before a crash
belongs to the runner's plan: a rerun would ask for it again as a new presentation. A round
shows its clips one by one in a fixed order, so the k-th intent of the journal is the k-th
clip of the plan; a stored k-th intent for the same stimulus is read back, not shown again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rig_bridge.client import RigClient
from rig_bridge.journal import SessionJournal
from rig_bridge.protocol import stimulus_id
from rig_bridge.session_file import read_segment_counts, stored_segments
from stimuli.errors import InsilicoError


@dataclass(frozen=True)
class Shown:
    """One clip of the plan as stored in the session file."""

    index: int
    stimulus_id: str
    segment: str
    counts: np.ndarray  # [R, T, N] float32 spike counts per frame bin
    resumed: bool  # True when it was already stored before this call


def journal_intents(session: Path) -> list:
    """The session journal's intents in the order they were made (empty without a journal)."""
    if not Path(f"{os.fspath(session)}.journal").is_file():
        return []
    return list(SessionJournal(session).intents.values())


def already_stored(session: Path, index: int, sid: str) -> str | None:
    """The segment of the plan's `index`-th clip if it is stored already, else None."""
    intents = journal_intents(session)
    if index >= len(intents):
        return None
    intent = intents[index]
    if intent.stimulus_id != sid:
        raise InsilicoError(f"{session}: presentation {index} of the session was stimulus {intent.stimulus_id[:12]}, "
                            f"but the plan now puts {sid[:12]} there: the designs changed since the session "
                            "started; use a new --out folder")
    return intent.segment if intent.segment in stored_segments(session) else None


def present_planned(client_factory, session: Path, index: int, frames: np.ndarray, frame_rate: float,  # noqa: ANN001
                    repeats: int, isi_grey_frames: int) -> Shown:
    """Show the plan's `index`-th clip (frames uint8 `[T, H, W]`) unless it is stored already.

    `client_factory()` returns a connected `RigClient`; it is only called when the rig is needed.
    """
    sid = stimulus_id(np.ascontiguousarray(frames), float(frame_rate))
    segment = already_stored(session, index, sid)
    if segment is not None:
        return Shown(index, sid, segment, read_segment_counts(session, segment, repeats), True)
    n_before = len(journal_intents(session))
    if n_before > index + 1 or (n_before == index + 1 and journal_intents(session)[index].stimulus_id != sid):
        raise InsilicoError(f"{session}: its journal holds {n_before} presentations, more than the plan's first "
                            f"{index + 1}: the session was extended by something else; use a new --out folder")
    client: RigClient = client_factory()
    counts = client.present(frames, repeats=repeats, isi_grey_frames=isi_grey_frames, session_path=session,
                            frame_rate=frame_rate)
    intents = journal_intents(session)
    if len(intents) != index + 1:
        raise InsilicoError(f"{session}: expected presentation {index} to be the session's last, found "
                            f"{len(intents)} presentations")
    return Shown(index, sid, intents[index].segment, np.asarray(counts, dtype=np.float32), False)

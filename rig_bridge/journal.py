"""The controller's journal beside a session file: which presentations were asked for.

`session.h5.journal` holds one JSON object per line, appended and fsync'd before the action it
announces:

    {"event": "session", "session_id": ...}                       first line
    {"event": "intent", "request_id", "stimulus_id", "repeats",
     "isi_grey_frames", "segment"}                                before a present is sent
    {"event": "stored", "request_id", "segment"}                  after the segment is committed
    {"event": "acked", "request_id"}                              after the rig confirmed the ack

The session file itself is the truth about what is stored (a crash between committing the
segment and writing "stored" is healed by looking the segment up); the journal supplies the
request id to retry with, so a rerun resumes the same presentation instead of starting a new
one. A torn last line (crash mid-write) is ignored. A presentation stored but not "acked" (the
controller died between the two) is acknowledged to the rig on the next run, so the rig does
not keep its copy for good.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from stimuli.files import fsync_dir


@dataclass(frozen=True)
class Intent:
    request_id: str
    stimulus_id: str
    repeats: int
    isi_grey_frames: int
    segment: str


class SessionJournal:
    def __init__(self, session_path: str | os.PathLike[str]) -> None:
        self.path = Path(f"{os.fspath(session_path)}.journal")
        self.session_id = ""
        self.intents: dict[str, Intent] = {}
        self.stored: set[str] = set()
        self.acked: set[str] = set()
        self._load()
        if not self.session_id:
            self.session_id = f"s-{uuid.uuid4().hex[:20]}"
            self._append({"event": "session", "session_id": self.session_id})

    def _load(self) -> None:
        if not self.path.is_file():
            return
        for line in self.path.read_bytes().split(b"\n"):
            try:
                entry = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                continue  # a torn line from a crash mid-write
            if not isinstance(entry, dict):
                continue
            event = entry.get("event")
            if event == "session" and not self.session_id:
                self.session_id = str(entry["session_id"])
            elif event == "intent":
                self.intents[entry["request_id"]] = Intent(
                    entry["request_id"], entry["stimulus_id"], int(entry["repeats"]),
                    int(entry["isi_grey_frames"]), entry["segment"])
            elif event == "stored":
                self.stored.add(entry["request_id"])
            elif event == "acked":
                self.acked.add(entry["request_id"])

    def _append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        # Start on a fresh line if a crash left a torn one, so the torn bytes stay isolated.
        prefix = b""
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    prefix = b"\n"
        created = not self.path.exists()
        with open(self.path, "ab") as f:
            f.write(prefix + data)
            f.flush()
            os.fsync(f.fileno())
        if created:  # the new name itself must survive a power cut
            fsync_dir(self.path.parent)

    def pending(self, stimulus_id: str, repeats: int, isi_grey_frames: int) -> Intent | None:
        """The oldest unfinished presentation of this stimulus with these settings, if any."""
        for intent in self.intents.values():
            if (intent.request_id not in self.stored and intent.stimulus_id == stimulus_id
                    and intent.repeats == repeats and intent.isi_grey_frames == isi_grey_frames):
                return intent
        return None

    def unfinished(self) -> list[Intent]:
        return [i for i in self.intents.values() if i.request_id not in self.stored]

    def add_intent(self, stimulus_id: str, repeats: int, isi_grey_frames: int, used_segments: set[str]) -> Intent:
        index = len(self.intents)
        segment = f"present{index:03d}_{stimulus_id[:8]}"
        while segment in used_segments:
            index += 1
            segment = f"present{index:03d}_{stimulus_id[:8]}"
        intent = Intent(f"r-{uuid.uuid4().hex[:20]}", stimulus_id, int(repeats), int(isi_grey_frames), segment)
        self._append({"event": "intent", "request_id": intent.request_id, "stimulus_id": stimulus_id,
                      "repeats": intent.repeats, "isi_grey_frames": intent.isi_grey_frames,
                      "segment": segment})
        self.intents[intent.request_id] = intent
        return intent

    def stored_unacked(self) -> list[Intent]:
        """Presentations in the session file that the rig may still hold (ack not confirmed)."""
        return [i for i in self.intents.values() if i.request_id in self.stored and i.request_id not in self.acked]

    def mark_acked(self, request_id: str) -> None:
        if request_id in self.acked:
            return
        self._append({"event": "acked", "request_id": request_id})
        self.acked.add(request_id)

    def mark_stored(self, intent: Intent) -> None:
        if intent.request_id in self.stored:
            return
        self._append({"event": "stored", "request_id": intent.request_id, "segment": intent.segment})
        self.stored.add(intent.request_id)

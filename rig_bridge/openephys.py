"""Spikes and photodiode flips from an Open Ephys GUI through its ZMQ Interface plugin.

The plugin (open-ephys-plugins/zmq-interface, GUI 0.6+) publishes on a PUB socket at its data
port multipart messages `[envelope, JSON header, data]`. For spikes the header is

    {"message_num": n, "type": "spike", "timestamp": ms,
     "spike": {"stream", "source_node", "electrode": channel name, "sample_num": peak sample,
               "num_channels", "num_samples", "sorted_id", "threshold": [...]}}

and the data part is the waveform (float32). TTL events have `"type": "event"` and
`"content": {"stream", "source_node", "type": 3, "sample_num"}` with data bytes
`[line u8, state u8, word u64]`. `message_num` counts up by one per message, so a gap means lost
messages. A client keeps itself listed by sending a JSON heartbeat
`{"application", "uuid", "type": "heartbeat"}` to the REP socket at data port + 1 every ~2 s.

Spikes are mapped to cell ids by (electrode, sorted_id) with a CSV file
`electrode,sorted_id,cell_id`; unsorted or unmapped spikes are counted and dropped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import zmq

from stimuli.errors import InputError

log = logging.getLogger("rig_bridge.openephys")

TTL_EVENT_TYPE = 3
HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class CellMap:
    """(electrode name, sorted id) -> cell id."""

    table: dict[tuple[str, int], int]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CellMap:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such cell map (CSV electrode,sorted_id,cell_id)")
        table: dict[tuple[str, int], int] = {}
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"electrode", "sorted_id", "cell_id"} - set(reader.fieldnames or ())
            if missing:
                raise InputError(f"{path}: cell map lacks column(s) {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                try:
                    key = (row["electrode"].strip(), int(row["sorted_id"]))
                    cell = int(row["cell_id"])
                except (TypeError, ValueError):
                    raise InputError(f"{path}:{line}: sorted_id and cell_id must be integers") from None
                if key in table:
                    raise InputError(f"{path}:{line}: {key} is mapped twice")
                table[key] = cell
        if len(set(table.values())) != len(table):
            raise InputError(f"{path}: a cell id is mapped from two units")
        if not table:
            raise InputError(f"{path}: cell map is empty")
        return cls(table)

    @property
    def cell_ids(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.table.values())))


class OpenEphysSubscriber:
    """Background subscriber that keeps spikes (mapped to cells) and photodiode TTL edges.

    Times are Open Ephys sample numbers: the rig sample clock.
    """

    def __init__(self, address: str, cell_map: CellMap, *, photodiode_line: int | None = 0,
                 application: str = "insilico-rig", heartbeat_s: float = HEARTBEAT_S) -> None:
        parsed = urlparse(address)
        if parsed.scheme != "tcp" or not parsed.hostname or not parsed.port:
            raise InputError(f"Open Ephys data address must be tcp://HOST:PORT, got {address!r}")
        self.address = address
        self.listen_address = f"tcp://{parsed.hostname}:{parsed.port + 1}"
        self.cell_map = cell_map
        self.photodiode_line = photodiode_line
        self.application = application
        self.uuid = str(uuid.uuid4())
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._spike_cells: list[int] = []
        self._spike_samples: list[int] = []
        self._ttl_samples: list[int] = []
        self.latest_sample = -1
        self.lost_messages = 0
        self.unmapped_spikes = 0
        self.heartbeat_replies = 0
        self._last_num: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx = zmq.Context.instance()

    def start(self) -> OpenEphysSubscriber:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="openephys-sub", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self, ready: threading.Event) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.address)
        req = self._new_req()
        waiting_reply = False
        last_hb = 0.0
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(req, zmq.POLLIN)
        ready.set()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - last_hb >= self.heartbeat_s:
                    if waiting_reply:
                        # Lazy pirate: the plugin never answered, start over with a fresh REQ.
                        poller.unregister(req)
                        req.close(0)
                        req = self._new_req()
                        poller.register(req, zmq.POLLIN)
                    req.send(json.dumps({"application": self.application, "uuid": self.uuid,
                                         "type": "heartbeat"}).encode())
                    waiting_reply, last_hb = True, now
                events = dict(poller.poll(50))
                if req in events:
                    req.recv()
                    waiting_reply = False
                    self.heartbeat_replies += 1
                if sub in events:
                    while True:
                        try:
                            parts = sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(parts)
        finally:
            sub.close(0)
            req.close(0)

    def _new_req(self) -> zmq.Socket:
        req = self._ctx.socket(zmq.REQ)
        req.linger = 0
        req.connect(self.listen_address)
        return req

    def _handle(self, parts: list[bytes]) -> None:
        if len(parts) < 2:
            log.warning("Open Ephys message with %d part(s) ignored", len(parts))
            return
        try:
            header = json.loads(parts[1].decode("utf-8"))
            num = int(header["message_num"])
            mtype = header["type"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            log.warning("Open Ephys message with an unreadable header ignored")
            return
        with self._lock:
            if self._last_num is not None and num > self._last_num + 1:
                self.lost_messages += num - self._last_num - 1
            self._last_num = num
            if mtype == "spike":
                self._spike(header.get("spike") or {})
            elif mtype == "event":
                self._event(header.get("content") or {}, parts[2] if len(parts) > 2 else b"")
            elif mtype == "data":
                content = header.get("content") or {}
                if isinstance(content.get("sample_num"), int):
                    end = content["sample_num"] + int(content.get("num_samples", 0)) - 1
                    self.latest_sample = max(self.latest_sample, end)

    def _spike(self, spike: dict) -> None:
        try:
            sample = int(spike["sample_num"])
            key = (str(spike["electrode"]).strip(), int(spike.get("sorted_id", 0)))
        except (KeyError, TypeError, ValueError):
            return
        self.latest_sample = max(self.latest_sample, sample)
        cell = self.cell_map.table.get(key)
        if cell is None:
            self.unmapped_spikes += 1
            return
        self._spike_cells.append(cell)
        self._spike_samples.append(sample)

    def _event(self, content: dict, data: bytes) -> None:
        try:
            sample = int(content["sample_num"])
            etype = int(content.get("type", -1))
        except (KeyError, TypeError, ValueError):
            return
        self.latest_sample = max(self.latest_sample, sample)
        if etype != TTL_EVENT_TYPE or len(data) < 2:
            return
        line = data[0]
        if self.photodiode_line is None or line == self.photodiode_line:
            self._ttl_samples.append(sample)  # both edges: the patch alternates every frame

    # --- queries ------------------------------------------------------------------------
    def mark(self) -> int:
        """A position in the TTL list: edges after it belong to what is shown next."""
        with self._lock:
            return len(self._ttl_samples)

    def wait_edges(self, after: int, count: int, timeout_s: float) -> np.ndarray:
        """The first `count` photodiode edges (sample numbers) after mark `after`."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                got = self._ttl_samples[after:after + count]
            if len(got) >= count:
                return np.asarray(got, dtype=np.int64)
            if time.monotonic() > deadline:
                raise RuntimeError(f"photodiode: saw {len(got)} of {count} expected flips on TTL line "
                                   f"{self.photodiode_line} within {timeout_s:g} s")
            time.sleep(0.005)

    def wait_sample(self, sample: int, timeout_s: float) -> bool:
        """Wait until Open Ephys reported a sample number >= `sample` (so earlier spikes are in)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.latest_sample >= sample:
                return True
            time.sleep(0.005)
        return False

    def spikes_between(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Cell ids `[k]` and samples `[k]` of mapped spikes with start <= sample < stop."""
        with self._lock:
            cells = np.asarray(self._spike_cells, dtype=np.int64)
            samples = np.asarray(self._spike_samples, dtype=np.int64)
        keep = (samples >= start) & (samples < stop)
        return cells[keep], samples[keep]

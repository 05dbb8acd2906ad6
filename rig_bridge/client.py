"""The controller's side of the bridge: `RigClient` talks to a rig server over one DEALER socket.

Every call carries a request id and is re-sent with the same id until answered, so the rig can
tell a retry from a new command. Stream messages are collected by sequence number; a gap (or a
tail announced by a heartbeat but never received) is fetched again. The client heartbeats
while it waits, and a rig that stays silent is reconnected to, then given up on with
`RigTimeoutError` after `timeout_s`.

`present(..., session_path=...)` keeps a journal beside the session file and writes each
presentation as one recording-v1 segment before acknowledging it to the rig and returning, so
a controller or rig killed at any point resumes, on rerun, the same presentation and stores it
exactly once.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from rig_bridge.binning import bin_spikes, frame_edges
from rig_bridge.errors import RigAuthError, RigError, RigRemoteError, RigTimeoutError
from rig_bridge.journal import SessionJournal
from rig_bridge.protocol import (
    LOGGED_STREAMS,
    PROTOCOL_VERSION,
    Message,
    MessageError,
    checked_frames,
    decode,
    encode,
    stimulus_id,
)
from rig_bridge.session_file import (
    check_compatible,
    read_segment_counts,
    store_presentation,
    stored_segments,
)
from rig_bridge.transport import secure_client_socket
from stimuli.errors import InputError

log = logging.getLogger("rig_bridge.client")

SOFTWARE = "insilico-rig-bridge/0.1"
# The rig is trusted; its stream messages are far smaller (spikes come 100,000 to a message).
RIG_MESSAGE_LIMIT = 1 << 30


@dataclass(frozen=True)
class RigHello:
    """What the rig said about itself."""

    instance: str
    backend: str
    cell_ids: np.ndarray  # [N] int64
    sample_rate: float
    frame_rate: float
    screen: tuple[int, int] | None
    profile: str
    heartbeat_s: float
    max_payload_bytes: int  # one message; bigger stimuli go in parts
    max_stimulus_bytes: int


class _PeerSilent(Exception):
    pass


class RigClient:
    """Controller connection to one rig.

    Args:
        address: `tcp://HOST:PORT` of the rig server.
        keys_dir: directory with `client.key_secret` and `server.key` (CurveZMQ).
        insecure: plain TCP instead (loopback only unless `allow_remote_insecure`).
        timeout_s: longest silence (no reply, no heartbeat) before a call fails.
        heartbeat_s: how often the client heartbeats while it waits.
        dead_after_s: silence after which the connection is rebuilt and the call re-sent
            (default: min(3 s, timeout_s / 2)).
    """

    def __init__(self, address: str, keys_dir: str | os.PathLike[str] | None = None, *,
                 insecure: bool = False, allow_remote_insecure: bool = False, timeout_s: float = 10.0,
                 heartbeat_s: float = 0.5, dead_after_s: float | None = None,
                 session_id: str | None = None) -> None:
        if timeout_s <= 0 or heartbeat_s <= 0:
            raise InputError("timeout_s and heartbeat_s must be > 0")
        self.address = address
        self.keys_dir = keys_dir
        self.insecure = insecure
        self.allow_remote_insecure = allow_remote_insecure
        self.timeout_s = float(timeout_s)
        self.heartbeat_s = float(heartbeat_s)
        self.dead_after_s = float(dead_after_s) if dead_after_s else min(3.0, self.timeout_s / 2)
        self.session_id = session_id or f"s-{uuid.uuid4().hex[:20]}"
        self._ctx = zmq.Context()
        # Every socket of this context (monitor sockets included) drops unsent messages on close,
        # so neither close() nor the garbage collector can block in zmq_ctx_term.
        self._ctx.setsockopt(zmq.LINGER, 0)
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._out_seq = 0
        self._rig: RigHello | None = None
        self._inbox: dict[int, Message] = {}
        self._server_last_seq = 0
        self._server_state: dict = {}
        self._fetch_asked: dict[int, float] = {}
        self._replies: dict[str, Message] = {}
        self._stimuli: dict[str, np.ndarray] = {}
        self._instance_changed = False
        self._progress_check_s = max(2.0, 4 * self.heartbeat_s)
        try:
            self._connect()
        except BaseException:
            self._ctx.destroy(linger=0)
            raise

    # --- connection ---------------------------------------------------------------------
    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = 1000
        sock.rcvhwm = 100_000
        secure_client_socket(sock, self.address, keys_dir=self.keys_dir, insecure=self.insecure,
                             allow_remote_insecure=self.allow_remote_insecure)
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        sock.connect(self.address)
        self._sock = sock
        self._last_heard = time.monotonic()
        self._reconnected_at = self._last_heard
        self._last_hb = 0.0

    def _reconnect(self) -> None:
        log.warning("rig at %s silent for %.1f s; reconnecting", self.address, time.monotonic() - self._last_heard)
        last_heard = self._last_heard
        self._close_socket()
        self._connect()
        self._last_heard = last_heard  # silence keeps counting towards timeout_s
        self._reconnected_at = time.monotonic()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.disable_monitor()
            self._sock.close(0)
            self._sock = None
        if self._monitor is not None:
            self._monitor.close(0)
            self._monitor = None

    def close(self) -> None:
        self._close_socket()
        self._ctx.term()

    def __enter__(self) -> RigClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- low-level send/receive -------------------------------------------------------------
    def _send(self, mtype: str, body: dict, payload: np.ndarray | None, request_id: str) -> None:
        self._out_seq += 1
        frames = encode(Message(mtype, self.session_id, self._out_seq, request_id, body, payload))
        assert self._sock is not None
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # not connected yet or queue full: the retry loop sends it again

    def _pump(self, wait_s: float) -> None:
        """Receive and dispatch what arrives within `wait_s`; heartbeat; detect silence."""
        assert self._sock is not None and self._monitor is not None
        now = time.monotonic()
        if now - self._last_hb >= self.heartbeat_s:
            self._last_hb = now
            self._send("heartbeat", {}, None, "hb")
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        events = dict(poller.poll(max(1, int(wait_s * 1000))))
        if self._monitor in events:
            self._check_monitor()
        if self._sock in events:
            for _ in range(10_000):
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._last_heard = time.monotonic()
                try:
                    msg = decode(frames, max_payload_bytes=RIG_MESSAGE_LIMIT)
                except MessageError as err:
                    log.warning("dropping a bad message from the rig: %s", err)
                    continue
                self._dispatch(msg)
        now = time.monotonic()
        silent = now - self._last_heard
        if silent > self.timeout_s:
            raise RigTimeoutError(
                f"rig at {self.address} silent for {silent:.1f} s (no reply, no heartbeat; timeout "
                f"{self.timeout_s:g} s): is the rig server running, reachable, and does it know this "
                "controller's key?")
        # After a reconnect, give the new connection a full dead_after_s before the next one.
        if now - max(self._last_heard, self._reconnected_at) > self.dead_after_s:
            raise _PeerSilent()

    def _check_monitor(self) -> None:
        assert self._monitor is not None
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise RigAuthError(f"rig at {self.address} refused this controller: its CurveZMQ public key "
                                   "is not among the rig's authorized_clients")
            raise RigAuthError(f"CurveZMQ handshake with {self.address} failed (event {event['event']}): "
                               "wrong server key, or the rig runs without/with encryption unlike this client")

    def _dispatch(self, msg: Message) -> None:
        if msg.type in ("ok", "error"):
            if msg.type == "error" and msg.body.get("code") == "unknown_session" and self._rig is not None:
                # The rig restarted and forgot this session (seen first on a heartbeat, often).
                log.warning("rig no longer knows session %s (restarted?)", self.session_id)
                self._see_instance("")
            if msg.request_id != "hb":
                self._replies[msg.request_id] = msg
            instance = msg.body.get("instance")
            if instance is not None:
                self._see_instance(instance)
        elif msg.type == "heartbeat":
            self._see_instance(msg.body.get("instance"))
            self._server_state = dict(msg.body)
            last = msg.body.get("last_seq")
            if isinstance(last, int):
                self._server_last_seq = max(self._server_last_seq, last)
        elif msg.type in LOGGED_STREAMS and msg.session == self.session_id:
            self._inbox.setdefault(msg.seq, msg)
            self._server_last_seq = max(self._server_last_seq, msg.seq)

    def _see_instance(self, instance: object) -> None:
        """Note the rig instance an answer came from ("" = an unknown, restarted one)."""
        if not isinstance(instance, str):
            return
        if self._rig is not None and instance != self._rig.instance:
            # The rig restarted: its sequence numbers start again, our stream data is void.
            log.warning("rig restarted (instance %s -> %s)", self._rig.instance, instance)
            self._inbox.clear()
            self._fetch_asked.clear()
            self._server_last_seq = 0
            self._instance_changed = True
            self._rig = None

    def _call(self, mtype: str, body: dict, payload: np.ndarray | None = None, *,
              request_id: str | None = None, retry_s: float | None = None) -> Message:
        """Send a command and wait for its reply, re-sending with the same request id."""
        rid = request_id or f"q-{uuid.uuid4().hex[:20]}"
        retry = retry_s if retry_s is not None else max(2.0, 4 * self.heartbeat_s)
        # A big payload is only re-sent after a reconnect, not on every retry tick.
        resend_on_tick = payload is None or payload.nbytes < (1 << 20)
        self._replies.pop(rid, None)
        self._send(mtype, body, payload, rid)
        sent_at = first_sent = time.monotonic()
        while True:
            if time.monotonic() - first_sent > 3 * self.timeout_s:
                # The rig is alive (heartbeats) but never answers this command.
                raise RigTimeoutError(f"rig at {self.address} did not answer {mtype} ({rid}) within "
                                      f"{3 * self.timeout_s:g} s although it is alive")
            try:
                self._pump(min(0.05, self.heartbeat_s))
            except _PeerSilent:
                self._reconnect()
                self._send(mtype, body, payload, rid)
                sent_at = time.monotonic()
                continue
            reply = self._replies.pop(rid, None)
            if reply is not None:
                if reply.type == "error":
                    code, message = str(reply.body.get("code")), str(reply.body.get("message"))
                    if code == "unknown_session" and mtype != "hello":
                        self.hello()  # the rig restarted and forgot us: introduce ourselves again
                        self._send(mtype, body, payload, rid)
                        sent_at = time.monotonic()
                        continue
                    raise RigRemoteError(code, message)
                return reply
            if resend_on_tick and time.monotonic() - sent_at > retry:
                self._send(mtype, body, payload, rid)
                sent_at = time.monotonic()

    # --- commands ---------------------------------------------------------------------------
    def hello(self) -> RigHello:
        """Introduce this controller; returns the rig's description (cells, clock, screen)."""
        reply = self._call("hello", {"protocol": PROTOCOL_VERSION, "software": SOFTWARE,
                                     "client": f"{os.uname().nodename}:{os.getpid()}"})
        b = reply.body
        self._rig = RigHello(instance=str(b["instance"]), backend=str(b["backend"]),
                             cell_ids=np.asarray(b["cell_ids"], dtype=np.int64),
                             sample_rate=float(b["sample_rate"]), frame_rate=float(b["frame_rate"]),
                             screen=tuple(b["screen"]) if b.get("screen") else None,
                             profile=str(b["profile"]), heartbeat_s=float(b["heartbeat_s"]),
                             max_payload_bytes=int(b["max_payload_bytes"]),
                             max_stimulus_bytes=int(b.get("max_stimulus_bytes", b["max_payload_bytes"])))
        self._server_last_seq = max(self._server_last_seq, int(b.get("last_seq", 0)))
        return self._rig

    @property
    def rig(self) -> RigHello:
        if self._rig is None:
            return self.hello()
        return self._rig

    def upload(self, frames: np.ndarray, frame_rate: float | None = None) -> str:
        """Send stimulus frames `[T, H, W]` (uint8, or float grey levels 0..255) unless the rig has them.

        Returns the stimulus id (content hash); sending the same frames again costs one round trip.
        """
        rate = float(frame_rate) if frame_rate is not None else self.rig.frame_rate
        try:
            frames = checked_frames(np.asarray(frames))
        except MessageError as err:
            raise InputError(err.message) from None
        sid = stimulus_id(frames, rate)
        if frames.nbytes > self.rig.max_stimulus_bytes:
            raise InputError(f"stimulus of {frames.nbytes} bytes exceeds the rig's limit of "
                             f"{self.rig.max_stimulus_bytes} bytes")
        try:
            self._call("upload", {"stimulus_id": sid, "frame_rate": rate})
        except RigRemoteError as err:
            if err.code != "unknown_stimulus":
                raise
            if frames.nbytes <= self.rig.max_payload_bytes:
                reply = self._call("upload", {"stimulus_id": sid, "frame_rate": rate}, frames)
            else:
                reply = self._upload_parts(sid, frames, rate)
            if reply.body.get("stimulus_id") != sid:
                raise RigError(f"rig stored the stimulus as {reply.body.get('stimulus_id')}, expected {sid}") from None
        self._stimuli[sid] = frames
        return sid

    def _upload_parts(self, sid: str, frames: np.ndarray, rate: float) -> Message:
        """Send frames `[T, H, W]` in parts of at most `max_payload_bytes`, in frame order.

        Each reply names the frame the rig expects next, so a retried part or a rig that
        restarted (and lost the parts before) is carried on from where the rig stands.
        """
        frame_bytes = frames.shape[1] * frames.shape[2]
        per_part = self.rig.max_payload_bytes // frame_bytes
        if per_part < 1:
            raise InputError(f"one {frames.shape[1]}x{frames.shape[2]} frame exceeds the rig's message "
                             f"limit of {self.rig.max_payload_bytes} bytes")
        body = {"stimulus_id": sid, "frame_rate": rate, "shape": [int(s) for s in frames.shape]}
        start, sends = 0, 0
        while True:
            sends += 1
            if sends > 2 * (len(frames) // per_part + 2):
                raise RigError(f"rig at {self.address} does not take the parts of stimulus {sid[:16]}...")
            reply = self._call("upload", {**body, "start_frame": start}, frames[start:start + per_part])
            if reply.body.get("complete"):
                return reply
            start = int(reply.body.get("next_frame", 0))

    def status(self) -> dict:
        return dict(self._call("status", {}).body)

    def abort(self, request_id: str | None = None) -> str | None:
        """Stop the running presentation (of this session); returns its request id, if any."""
        return self._call("abort", {"request_id": request_id} if request_id else {}).body.get("aborted")

    def present(self, stimulus: np.ndarray | str, repeats: int = 1, isi_grey_frames: int = 0,
                session_path: str | os.PathLike[str] | None = None, *,
                frame_rate: float | None = None) -> np.ndarray:
        """Show a stimulus `repeats` times and return spike counts `[repeats, T, N]` float32.

        `stimulus` is frames `[T, H, W]` (uploaded if the rig lacks them) or an id returned by
        `upload`. Counts are binned to the stimulus frames with the rig's flip events. With
        `session_path`, the presentation is appended to that recording-v1 file as segment
        `presentNNN_<id8>` before it is acknowledged; rerunning after a crash resumes it.
        """
        if not isinstance(repeats, int) or repeats < 1:
            raise InputError(f"repeats must be an integer >= 1, got {repeats!r}")
        if not isinstance(isi_grey_frames, int) or isi_grey_frames < 0:
            raise InputError(f"isi_grey_frames must be an integer >= 0, got {isi_grey_frames!r}")
        journal = None
        if session_path is not None:
            journal = SessionJournal(session_path)
            if journal.session_id != self.session_id:
                self.session_id = journal.session_id
                self._rig = None
                self._inbox.clear()
        rig = self.rig
        if journal is not None:
            # Reconcile: a controller killed between storing a presentation and acknowledging
            # it left the rig holding a copy; acknowledge what the session file already has.
            for done in journal.stored_unacked():
                self._ack(done.request_id, journal)
        if isinstance(stimulus, str):
            sid = stimulus
            if sid not in self._stimuli:
                raise InputError(f"stimulus {sid[:16]}... was not uploaded by this client; pass its frames")
            frames = self._stimuli[sid]
            self.upload(frames, frame_rate)  # cheap when the rig has it; re-sends after a rig wipe
        else:
            sid = self.upload(stimulus, frame_rate)
            frames = self._stimuli[sid]
        rate = float(frame_rate) if frame_rate is not None else rig.frame_rate
        intent = None
        if journal is not None and session_path is not None:
            check_compatible(session_path, frame_rate=rate, height=frames.shape[1], width=frames.shape[2],
                             cell_ids=rig.cell_ids, repeats=repeats)
            intent = journal.pending(sid, repeats, isi_grey_frames)
            if intent is not None:
                log.info("resuming presentation %s (%s)", intent.request_id, intent.segment)
                if intent.segment in stored_segments(session_path):
                    # Stored before the crash, journal not yet updated: finish the bookkeeping.
                    journal.mark_stored(intent)
                    self._ack(intent.request_id, journal)
                    return read_segment_counts(session_path, intent.segment, repeats)
            else:
                intent = journal.add_intent(sid, repeats, isi_grey_frames, stored_segments(session_path))
        rid = intent.request_id if intent is not None else f"r-{uuid.uuid4().hex[:20]}"
        counts = self._run_presentation(rid, sid, frames, repeats, isi_grey_frames)
        if journal is not None and intent is not None and session_path is not None:
            store_presentation(session_path, intent.segment, frames, rate, rig.cell_ids, counts)
            journal.mark_stored(intent)
        self._ack(rid, journal)
        return counts

    def _ack(self, rid: str, journal: SessionJournal | None = None) -> None:
        try:
            self._call("ack", {"request_id": rid})
        except RigError as err:  # the data is safe here; the rig keeps its copy until the next run
            log.warning("could not acknowledge %s to the rig: %s", rid, err)
            return
        if journal is not None:
            journal.mark_acked(rid)

    # --- presentation ---------------------------------------------------------------------
    def _start(self, rid: str, sid: str, repeats: int, isi: int) -> tuple[int, int | None]:
        self._instance_changed = False
        reply = self._call("present", {"stimulus_id": sid, "repeats": repeats, "isi_grey_frames": isi},
                           request_id=rid)
        if reply.body.get("state") == "done" and reply.body.get("done_seq"):
            return int(reply.body["first_seq"]), int(reply.body["done_seq"])
        return int(reply.body["first_seq"]), None

    def _run_presentation(self, rid: str, sid: str, frames: np.ndarray, repeats: int, isi: int) -> np.ndarray:
        first, done_seq = self._start(rid, sid, repeats, isi)
        asked_at = time.monotonic()
        while True:
            try:
                self._pump(min(0.05, self.heartbeat_s))
            except _PeerSilent:
                self._reconnect()
                self.hello()  # waits (re-sending) for the rig to come back, or times out
            if self._instance_changed or self._rig is None:
                # A restarted rig forgot the running presentation (or replays a finished one).
                if self._rig is None:
                    self.hello()
                first, done_seq = self._start(rid, sid, repeats, isi)
                continue
            if done_seq is None:
                for seq in range(first, self._server_last_seq + 1):
                    m = self._inbox.get(seq)
                    if m is not None and m.type == "done" and m.request_id == rid:
                        done_seq = seq
                        break
            self._fetch_gaps(first, done_seq if done_seq is not None else self._server_last_seq)
            if done_seq is not None and all(s in self._inbox for s in range(first, done_seq + 1)):
                break
            if done_seq is None and time.monotonic() - asked_at > self._progress_check_s:
                # Catch-all for a lost tail: ask again (idempotent); a finished presentation
                # answers with its done_seq, a failed one with an error.
                asked_at = time.monotonic()
                first, done_seq = self._start(rid, sid, repeats, isi)
        msgs = [self._inbox[s] for s in range(first, done_seq + 1) if self._inbox[s].request_id == rid]
        for s in range(first, done_seq + 1):
            self._inbox.pop(s, None)
        return _assemble(msgs, frames.shape[0], repeats, self.rig.cell_ids)

    def _fetch_gaps(self, first: int, upto: int) -> None:
        now = time.monotonic()
        retry = max(1.0, 2 * self.heartbeat_s)
        missing = [s for s in range(first, upto + 1)
                   if s not in self._inbox and now - self._fetch_asked.get(s, -1e9) > retry]
        if not missing:
            return
        lo, hi = missing[0], missing[-1]
        for s in range(lo, hi + 1):
            self._fetch_asked[s] = now
        reply = self._call("fetch", {"from_seq": lo, "to_seq": hi})
        gone = [s for s in reply.body.get("missing", []) if first <= s <= upto]
        if gone:
            raise RigError(f"rig no longer holds stream messages {gone[:5]} of this presentation")


def _assemble(msgs: list[Message], n_frames: int, repeats: int, cell_ids: np.ndarray) -> np.ndarray:
    """Counts `[repeats, T, N]` from one presentation's stream messages."""
    done = next((m for m in msgs if m.type == "done"), None)
    if done is None:
        raise RigError("presentation stream has no done message")
    status = done.body.get("status")
    if status == "aborted":
        raise RigRemoteError("aborted", "the presentation was aborted on the rig")
    if status != "ok":
        raise RigRemoteError("internal", f"the presentation failed on the rig: {done.body.get('error')}")
    flips: dict[int, list[np.ndarray]] = {r: [] for r in range(repeats)}
    spike_parts: list[np.ndarray] = []
    binned = np.zeros((repeats, n_frames, len(cell_ids)), dtype=np.float32)
    have_counts = False
    for m in msgs:
        if m.type == "flips":
            r = int(m.body["repeat"])
            if r not in flips or m.payload is None:
                raise RigError(f"flip events for repeat {r} of a {repeats}-repeat presentation")
            flips[r].append(m.payload)
        elif m.type == "spikes" and m.payload is not None:
            spike_parts.append(m.payload.reshape(-1, 2))
        elif m.type == "counts" and m.payload is not None:
            r, a = int(m.body["repeat"]), int(m.body["start_frame"])
            binned[r, a:a + len(m.payload)] += m.payload
            have_counts = True
    spikes = np.concatenate(spike_parts) if spike_parts else np.zeros((0, 2), dtype=np.int64)
    n_received = int(binned.sum()) if have_counts else len(spikes)
    if n_received != int(done.body.get("n_spikes", -1)):
        raise RigError(f"received {n_received} spikes, the rig sent {done.body.get('n_spikes')}")
    if have_counts:
        return binned
    for r in range(repeats):
        if not flips[r]:
            raise RigError(f"no flip events for repeat {r}")
        edges = frame_edges(np.concatenate(flips[r]), n_frames)
        binned[r] = bin_spikes(edges, cell_ids, spikes[:, 0], spikes[:, 1])
    return binned


def load_stimulus_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Frames `[T, H, W]` uint8 and frame rate of a recording-v1 (stimulus) file."""
    from stimuli.recording import open_recording

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such stimulus file")
    with open_recording(path) as rec:
        return rec.frames(), rec.frame_rate

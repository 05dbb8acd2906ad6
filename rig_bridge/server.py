"""The rig server: one ROUTER socket that takes commands and carries the rig's streams back.

Design (docs/bridge-protocol.md): commands and streams share one ROUTER (rig) / DEALER
(controller) connection. Every stream message goes into a per-session append-only log under a
gap-free sequence number before it is sent, so a controller that misses one (dropped
connection, full queue, restarted controller) asks for it again with `fetch`. A present is
identified by its request id: a retried present is answered from the running or finished
presentation, never shown twice. Finished presentations are also written to disk so that this
holds across a rig restart, until the controller acknowledges it stored them.

The server owns its socket in one thread; a presentation runs in a worker thread that only
appends to the log (under a lock) and pokes the loop through an inproc socket.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from rig_bridge.backend import Backend, PresentJob
from rig_bridge.protocol import (
    COMMANDS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_STIMULUS_BYTES,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    Message,
    MessageError,
    checked_frames,
    decode,
    encode,
    is_int,
    is_stimulus_id,
    is_valid_id,
    peek_request,
    shown,
    stimulus_id,
)
from rig_bridge.result_store import ResultStore, StreamRecord
from rig_bridge.retina.backend import presentation_seed
from rig_bridge.stimulus_store import PartialStimulus, StimulusStore
from rig_bridge.transport import bind_server_socket, endpoint

log = logging.getLogger("rig_bridge.server")


class _RateLimitedLog:
    """At most `per_s` lines a second (a hostile peer cannot flood the rig's log); the rest are counted."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO, per_s: int = 20) -> None:
        self.logger, self.level, self.per_s = logger, level, per_s
        self._window, self._count, self._suppressed = 0.0, 0, 0

    def __call__(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            if self._suppressed:
                self.logger.log(self.level, "%d more lines like the last in the last second not logged",
                                self._suppressed)
            self._window, self._count, self._suppressed = now, 0, 0
        if self._count < self.per_s:
            self._count += 1
            self.logger.log(self.level, fmt, *args)
        else:
            self._suppressed += 1


_error_log = _RateLimitedLog(log)
_handshake_log = _RateLimitedLog(logging.getLogger("rig_bridge.auth"), logging.WARNING)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

MAX_REPEATS = 10_000
MAX_FETCH = 5_000
SPIKES_PER_MESSAGE = 100_000
# A controller sends one command at a time (plus heartbeats, whose answers are coalesced), so
# this many unread replies means a peer that never reads; its queue is dropped, with a log line.
MAX_PENDING_REPLIES = 10_000
# Error messages quote what a peer sent; they are cut so a log line never carries an attack.
MAX_ERROR_CHARS = 300
# Stimuli arriving in parts at once, and how long one may wait for its next part.
MAX_PARTIAL_UPLOADS = 4
PARTIAL_UPLOAD_IDLE_S = 120.0


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5555
    store_dir: Path = Path("rig_store")
    keys_dir: Path | None = None
    insecure: bool = False
    allow_remote_insecure: bool = False
    heartbeat_s: float = 0.5
    dead_after_s: float = 3.0
    # Largest payload of one message; ZeroMQ cuts a connection whose message is bigger before
    # it is held in memory. Stimuli above it are uploaded in parts, up to max_stimulus_bytes.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_stimulus_bytes: int = DEFAULT_MAX_STIMULUS_BYTES
    rig_seed: int = 0
    # Messages ZeroMQ queues towards one controller before a send reports "full".
    send_queue_messages: int = 10_000
    # The session table: at most this many sessions; one that holds nothing unacknowledged is
    # forgotten after `session_idle_s` of silence, or sooner (once presumed dead) to make room.
    max_sessions: int = 1_000
    session_idle_s: float = 600.0


@dataclass
class _Request:
    id: str
    session: str
    state: str  # running | done | aborted | failed
    first_seq: int
    done_seq: int | None = None
    error: str = ""
    seqs: list[int] = field(default_factory=list)
    records: list[StreamRecord] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    frames_total: int = 0
    flips_seen: int = 0


@dataclass
class _Session:
    id: str
    identity: bytes | None = None
    last_heard: float = 0.0
    alive: bool = True
    next_seq: int = 1
    sent_upto: int = 0
    log: dict[int, list[bytes]] = field(default_factory=dict)
    last_heartbeat_sent: float = 0.0


@dataclass
class _Outbox:
    """Replies to one connection that its full queue could not take yet, oldest first.

    Replies are never dropped: they wait here and go out before any stream data. Heartbeats
    only say "the rig's state now", so a newer one replaces the one waiting.
    """

    replies: deque[list[bytes]] = field(default_factory=deque)
    heartbeat: list[bytes] | None = None


class RigServer:
    """Serve one backend on `tcp://host:port` until `stop()`.

    Use `serve_forever()` in the foreground, or `start()` to run the loop in a thread.
    """

    def __init__(self, backend: Backend, config: ServerConfig) -> None:
        self.backend = backend
        self.config = config
        self.instance = uuid.uuid4().hex[:16]
        store = Path(config.store_dir)
        self.stimuli = StimulusStore(store / "stimuli")
        self.results = ResultStore(store / "results")
        self._partials: dict[str, PartialStimulus] = {}
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        # Sessions whose controller is connected and alive: the only ones visited every tick.
        self._live: dict[str, _Session] = {}
        self._outbox: dict[bytes, _Outbox] = {}
        self._next_sweep = 0.0
        self._next_room_sweep = 0.0
        self._requests: dict[tuple[str, str], _Request] = {}
        self._job: _Request | None = None
        self._job_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent = 0
        self._ctx = zmq.Context()
        self._ctx.setsockopt(zmq.LINGER, 0)  # a stopped rig never waits on undelivered messages
        self._wake_addr = f"inproc://rig-wake-{self.instance}"
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None

    @property
    def address(self) -> str:
        return endpoint(self.config.host, self.config.port)

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> RigServer:
        """Run the loop in a daemon thread; return once the socket is bound."""
        self._thread = threading.Thread(target=self.serve_forever, name="rig-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._bind_error is not None:
            raise self._bind_error
        return self

    def stop_soon(self) -> None:
        """Ask the loop to end (safe from a signal handler); the running presentation is cancelled."""
        self._stop.set()
        if self._job is not None:
            self._job.cancel.set()

    def stop(self) -> None:
        self.stop_soon()
        if self._thread is not None:
            self._thread.join(5)
        if self._job_thread is not None:
            self._job_thread.join(5)

    def __enter__(self) -> RigServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        # Mandatory routing turns "peer gone" and "queue full" into errors we can see, so a
        # stream message is kept in the log and sent later instead of vanishing silently.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.sndhwm = self.config.send_queue_messages
        # What one connection can make the rig hold is (rcvhwm + 1) messages of at most
        # MAXMSGSIZE: a controller sends one command at a time, so a short queue costs nothing.
        router.rcvhwm = 8
        # ZeroMQ checks each frame's declared size before receiving it and cuts the connection
        # of a bigger one, so an oversized message never reaches memory. The header's margin
        # lets a payload just over the limit still get a "too_large" reply.
        router.setsockopt(zmq.MAXMSGSIZE, self.config.max_payload_bytes + MAX_HEADER_BYTES)
        wake = self._ctx.socket(zmq.PULL)
        wake.bind(self._wake_addr)
        # Failed handshakes (wrong keys, plain TCP against CurveZMQ) never reach the loop as
        # messages; the monitor turns each into a log line.
        monitor = router.get_monitor_socket(_HANDSHAKE_FAILED)
        auth = None
        try:
            auth = bind_server_socket(self._ctx, router, self.config.host, self.config.port,
                                      keys_dir=self.config.keys_dir, insecure=self.config.insecure,
                                      allow_remote_insecure=self.config.allow_remote_insecure)
        except BaseException as err:
            self._bind_error = err
            self._ready.set()
            router.disable_monitor()
            monitor.close()
            router.close()
            wake.close()
            if threading.current_thread() is self._thread:
                return  # start() re-raises it in the caller's thread
            raise
        self._ready.set()
        if self.stimuli.clean_partials():
            log.info("removed stimulus parts a stopped rig left in %s", self.stimuli.root)
        log.info("rig %s serving %s backend on %s (%s)", self.instance, self.backend.info.backend,
                 self.address, "plain TCP" if self.config.insecure else "CurveZMQ")
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        tick = max(0.01, self.config.heartbeat_s / 4)
        backlog = False
        try:
            while not self._stop.is_set():
                # With a backlog (controller queue full) come back soon rather than a tick later.
                events = dict(poller.poll(2 if backlog else int(tick * 1000)))
                if wake in events:
                    while wake.poll(0):
                        wake.recv()
                if monitor in events:
                    self._log_handshakes(monitor)
                if router in events:
                    for _ in range(100):  # bounded so streams and heartbeats are not starved
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(router, frames)
                backlog = self._flush(router)
                self._heartbeats(router)
                self._sweep_sessions(time.monotonic())
        finally:
            for partial in self._partials.values():
                partial.discard()
            self._partials.clear()
            router.disable_monitor()
            monitor.close()
            router.close()
            wake.close()
            if auth is not None:
                auth.stop()
            self._ctx.term()

    def _log_handshakes(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            name = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by authentication",
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error (wrong server key, or plain TCP "
                                                         "against CurveZMQ)",
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed"}.get(event["event"], "failed")
            _handshake_log("handshake of a connection to %s %s (code %s)",
                                event["endpoint"].decode("utf-8", "replace"), name, event["value"])

    # --- sending ------------------------------------------------------------------------
    def _send(self, router: zmq.Socket, identity: bytes, msg: Message) -> str:
        return self._send_frames(router, identity, encode(msg))

    def _send_frames(self, router: zmq.Socket, identity: bytes, frames: list[bytes]) -> str:
        """"sent", "full" (the controller's queue is full: retry soon) or "gone" (disconnected)."""
        try:
            router.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            return "sent"
        except zmq.Again:
            return "full"
        except zmq.ZMQError as err:
            if err.errno == zmq.EHOSTUNREACH:  # it will fetch what it missed when it is back
                return "gone"
            raise

    def _reply(self, router: zmq.Socket, identity: bytes, session: str, req: str, mtype: str,
               body: dict) -> None:
        self._sent += 1
        self._send_reply(router, identity, encode(Message(mtype, session, self._sent, req, body)))

    def _send_reply(self, router: zmq.Socket, identity: bytes, frames: list[bytes], *,
                    heartbeat: bool = False) -> None:
        """Send a reply (or heartbeat) now, or queue it behind those already waiting for this peer."""
        box = self._outbox.get(identity)
        if box is None:
            outcome = self._send_frames(router, identity, frames)
            if outcome != "full":
                return  # sent, or the peer is gone (it re-sends the command on its new connection)
            box = self._outbox[identity] = _Outbox()
        if heartbeat:
            box.heartbeat = frames
            return
        if len(box.replies) >= MAX_PENDING_REPLIES:
            log.warning("peer %s left %d replies unread: dropping them (it never reads)",
                        identity.hex(), len(box.replies))
            box.replies.clear()
        box.replies.append(frames)

    def _drain_outboxes(self, router: zmq.Socket) -> bool:
        """Send queued replies, oldest first; True if some still wait."""
        backlog = False
        for identity, box in list(self._outbox.items()):
            outcome = "sent"
            while box.replies:
                outcome = self._send_frames(router, identity, box.replies[0])
                if outcome != "sent":
                    break
                box.replies.popleft()
            if outcome == "sent" and box.heartbeat is not None:
                outcome = self._send_frames(router, identity, box.heartbeat)
                if outcome == "sent":
                    box.heartbeat = None
            if outcome == "full":
                backlog = True
            else:  # all sent, or the peer is gone and nothing can reach it any more
                del self._outbox[identity]
        return backlog

    def _error(self, router: zmq.Socket, identity: bytes, session: str, req: str, code: str,
               message: str, peer: str = "") -> None:
        if len(message) > MAX_ERROR_CHARS:
            message = f"{message[:MAX_ERROR_CHARS]}... ({len(message)} characters)"
        _error_log("error reply to %s (session %s, request %s): %s: %s", peer or "?", session, req,
                        code, message)
        self._reply(router, identity, session, req, "error", {"code": code, "message": message})

    def _flush(self, router: zmq.Socket) -> bool:
        """Send queued replies, then each live session's unsent stream messages; True if some still wait."""
        backlog = self._drain_outboxes(router)
        for sess in list(self._live.values()):
            if sess.identity is None or not sess.alive:
                self._live.pop(sess.id, None)
                continue
            if sess.identity in self._outbox:
                backlog = True  # its replies go first
                continue
            while True:
                with self._lock:
                    nxt = sess.sent_upto + 1
                    if nxt >= sess.next_seq:
                        break
                    frames = sess.log.get(nxt)
                if frames is not None:
                    outcome = self._send_frames(router, sess.identity, frames)
                    if outcome == "full":
                        backlog = True
                        break
                    if outcome == "gone":
                        sess.alive = False
                        self._live.pop(sess.id, None)
                        break
                sess.sent_upto = nxt
        return backlog

    def _heartbeats(self, router: zmq.Socket) -> None:
        now = time.monotonic()
        for sess in list(self._live.values()):
            if sess.identity is None:
                continue
            if sess.alive and now - sess.last_heard > self.config.dead_after_s:
                sess.alive = False
                self._live.pop(sess.id, None)
                if sess.log:
                    log.warning("controller of session %s silent for %.1f s: presumed dead (its data is kept)",
                                sess.id, now - sess.last_heard)
            if sess.alive and now - sess.last_heartbeat_sent >= self.config.heartbeat_s:
                sess.last_heartbeat_sent = now
                self._sent += 1
                frames = encode(Message("heartbeat", sess.id, self._sent, "hb", self._state_body(sess)))
                self._send_reply(router, sess.identity, frames, heartbeat=True)

    # --- the session table ------------------------------------------------------------------
    def _holds_nothing(self, sess: _Session) -> bool:
        """No stream message unacknowledged and no presentation running for it."""
        job = self._job
        return not sess.log and not (job is not None and job.state == "running" and job.session == sess.id)

    def _forget(self, sess: _Session) -> None:
        self._sessions.pop(sess.id, None)
        self._live.pop(sess.id, None)
        for key in [k for k in self._requests if k[0] == sess.id]:
            del self._requests[key]

    def _sweep_sessions(self, now: float) -> None:
        """Forget sessions silent for `session_idle_s` that hold nothing (at most once a second)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        idle = self.config.session_idle_s
        for sess in [s for s in self._sessions.values() if now - s.last_heard > idle and self._holds_nothing(s)]:
            self._forget(sess)

    def _make_room(self, now: float) -> None:
        """Forget every session presumed dead that holds nothing (its controller, if it comes back,
        says hello again and gets a fresh one).

        Runs at most every 0.1 s, so a flood of hellos into a full table costs a refusal each,
        not a scan of the table each.
        """
        if now < self._next_room_sweep:
            return
        self._next_room_sweep = now + 0.1
        for sess in [s for s in self._sessions.values()
                     if now - s.last_heard > self.config.dead_after_s and self._holds_nothing(s)]:
            self._forget(sess)

    def _state_body(self, sess: _Session) -> dict:
        job = self._job
        running = job.id if job is not None and job.state == "running" else None
        progress = None
        if job is not None and job.frames_total:
            progress = min(1.0, job.flips_seen / job.frames_total)
        # last_seq counts what was actually sent: a controller fetches anything below it that
        # it lacks, and the rest is still on its way.
        return {"instance": self.instance, "last_seq": sess.sent_upto, "state": "presenting" if running else "idle",
                "running": running, "progress": progress}

    # --- dispatch -----------------------------------------------------------------------
    def _handle(self, router: zmq.Socket, frames: list[zmq.Frame]) -> None:
        identity, parts = frames[0].bytes, frames[1:]
        peer = _peer_address(frames[-1])
        try:
            msg = decode(parts, max_payload_bytes=self.config.max_payload_bytes)
        except MessageError as err:
            session, req = peek_request(parts)
            self._error(router, identity, session, req, err.code, err.message, peer)
            return
        if msg.type not in COMMANDS:
            self._error(router, identity, msg.session, msg.request_id, "unknown_type",
                        f"{msg.type!r} is not a command a controller may send", peer)
            return
        try:
            if msg.type == "hello":
                body = self._hello(identity, msg)
            else:
                sess = self._sessions.get(msg.session)
                if sess is None:
                    raise MessageError("unknown_session", f"session {msg.session} unknown to rig instance "
                                        f"{self.instance}: send hello first")
                self._touch(sess, identity)
                if msg.type == "heartbeat":
                    self._sent += 1
                    frames_out = encode(Message("heartbeat", sess.id, self._sent, msg.request_id,
                                                self._state_body(sess)))
                    self._send_reply(router, identity, frames_out, heartbeat=True)
                    return
                handler = {"upload": self._upload, "present": self._present, "status": self._status,
                           "abort": self._abort, "fetch": self._fetch, "ack": self._ack}[msg.type]
                body = handler(router, sess, msg)
            self._reply(router, identity, msg.session, msg.request_id, "ok", body)
        except MessageError as err:
            self._error(router, identity, msg.session, msg.request_id, err.code, err.message, peer)
        except Exception as err:  # a bug must not take the rig down mid-session
            log.error("internal error on %s from %s: %s", msg.type, peer or "?", traceback.format_exc())
            self._error(router, identity, msg.session, msg.request_id, "internal",
                        f"{type(err).__name__}: {err}", peer)

    def _touch(self, sess: _Session, identity: bytes) -> None:
        if sess.identity != identity:
            # A new connection for this session (controller restarted or reconnected):
            # anything sent to the old one may be lost, the controller fetches it back.
            sess.identity = identity
        sess.last_heard = time.monotonic()
        sess.alive = True
        self._live[sess.id] = sess

    def _hello(self, identity: bytes, msg: Message) -> dict:
        proto = msg.body.get("protocol", PROTOCOL_VERSION)
        if proto != PROTOCOL_VERSION:
            raise MessageError("bad_version", f"controller speaks protocol {proto}, rig speaks {PROTOCOL_VERSION}")
        sess = self._sessions.get(msg.session)
        if sess is None:
            if len(self._sessions) >= self.config.max_sessions:
                self._make_room(time.monotonic())
            if len(self._sessions) >= self.config.max_sessions:
                raise MessageError("full", f"the rig holds {len(self._sessions)} sessions (its maximum), live or "
                                    "holding unacknowledged data; retry in a few seconds")
            sess = self._sessions[msg.session] = _Session(msg.session)
        self._touch(sess, identity)
        info = self.backend.info
        return {"instance": self.instance, "protocol": PROTOCOL_VERSION, "backend": info.backend,
                "cell_ids": list(info.cell_ids), "sample_rate": info.sample_rate,
                "frame_rate": info.frame_rate, "screen": list(info.screen) if info.screen else None,
                "profile": info.profile, "heartbeat_s": self.config.heartbeat_s,
                "max_payload_bytes": self.config.max_payload_bytes,
                "max_stimulus_bytes": self.config.max_stimulus_bytes, "last_seq": sess.sent_upto}

    def _upload(self, router: zmq.Socket, sess: _Session, msg: Message) -> dict:
        rate = msg.body.get("frame_rate")
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not math.isfinite(rate) or rate <= 0:
            raise MessageError("bad_request", f"upload needs frame_rate > 0 (Hz), got {shown(rate)}")
        claimed = msg.body.get("stimulus_id")
        if claimed is not None and not is_stimulus_id(claimed):
            raise MessageError("bad_request", f"stimulus_id must be 64 hex digits, got {shown(claimed)}")
        if msg.payload is None:
            if claimed is not None and claimed in self.stimuli:
                return {"stimulus_id": claimed, "uploaded": False}
            raise MessageError("unknown_stimulus", f"rig does not hold stimulus {claimed}: send its frames")
        if "shape" in msg.body:
            return self._upload_part(msg, float(rate), claimed)
        frames = checked_frames(msg.payload)
        try:
            self.backend.check_stimulus(frames, float(rate))
        except ValueError as err:
            raise MessageError("bad_frames", str(err)) from None
        sid = stimulus_id(frames, float(rate))
        if claimed is not None and claimed != sid:
            raise MessageError("checksum", f"frames hash to {sid[:16]}..., not the claimed {claimed[:16]}...")
        self.stimuli.put(frames, float(rate), sid)
        return {"stimulus_id": sid, "uploaded": True}

    def _upload_part(self, msg: Message, rate: float, claimed: str | None) -> dict:
        """One part of a stimulus bigger than a message: frames `[t, H, W]` from `start_frame` on.

        Parts come in frame order; each is written to disk and hashed at once. The reply's
        `next_frame` is the frame the rig expects next (after a retry, or a rig restart that
        lost the earlier parts, the controller carries on from there).
        """
        shape, start = msg.body.get("shape"), msg.body.get("start_frame")
        if claimed is None:
            raise MessageError("bad_request", "an upload in parts needs its stimulus_id")
        if (not isinstance(shape, list) or len(shape) != 3 or not all(is_int(s) and s >= 1 for s in shape)):
            raise MessageError("bad_request", f"shape must be [T, H, W] with T, H, W >= 1, got {shown(shape)}")
        if not is_int(start) or not 0 <= start < shape[0]:
            raise MessageError("bad_request", f"start_frame must be an integer in [0, {shape[0]}), got {shown(start)}")
        total = shape[0] * shape[1] * shape[2]
        if total > self.config.max_stimulus_bytes:
            raise MessageError("too_large", f"stimulus of {total} bytes exceeds the rig's maximum of "
                                f"{self.config.max_stimulus_bytes}")
        if claimed in self.stimuli:
            return {"stimulus_id": claimed, "uploaded": False, "complete": True, "next_frame": shape[0]}
        frames = checked_frames(msg.payload)
        try:
            self.backend.check_stimulus(frames, rate)
        except ValueError as err:
            raise MessageError("bad_frames", str(err)) from None
        partial = self._partials.get(claimed)
        if partial is not None and (list(partial.shape) != shape or partial.frame_rate != rate):
            partial.discard()  # the same id with another shape or rate: start again
            del self._partials[claimed]
            partial = None
        if partial is None:
            if start != 0:
                return {"stimulus_id": claimed, "uploaded": False, "complete": False, "next_frame": 0}
            self._drop_stale_partials()
            if len(self._partials) >= MAX_PARTIAL_UPLOADS:
                raise MessageError("full", f"{len(self._partials)} stimuli are arriving in parts already; "
                                    "retry when one is done")
            partial = self._partials[claimed] = self.stimuli.begin(claimed, tuple(shape), rate)
        if start > partial.next_frame:
            return {"stimulus_id": claimed, "uploaded": False, "complete": False, "next_frame": partial.next_frame}
        try:
            partial.add(start, frames)
        except ValueError as err:
            raise MessageError("bad_frames", str(err)) from None
        if not partial.complete:
            return {"stimulus_id": claimed, "uploaded": True, "complete": False, "next_frame": partial.next_frame}
        del self._partials[claimed]
        try:
            partial.finish()
        except ValueError as err:
            raise MessageError("checksum", str(err)) from None
        log.info("stimulus %s stored (%d bytes, in parts)", claimed[:8], total)
        return {"stimulus_id": claimed, "uploaded": True, "complete": True, "next_frame": shape[0]}

    def _drop_stale_partials(self) -> None:
        now = time.monotonic()
        for sid, partial in list(self._partials.items()):
            if now - partial.touched > PARTIAL_UPLOAD_IDLE_S:
                partial.discard()
                del self._partials[sid]

    def _present(self, router: zmq.Socket, sess: _Session, msg: Message) -> dict:
        rid = msg.request_id
        known = self._requests.get((sess.id, rid))
        if known is not None:
            if known.state == "aborted":
                raise MessageError("aborted", f"presentation {rid} was aborted")
            if known.state == "failed":
                raise MessageError("internal", f"presentation {rid} failed: {known.error}")
            return {"state": known.state, "first_seq": known.first_seq, "done_seq": known.done_seq,
                    "instance": self.instance}
        if self.results.has(sess.id, rid):
            req = self._replay(sess, rid)
            return {"state": "done", "first_seq": req.first_seq, "done_seq": req.done_seq,
                    "instance": self.instance, "replayed": True}
        body = msg.body
        sid, repeats, isi = body.get("stimulus_id"), body.get("repeats"), body.get("isi_grey_frames", 0)
        if not is_stimulus_id(sid):
            raise MessageError("bad_request", f"present needs a stimulus_id (64 hex digits), got {shown(sid)}")
        if not is_int(repeats) or not 1 <= repeats <= MAX_REPEATS:
            raise MessageError("bad_request", f"repeats must be an integer in [1, {MAX_REPEATS}], got {shown(repeats)}")
        if not is_int(isi) or not 0 <= isi <= 100_000:
            raise MessageError("bad_request", f"isi_grey_frames must be an integer >= 0, got {shown(isi)}")
        if self._job is not None and self._job.state == "running":
            raise MessageError("busy", f"presentation {self._job.id} is running; retry when it is done")
        try:
            stim = self.stimuli.get(sid)
        except KeyError:
            raise MessageError("unknown_stimulus", f"rig does not hold stimulus {sid}: upload it first") from None
        job = PresentJob(session=sess.id, request_id=rid, stimulus_id=sid, frames=stim.frames,
                         frame_rate=stim.frame_rate, repeats=int(repeats), isi_grey_frames=int(isi),
                         seed=presentation_seed(self.config.rig_seed, rid))
        with self._lock:
            req = _Request(id=rid, session=sess.id, state="running", first_seq=sess.next_seq,
                           frames_total=job.repeats * (len(stim.frames) + 1))
        self._requests[(sess.id, rid)] = req
        self._job = req
        self._job_thread = threading.Thread(target=self._run_job, args=(sess, req, job),
                                            name=f"present-{rid}", daemon=True)
        self._job_thread.start()
        log.info("presenting %s (stimulus %s, %d repeats) for session %s", rid, sid[:8], repeats, sess.id)
        return {"state": "started", "first_seq": req.first_seq, "done_seq": None, "instance": self.instance}

    def _replay(self, sess: _Session, rid: str) -> _Request:
        records = self.results.get(sess.id, rid)
        req = _Request(id=rid, session=sess.id, state="done", first_seq=sess.next_seq)
        for rec in records:
            body = dict(rec.body)
            if rec.type == "done":
                body.update(first_seq=req.first_seq, replayed=True)
            seq = self._append(sess, req, rec.type, body, rec.payload, keep=False)
        req.done_seq = seq
        self._requests[(sess.id, rid)] = req
        return req

    def _append(self, sess: _Session, req: _Request, mtype: str, body: dict,
                payload: np.ndarray | None, *, keep: bool = True) -> int:
        with self._lock:
            seq = sess.next_seq
            sess.next_seq += 1
            sess.log[seq] = encode(Message(mtype, sess.id, seq, req.id, body, payload))
            req.seqs.append(seq)
            if keep:
                req.records.append(StreamRecord(mtype, body, payload))
        return seq

    def _run_job(self, sess: _Session, req: _Request, job: PresentJob) -> None:
        wake = self._ctx.socket(zmq.PUSH)
        wake.linger = 0
        wake.connect(self._wake_addr)
        emitter = _JobEmitter(self, sess, req, wake)
        status, error = "ok", ""
        try:
            self.backend.run(job, emitter, req.cancel)
            if req.cancel.is_set():
                status = "aborted"
        except Exception as err:
            log.error("presentation %s failed: %s", req.id, traceback.format_exc())
            status, error = "failed", f"{type(err).__name__}: {err}"
        done = {"stimulus_id": job.stimulus_id, "repeats": job.repeats, "n_frames": len(job.frames),
                "n_spikes": emitter.n_spikes, "first_seq": req.first_seq, "status": status, "error": error,
                "n_messages": len(req.seqs) + 1}
        if status == "ok":
            # On disk before "done" is sent: once the controller may act on it, a rig restart
            # can replay the presentation instead of showing it again.
            self.results.put(sess.id, req.id, [*req.records, StreamRecord("done", done, None)])
        seq = self._append(sess, req, "done", done, None)
        req.done_seq = seq
        req.state = {"ok": "done", "aborted": "aborted", "failed": "failed"}[status]
        req.error = error
        req.records = []
        wake.send(b"")
        wake.close()

    def _status(self, router: zmq.Socket, sess: _Session, msg: Message) -> dict:
        return {**self._state_body(sess), "backend": self.backend.info.backend}

    def _abort(self, router: zmq.Socket, sess: _Session, msg: Message) -> dict:
        target = msg.body.get("request_id")
        job = self._job
        if job is not None and job.state == "running" and job.session == sess.id and target in (None, job.id):
            job.cancel.set()
            return {"aborted": job.id}
        return {"aborted": None}

    def _fetch(self, router: zmq.Socket, sess: _Session, msg: Message) -> dict:
        lo, hi = msg.body.get("from_seq"), msg.body.get("to_seq")
        if not (is_int(lo) and is_int(hi)) or not 1 <= lo <= hi:
            raise MessageError("bad_request", f"fetch needs 1 <= from_seq <= to_seq, got {shown(lo)}..{shown(hi)}")
        hi = min(hi, lo + MAX_FETCH - 1, sess.next_seq - 1)
        resent, missing = 0, []
        identity = sess.identity
        assert identity is not None
        for seq in range(lo, hi + 1):
            with self._lock:
                frames = sess.log.get(seq)
            if frames is None:
                missing.append(seq)
            elif self._send_frames(router, identity, frames) == "sent":
                resent += 1
            else:
                break  # queue full: the reply says how far we got, the controller asks again
        return {"resent": resent, "to_seq": lo + resent + len(missing) - 1, "missing": missing[:1000]}

    def _ack(self, router: zmq.Socket, sess: _Session, msg: Message) -> dict:
        rid = msg.body.get("request_id")
        if not is_valid_id(rid):
            raise MessageError("bad_request", f"ack needs a request_id, got {shown(rid)}")
        req = self._requests.get((sess.id, rid))
        if req is not None and req.state == "running":
            raise MessageError("bad_request", f"presentation {rid} is still running")
        if req is not None:
            with self._lock:
                for seq in req.seqs:
                    sess.log.pop(seq, None)
            req.records = []
        self.results.delete(sess.id, rid)
        return {"acked": rid}


class _JobEmitter:
    """Turns backend callbacks into logged stream messages (runs in the job thread)."""

    def __init__(self, server: RigServer, sess: _Session, req: _Request, wake: zmq.Socket) -> None:
        self.server, self.sess, self.req, self.wake = server, sess, req, wake
        self.n_spikes = 0

    def _emit(self, mtype: str, body: dict, payload: np.ndarray) -> None:
        self.server._append(self.sess, self.req, mtype, body, payload)
        self.wake.send(b"", zmq.NOBLOCK)

    def flips(self, repeat: int, frame_index: np.ndarray, samples: np.ndarray) -> None:
        payload = np.stack([np.asarray(frame_index, np.int64), np.asarray(samples, np.int64)], axis=1)
        self.req.flips_seen += len(payload)
        self._emit("flips", {"repeat": int(repeat)}, payload)

    def spikes(self, cell_ids: np.ndarray, samples: np.ndarray) -> None:
        payload = np.stack([np.asarray(cell_ids, np.int64), np.asarray(samples, np.int64)], axis=1)
        for a in range(0, len(payload), SPIKES_PER_MESSAGE):
            part = payload[a:a + SPIKES_PER_MESSAGE]
            self.n_spikes += len(part)
            self._emit("spikes", {}, part)

    def counts(self, repeat: int, start_frame: int, counts: np.ndarray) -> None:
        counts = np.asarray(counts, np.uint16)
        self.n_spikes += int(counts.sum())
        self._emit("counts", {"repeat": int(repeat), "start_frame": int(start_frame)}, counts)


def _peer_address(frame: zmq.Frame) -> str:
    """The sending peer's IP address (ZeroMQ's "Peer-Address" message property), or ""."""
    try:
        return str(frame.get("Peer-Address"))
    except (zmq.ZMQError, AttributeError, KeyError):
        return ""


def default_store_dir() -> Path:
    return Path(os.environ.get("INSILICO_RIG_STORE", Path.home() / ".insilico" / "rig_store"))

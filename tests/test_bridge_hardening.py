"""Defects a second, hostile client found in the bridge (issue 20), each on a real server over loopback."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from rig_bridge.client import RigClient
from rig_bridge.errors import RigRemoteError, RigTimeoutError
from rig_bridge.protocol import Message, MessageError, decode, encode, is_valid_id
from rig_bridge.result_store import ResultStore
from rig_bridge.retina.backend import SimBackend
from rig_bridge.server import RigServer, ServerConfig
from rig_bridge.transport import free_port
from stimuli.recording import open_recording

CELLS, SIZE, RATE, SEED = 6, 8, 30.0, 5


@pytest.fixture(scope="module")
def backend() -> SimBackend:
    return SimBackend(n_cells=CELLS, size=SIZE, frame_rate=RATE, seed=SEED)


def _serve(backend: SimBackend, tmp_path: Path, **kw: object) -> RigServer:
    config = ServerConfig(port=free_port(), store_dir=tmp_path / "store", insecure=True, heartbeat_s=0.2,
                          rig_seed=SEED, **kw)
    return RigServer(backend, config).start()


def _raw(server: RigServer, **opts: int) -> zmq.Socket:
    """A bare DEALER, the way an independent client would talk to the rig."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    for name, value in opts.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(server.address)
    return sock


def _send(sock: zmq.Socket, mtype: str, session: str, rid: str, body: dict | None = None) -> None:
    sock.send_multipart(encode(Message(mtype, session, 1, rid, body or {"protocol": 1})))


def _replies(sock: zmq.Socket, n: int, timeout_s: float = 10.0) -> list[Message]:
    """The next `n` replies (`ok`, `error`), or those that came within `timeout_s`; heartbeats are skipped."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        msg = decode(sock.recv_multipart())
        if msg.type in ("ok", "error"):
            out.append(msg)
    time.sleep(0.05)  # a reply too many would arrive now
    while sock.poll(0):
        msg = decode(sock.recv_multipart())
        if msg.type in ("ok", "error"):
            out.append(msg)
    return out


# --- 1. replies are never dropped ---------------------------------------------------------------
def test_replies_wait_for_a_controller_that_stopped_reading(backend: SimBackend, tmp_path: Path) -> None:
    # A tiny send queue and a controller that reads nothing for a while: before the fix every
    # reply that met the full queue was lost (the doc promises exactly one per command).
    srv = _serve(backend, tmp_path, send_queue_messages=4)
    sock = _raw(srv, RCVHWM=1, RCVBUF=2048)
    try:
        _send(sock, "hello", "s-slow", "h-0")
        assert _replies(sock, 1)[0].type == "ok"
        n = 600
        for i in range(n):
            _send(sock, "status", "s-slow", f"q-{i}", {})
        time.sleep(0.5)  # not reading: the rig's queue towards us fills up
        # A generous deadline: on a loaded machine 600 replies take longer than 10 s; a dropped
        # reply never comes at all.
        got = [m.request_id for m in _replies(sock, n, timeout_s=60.0) if m.type == "ok"]
    finally:
        sock.close(0)
        srv.stop()
    assert sorted(got) == sorted(f"q-{i}" for i in range(n))  # each exactly once


# --- 2. the session table is bounded --------------------------------------------------------------
def test_a_hello_flood_is_bounded_and_the_real_controller_keeps_working(backend: SimBackend,
                                                                         tmp_path: Path) -> None:
    # The client heartbeats only while it waits for a reply, so the controller is silent while the
    # test floods: `dead_after_s` must outlast a flood on a loaded machine (at 0.3 s the controller
    # itself was presumed dead and forgotten there), and the flood's sessions must then outlive it.
    dead_after_s = 2.0
    srv = _serve(backend, tmp_path, max_sessions=50, dead_after_s=dead_after_s)
    flood = _raw(srv)
    try:
        with RigClient(srv.address, insecure=True, timeout_s=5, heartbeat_s=0.2) as client:
            client.hello()
            for i in range(400):
                _send(flood, "hello", f"flood-{i}", f"h-{i}")
            answers = _replies(flood, 400)
            codes = [m.body.get("code") for m in answers if m.type == "error"]
            assert len(answers) == 400 and codes and set(codes) == {"full"}
            assert len(srv._sessions) <= 50
            assert client.status()["state"] == "idle"  # the controller already in the table is served
            time.sleep(dead_after_s + 0.3)  # the flood's sessions are now presumed dead and hold nothing
            client.status()
            for i in range(400, 440):
                _send(flood, "hello", f"flood-{i}", f"h-{i}")
            late = _replies(flood, 40)
            assert len(late) == 40 and all(m.type == "ok" for m in late)  # room was made by forgetting dead, empty sessions
            assert len(srv._sessions) <= 50 and client.session_id in srv._sessions
    finally:
        flood.close(0)
        srv.stop()


def test_idle_sessions_that_hold_nothing_are_forgotten(backend: SimBackend, tmp_path: Path) -> None:
    srv = _serve(backend, tmp_path, session_idle_s=0.3)
    sock = _raw(srv)
    try:
        for i in range(20):
            _send(sock, "hello", f"idle-{i}", f"h-{i}")
        assert len(_replies(sock, 20)) == 20
        deadline = time.monotonic() + 5
        while srv._sessions and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not srv._sessions
    finally:
        sock.close(0)
        srv.stop()


# --- 4. ids are checked before they become path components -----------------------------------------
@pytest.mark.parametrize("bad", ["..", ".", ".hidden", "-rf", "a\n", "x" * 81, ""])
def test_ids_that_could_escape_a_folder_are_refused(bad: str) -> None:
    assert not is_valid_id(bad)
    frames = encode(Message("hello", "s-ok", 1, "r-ok", {}))
    header = json.loads(frames[1])
    header["session"] = bad
    with pytest.raises(MessageError) as err:
        decode([frames[0], json.dumps(header).encode(), frames[2]])
    assert err.value.code == "malformed"
    with pytest.raises(ValueError):
        ResultStore("/tmp/never-written")._path(bad, "r-1")


def test_session_dot_dot_writes_nothing_outside_results(backend: SimBackend, tmp_path: Path) -> None:
    srv = _serve(backend, tmp_path)
    sock = _raw(srv)
    try:
        header = json.loads(encode(Message("hello", "s-x", 1, "h-1", {"protocol": 1}))[1])
        header["session"] = ".."
        sock.send_multipart([b"hello", json.dumps(header).encode(), b""])
        (reply,) = _replies(sock, 1)
        assert reply.type == "error" and reply.body["code"] == "malformed"
        assert ".." not in srv._sessions and not srv._sessions
    finally:
        sock.close(0)
        srv.stop()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["results", "stimuli"]


def test_stimulus_ids_must_be_content_hashes(backend: SimBackend, tmp_path: Path) -> None:
    srv = _serve(backend, tmp_path)
    try:
        with RigClient(srv.address, insecure=True, timeout_s=5, heartbeat_s=0.2) as client:
            client.hello()
            for bad in ("..", "a" * 63, "A" * 64):
                with pytest.raises(RigRemoteError) as err:
                    client._call("upload", {"stimulus_id": bad, "frame_rate": RATE})
                assert err.value.code == "bad_request"
                with pytest.raises(RigRemoteError) as err:
                    client._call("present", {"stimulus_id": bad, "repeats": 1})
                assert err.value.code == "bad_request"
    finally:
        srv.stop()


# --- 10. the doc's "every header field is required" holds ---------------------------------------------
@pytest.mark.parametrize("field", ["dtype", "shape", "nbytes", "crc32", "body", "seq"])
def test_a_header_without_a_required_field_is_malformed(field: str) -> None:
    frames = encode(Message("status", "s-1", 1, "r-1", {}, None))
    header = json.loads(frames[1])
    del header[field]
    with pytest.raises(MessageError) as err:
        decode([frames[0], json.dumps(header).encode(), frames[2]])
    assert err.value.code == "malformed" and field in err.value.message


def test_error_replies_do_not_echo_a_whole_attack(backend: SimBackend, tmp_path: Path) -> None:
    srv = _serve(backend, tmp_path)
    sock = _raw(srv)
    try:
        _send(sock, "hello", "s-big", "h-1")
        _replies(sock, 1)
        _send(sock, "upload", "s-big", "u-1", {"frame_rate": "x" * 60_000})
        (reply,) = _replies(sock, 1)
    finally:
        sock.close(0)
        srv.stop()
    assert reply.body["code"] == "bad_request" and len(reply.body["message"]) < 400


# --- 3. oversized messages never reach the rig's memory; big stimuli go in parts ------------------------
def test_a_message_over_the_limit_is_cut_at_the_transport(backend: SimBackend, tmp_path: Path) -> None:
    limit = 64 * 1024
    srv = _serve(backend, tmp_path, max_payload_bytes=limit)
    sock = _raw(srv)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        _send(sock, "hello", "s-huge", "h-1")
        assert _replies(sock, 1)[0].type == "ok"
        # Before the fix the rig took messages up to twice its limit into memory, then answered.
        huge = np.zeros((4 * limit // (SIZE * SIZE), SIZE, SIZE), np.uint8)
        sock.send_multipart(encode(Message("upload", "s-huge", 2, "u-1", {"frame_rate": RATE}, huge)))
        assert monitor.poll(5000), "the rig kept a connection that sent an oversized message"
        assert _replies(sock, 1, timeout_s=0.5) == []
        with RigClient(srv.address, insecure=True, timeout_s=5, heartbeat_s=0.2) as client:
            assert client.status()["state"] == "idle"  # still serving everyone else
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
        srv.stop()


def test_a_stimulus_bigger_than_a_message_arrives_in_parts(backend: SimBackend, tmp_path: Path) -> None:
    srv = _serve(backend, tmp_path, max_payload_bytes=16 * 1024)
    frames = np.random.default_rng(1).integers(0, 256, (1200, SIZE, SIZE), dtype=np.uint8)  # 75 KiB: 5 parts
    try:
        with RigClient(srv.address, insecure=True, timeout_s=5, heartbeat_s=0.2) as client:
            sid = client.upload(frames)
            assert sid in srv.stimuli and np.array_equal(srv.stimuli.get(sid).frames, frames)
            assert client.upload(frames) == sid  # known by hash now: nothing sent again
            counts = client.present(sid, repeats=1)
            assert counts.shape == (1, 1200, CELLS)
            # A part whose frames do not hash to the claimed id is refused once all have come.
            other = frames.copy()
            other[-1] ^= 1
            body = {"stimulus_id": sid.replace(sid[0], "0" if sid[0] != "0" else "1", 1), "frame_rate": RATE,
                    "shape": list(other.shape)}
            with pytest.raises(RigRemoteError) as err:
                start = 0
                while True:
                    reply = client._call("upload", {**body, "start_frame": start}, other[start:start + 256])
                    start = reply.body["next_frame"]
            assert err.value.code == "checksum"
    finally:
        srv.stop()
    assert not list((tmp_path / "store" / "stimuli").glob(".*.part*"))  # nothing left half-written


# --- 7. durability: commits are fsynced, file and folder -------------------------------------------------
def test_session_commit_fsyncs_the_file_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from rig_bridge.session_file import store_presentation

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:  # the real fsync, recording what it flushed
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    session = tmp_path / "s" / "session.h5"
    frames = np.zeros((4, SIZE, SIZE), np.uint8)
    store_presentation(session, "present000_x", frames, RATE, np.arange(3), np.ones((1, 4, 3), np.float32))
    # The file's bytes before the rename (under its temporary name), the folder after it.
    assert any(Path(p).name.startswith(".session.h5.") for p in synced)
    assert str(session.parent) in synced and synced.index(str(session.parent)) == len(synced) - 1


# --- 5. a presentation stored but never acknowledged is reconciled on the next run ------------------------
def test_a_stored_but_unacknowledged_presentation_is_acked_on_rerun(backend: SimBackend, tmp_path: Path) -> None:
    from rig_bridge.journal import SessionJournal
    from rig_bridge.session_file import store_presentation

    srv = _serve(backend, tmp_path)
    session = tmp_path / "session.h5"
    frames = np.random.default_rng(2).integers(0, 256, (6, SIZE, SIZE), dtype=np.uint8)
    try:
        # What a controller killed between journalling "stored" and sending ack leaves behind.
        journal = SessionJournal(session)
        with RigClient(srv.address, insecure=True, timeout_s=5, heartbeat_s=0.2,
                       session_id=journal.session_id) as client:
            sid = client.upload(frames)
            intent = journal.add_intent(sid, 1, 0, set())
            counts = client._run_presentation(intent.request_id, sid, frames, 1, 0)
            store_presentation(session, intent.segment, frames, RATE, client.rig.cell_ids, counts)
            journal.mark_stored(intent)
        assert srv.results.has(journal.session_id, intent.request_id)
        # The rerun: a new controller process presents the next stimulus in the same session.
        with RigClient(srv.address, insecure=True, timeout_s=5, heartbeat_s=0.2) as client:
            client.present(frames[::-1].copy(), repeats=1, session_path=session)
        assert not srv.results.has(journal.session_id, intent.request_id)
        assert not srv._sessions[journal.session_id].log  # nothing left unacknowledged on the rig
        assert SessionJournal(session).stored_unacked() == []
    finally:
        srv.stop()


# --- 6. a commit killed midway leaves a hidden copy: the next commit removes it -----------------------------
def test_the_next_commit_removes_a_dead_commits_copy(tmp_path: Path) -> None:
    from rig_bridge.session_file import store_presentation

    session = tmp_path / "session.h5"
    frames = np.zeros((4, SIZE, SIZE), np.uint8)
    store_presentation(session, "present000_a", frames, RATE, np.arange(3), np.ones((1, 4, 3), np.float32))
    dead = tmp_path / ".session.h5.k1ll3d.part"  # as RecordingWriter names its copy
    dead.write_bytes(session.read_bytes())
    store_presentation(session, "present001_b", frames, RATE, np.arange(3), np.ones((1, 4, 3), np.float32))
    assert not dead.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["session.h5"]


# --- 9. serve's refusals are one line; IPv6 loopback works ------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--insecure", "--host", "192.0.2.1"], "loopback"),
    (["--insecure", "--keys", "KEYS"], "not both"),
    (["--keys", "KEYS", "--host", "127.0.0.1", "--port", "BUSY"], "cannot serve on tcp://127.0.0.1:"),
])
def test_serve_refuses_in_one_line(args: list[str], words: str, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from rig_bridge.keys import generate_keys

    keys = generate_keys(tmp_path / "keys")
    with socket.socket() as busy:  # a port some other program already serves on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        fill = {"KEYS": str(keys), "BUSY": str(busy.getsockname()[1])}
        args = [fill.get(a, a) for a in args]
        cmd = [sys.executable, "-m", "rig_bridge.cli", "serve", "--store", str(tmp_path / "store"), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


def test_a_rig_on_ipv6_loopback(backend: SimBackend, tmp_path: Path) -> None:
    srv = RigServer(backend, ServerConfig(host="::1", port=free_port(), store_dir=tmp_path / "store",
                                          insecure=True, heartbeat_s=0.2)).start()
    try:
        assert srv.address.startswith("tcp://[::1]:")
        with RigClient(srv.address, insecure=True, timeout_s=5, heartbeat_s=0.2) as client:
            assert client.status()["state"] == "idle"
    finally:
        srv.stop()


# --- 8. failed handshakes leave a line in the rig's log ---------------------------------------------------
def test_refused_handshakes_are_logged(backend: SimBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rig_bridge.errors import RigAuthError
    from rig_bridge.keys import generate_keys

    rig_keys = generate_keys(tmp_path / "lab")
    stranger = generate_keys(tmp_path / "stranger")
    (stranger / "server.key").write_bytes((rig_keys / "server.key").read_bytes())
    config = ServerConfig(port=free_port(), store_dir=tmp_path / "store", keys_dir=rig_keys)
    with caplog.at_level(logging.INFO, logger="rig_bridge"), RigServer(backend, config) as srv:
        with pytest.raises(RigAuthError), RigClient(srv.address, stranger, timeout_s=3) as client:
            client.hello()  # an unknown key: refused by ZAP
        with pytest.raises((RigAuthError, RigTimeoutError)), \
                RigClient(srv.address, insecure=True, timeout_s=1.5) as client:
            client.hello()  # plain TCP against CurveZMQ: fails before ZAP is asked
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.name == "rig_bridge.auth"]
    assert any("refused" in line and "127.0.0.1" in line for line in lines), lines
    # The plain-TCP attempt never reaches ZAP: the monitor's line (protocol error, or no detail).
    assert any(line.startswith("handshake of a connection") and "authentication" not in line for line in lines), lines


def test_presentations_are_appended_in_place(tmp_path: Path) -> None:
    from rig_bridge.session_file import store_presentation

    session = tmp_path / "session.h5"
    frames = np.zeros((70, SIZE, SIZE), np.uint8)
    counts = np.ones((2, 70, 3), np.float32)
    store_presentation(session, "present000_a", frames, RATE, np.arange(3), counts)
    inode = session.stat().st_ino
    for i in range(1, 4):
        store_presentation(session, f"present00{i}_a", frames + i, RATE, np.arange(3), counts * i)
    # Same file, grown in place (before: a copy of the whole session renamed over it, each time).
    assert session.stat().st_ino == inode and sorted(p.name for p in tmp_path.iterdir()) == ["session.h5"]
    with open_recording(session) as rec:
        assert [s.name for s in rec.segments] == [f"present00{i}_a" for i in range(4)]
        np.testing.assert_array_equal(rec.counts("present002_a"), counts * 2)
        np.testing.assert_array_equal(rec.frames("present003_a"), frames + 3)
        rec.verify()


def test_an_append_killed_midway_is_undone_byte_for_byte(tmp_path: Path) -> None:
    import hashlib
    import subprocess
    import sys

    from rig_bridge.session_file import store_presentation, stored_segments

    session = tmp_path / "session.h5"
    frames = np.zeros((70, SIZE, SIZE), np.uint8)
    store_presentation(session, "present000_a", frames, RATE, np.arange(3), np.ones((2, 70, 3), np.float32))
    before = hashlib.sha256(session.read_bytes()).hexdigest()
    # A controller that dies (no close, no cleanup) with half an append flushed to the file.
    crash = (
        "import os, sys, numpy as np\n"
        "from stimuli.recording import RecordingWriter\n"
        "w = RecordingWriter.extend(sys.argv[1])\n"
        f"w.append(np.full((100, {SIZE}, {SIZE}), 7, np.uint8), np.ones((2, 100, 3), np.float32))\n"
        "w.add_segment('present001_b', 70, 170)\n"
        "w._write_segments()\n"
        "w._f.flush()\n"
        "os._exit(9)\n"
    )
    result = subprocess.run([sys.executable, "-c", crash, str(session)], capture_output=True, text=True,
                            timeout=60, env={**__import__("os").environ})
    assert result.returncode == 9, result.stderr
    assert hashlib.sha256(session.read_bytes()).hexdigest() != before  # the file was changed in place
    assert stored_segments(session) == {"present000_a"}  # recovered first
    assert hashlib.sha256(session.read_bytes()).hexdigest() == before
    assert store_presentation(session, "present001_b", frames, RATE, np.arange(3), np.ones((2, 70, 3), np.float32))
    assert stored_segments(session) == {"present000_a", "present001_b"}

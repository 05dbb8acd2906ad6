"""Presentation sessions over loopback: sim backend, retries, gaps, bad input, security, CLI."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import zmq
from typer.testing import CliRunner

from rig_bridge.cli import rig_app
from rig_bridge.client import RigClient
from rig_bridge.errors import RigAuthError, RigRemoteError, RigTimeoutError, SessionFileError
from rig_bridge.journal import SessionJournal
from rig_bridge.keys import generate_keys
from rig_bridge.protocol import Message, decode, encode
from rig_bridge.retina.backend import SimBackend, presentation_seed, repeat_counts, repeat_rng
from rig_bridge.server import RigServer, ServerConfig
from rig_bridge.transport import InsecureAddressError, free_port
from stimuli.recording import open_recording, write_stimulus

CELLS, SIZE, RATE, SEED = 12, 8, 30.0, 3


@pytest.fixture(scope="module")
def backend() -> SimBackend:
    return SimBackend(n_cells=CELLS, size=SIZE, frame_rate=RATE, seed=SEED)


@pytest.fixture
def server(backend: SimBackend, tmp_path: Path):
    srv = RigServer(backend, ServerConfig(port=free_port(), store_dir=tmp_path / "store", insecure=True,
                                          heartbeat_s=0.2, rig_seed=SEED)).start()
    yield srv
    srv.stop()


def _client(server: RigServer, **kw: object) -> RigClient:
    return RigClient(server.address, insecure=True, timeout_s=kw.pop("timeout_s", 5.0), heartbeat_s=0.2, **kw)


def _stimulus(t: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, SIZE, SIZE), dtype=np.uint8)


def _expected(backend: SimBackend, frames: np.ndarray, request_id: str, repeats: int) -> np.ndarray:
    """The simulated retina's own spike counts for this presentation, computed here independently."""
    seed = presentation_seed(SEED, request_id)
    return np.stack([repeat_counts(backend.retina, frames, repeat_rng(seed, r)) for r in range(repeats)])


def test_session_over_loopback(server: RigServer, backend: SimBackend, tmp_path: Path) -> None:
    frames = _stimulus()
    session = tmp_path / "session.h5"
    with _client(server) as client:
        hello = client.hello()
        assert hello.backend == "sim" and list(hello.cell_ids) == list(backend.retina.cell_ids)
        first = client.present(frames, repeats=3, isi_grey_frames=2, session_path=session)
        second = client.present(frames, repeats=2, session_path=session)
    assert first.shape == (3, 10, CELLS) and second.shape == (2, 10, CELLS)
    journal = SessionJournal(session)
    rids = list(journal.intents)
    assert len(rids) == 2 and journal.stored == set(rids)
    # Every spike the retina fired arrived and fell into the right frame bin.
    np.testing.assert_array_equal(first, _expected(backend, frames, rids[0], 3))
    np.testing.assert_array_equal(second, _expected(backend, frames, rids[1], 2))
    assert first.sum() > 0
    with open_recording(session) as rec:
        names = [s.name for s in rec.segments]
        assert names == [journal.intents[r].segment for r in rids]
        assert names[0].startswith("present000_")
        np.testing.assert_array_equal(rec.frames(segment=names[1]), frames)
        np.testing.assert_array_equal(rec.counts(segment=names[0]), first)
        stored = rec.counts(segment=names[1])
        np.testing.assert_array_equal(stored[:2], second)
        assert np.isnan(stored[2]).all()  # a 2-repeat presentation in a 3-repeat session


def test_counts_stream_format(backend: SimBackend, tmp_path: Path) -> None:
    counting = SimBackend(n_cells=CELLS, size=SIZE, frame_rate=RATE, seed=SEED, spike_format="counts")
    with RigServer(counting, ServerConfig(port=free_port(), store_dir=tmp_path, insecure=True,
                                          rig_seed=SEED)) as srv, _client(srv) as client:
        frames = _stimulus(seed=4)
        counts = client.present(frames, repeats=2)
    assert counts.shape == (2, 10, CELLS) and counts.sum() > 0


def test_retried_present_is_shown_once(server: RigServer, backend: SimBackend) -> None:
    with _client(server) as client:
        sid = client.upload(_stimulus())
        body = {"stimulus_id": sid, "repeats": 2, "isi_grey_frames": 0}
        a = client._call("present", body, request_id="r-retry")
        b = client._call("present", body, request_id="r-retry")  # as after a lost reply
        assert a.body["first_seq"] == b.body["first_seq"]
        assert b.body["state"] in ("running", "done")
        counts = client._run_presentation("r-retry", sid, client._stimuli[sid], 2, 0)
    starts = [r for r in server._requests if r[1] == "r-retry"]
    assert len(starts) == 1
    np.testing.assert_array_equal(counts, _expected(backend, _stimulus(), "r-retry", 2))


def test_upload_is_sent_once_and_kept_across_restart(backend: SimBackend, tmp_path: Path) -> None:
    frames = _stimulus(seed=5)
    config = ServerConfig(port=free_port(), store_dir=tmp_path, insecure=True)
    with RigServer(backend, config) as srv, _client(srv) as client:
        sid = client.upload(frames)
        reply = client._call("upload", {"stimulus_id": sid, "frame_rate": RATE})
        assert reply.body["uploaded"] is False
    with RigServer(backend, config) as srv, _client(srv) as client:
        assert client._call("upload", {"stimulus_id": sid, "frame_rate": RATE}).body["uploaded"] is False


class _LossyClient(RigClient):
    """Loses every third stream message the first time it arrives, as a flaky network would."""

    seen: set[int]

    def _dispatch(self, msg: Message) -> None:
        if msg.type in ("flips", "spikes", "done") and msg.seq not in self.seen:
            self.seen.add(msg.seq)
            if msg.seq % 3 == 0:
                return
        super()._dispatch(msg)


def test_gaps_are_fetched_again(server: RigServer, backend: SimBackend) -> None:
    client = _LossyClient(server.address, insecure=True, timeout_s=5.0, heartbeat_s=0.2)
    client.seen = set()
    with client:
        frames = _stimulus(t=20, seed=6)
        counts = client.present(frames, repeats=3)
    assert any(s % 3 == 0 for s in client.seen)
    rid = next(r for (_, r) in server._requests)
    np.testing.assert_array_equal(counts, _expected(backend, frames, rid, 3))


def _raw(server: RigServer) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.address)
    return sock


def _ask(sock: zmq.Socket, frames: list[bytes]) -> Message:
    """Send raw frames; return the reply (the rig's heartbeats in between are skipped)."""
    sock.send_multipart(frames)
    while True:
        assert sock.poll(3000), "no reply from the rig"
        msg = decode(sock.recv_multipart())
        if msg.type in ("ok", "error"):
            return msg


def test_bad_input_gets_error_replies_and_server_keeps_serving(server: RigServer) -> None:
    sock = _raw(server)
    hello = encode(Message("hello", "s-raw", 1, "q-1", {"protocol": 1}))
    assert _ask(sock, hello).type == "ok"
    cases = {
        "malformed": [b"hello", b"{broken"],
        "unknown_type": [b"selfdestruct", hello[1], b""],
        "bad_version": [hello[0], hello[1].replace(b'"v":1', b'"v":9'), b""],
        "shape_mismatch": [b"upload", json.dumps({"v": 1, "session": "s-raw", "seq": 2, "req": "q-2",
                                                  "dtype": "uint8", "shape": [2, 8, 8], "nbytes": 10,
                                                  "crc32": zlib.crc32(b"x" * 10), "body": {}}).encode(),
                           b"x" * 10],
    }
    for code, frames in cases.items():
        reply = _ask(sock, frames)
        assert reply.type == "error" and reply.body["code"] == code, (code, dict(reply.body))
    nan_frames = np.full((2, SIZE, SIZE), 100.0, dtype=np.float32)
    nan_frames[1, 0, 0] = np.nan
    reply = _ask(sock, encode(Message("upload", "s-raw", 3, "q-3", {"frame_rate": RATE}, nan_frames)))
    assert reply.body["code"] == "bad_frames" and "NaN" in reply.body["message"]
    reply = _ask(sock, encode(Message("upload", "s-raw", 4, "q-4", {"frame_rate": RATE},
                                      np.full((2, SIZE, SIZE), 300.0, dtype=np.float32))))
    assert reply.body["code"] == "bad_frames"
    reply = _ask(sock, encode(Message("upload", "s-raw", 5, "q-5", {"frame_rate": RATE},
                                      np.zeros((2, 5, 5), dtype=np.uint8))))
    assert reply.body["code"] == "bad_frames" and "5x5" in reply.body["message"]
    reply = _ask(sock, encode(Message("present", "s-raw", 6, "q-6", {"stimulus_id": "0" * 64, "repeats": 1})))
    assert reply.body["code"] == "unknown_stimulus"
    reply = _ask(sock, encode(Message("present", "s-raw", 7, "q-7", {"stimulus_id": "ab", "repeats": -1})))
    assert reply.body["code"] == "bad_request"
    reply = _ask(sock, encode(Message("status", "s-unknown", 8, "q-8")))
    assert reply.body["code"] == "unknown_session"
    sock.close()
    with _client(server) as client:  # still serving
        assert client.status()["state"] == "idle"


def test_oversized_payload_is_refused(backend: SimBackend, tmp_path: Path) -> None:
    with RigServer(backend, ServerConfig(port=free_port(), store_dir=tmp_path, insecure=True,
                                         max_payload_bytes=1000)) as srv:
        sock = _raw(srv)
        _ask(sock, encode(Message("hello", "s-big", 1, "q-1")))
        reply = _ask(sock, encode(Message("upload", "s-big", 2, "q-2", {"frame_rate": RATE},
                                          np.zeros((20, SIZE, SIZE), dtype=np.uint8))))
        assert reply.body["code"] == "too_large"
        sock.close()


def test_unauthenticated_controller_is_refused(backend: SimBackend, tmp_path: Path) -> None:
    rig_keys = generate_keys(tmp_path / "lab")
    stranger = generate_keys(tmp_path / "stranger")
    # The stranger knows the rig's public key but the rig does not know the stranger's.
    (stranger / "server.key").write_bytes((rig_keys / "server.key").read_bytes())
    config = ServerConfig(port=free_port(), store_dir=tmp_path / "store", keys_dir=rig_keys)
    with RigServer(backend, config) as srv:
        with RigClient(srv.address, rig_keys, timeout_s=5) as good:
            assert good.hello().backend == "sim"
        t0 = time.monotonic()
        with RigClient(srv.address, stranger, timeout_s=2) as bad, \
                pytest.raises(RigAuthError, match="refused this controller"):
            bad.hello()
        assert time.monotonic() - t0 < 2  # the handshake failure is seen at once, not timed out
        wrong_server = generate_keys(tmp_path / "elsewhere")  # a key for some other rig
        with RigClient(srv.address, wrong_server, timeout_s=2) as bad, \
                pytest.raises(RigAuthError, match="handshake"):
            bad.hello()
        with pytest.raises(ValueError, match="keys_dir"):
            RigClient(srv.address)


def test_plain_tcp_only_on_loopback(backend: SimBackend, tmp_path: Path) -> None:
    with pytest.raises(InsecureAddressError, match="loopback"):
        RigClient("tcp://10.1.2.3:5555", insecure=True)
    srv = RigServer(backend, ServerConfig(host="0.0.0.0", port=free_port(), store_dir=tmp_path, insecure=True))
    with pytest.raises(InsecureAddressError, match="loopback"):
        srv.start()


def test_dead_rig_is_detected_within_seconds(backend: SimBackend, tmp_path: Path) -> None:
    srv = RigServer(backend, ServerConfig(port=free_port(), store_dir=tmp_path, insecure=True)).start()
    with RigClient(srv.address, insecure=True, timeout_s=1.5, heartbeat_s=0.2) as client:
        client.hello()
        srv.stop()
        t0 = time.monotonic()
        with pytest.raises(RigTimeoutError, match="silent for"):
            client.status()
        assert time.monotonic() - t0 < 3.0


def test_abort_and_session_file_checks(tmp_path: Path) -> None:
    slow = SimBackend(n_cells=CELLS, size=SIZE, frame_rate=RATE, seed=SEED, realtime=True)
    with RigServer(slow, ServerConfig(port=free_port(), store_dir=tmp_path, insecure=True)) as srv, \
            _client(srv) as client:
        sid = client.upload(_stimulus(t=60))
        client._call("present", {"stimulus_id": sid, "repeats": 5, "isi_grey_frames": 0}, request_id="r-long")
        assert client.abort() == "r-long"
        with pytest.raises(RigRemoteError, match="aborted"):
            client._run_presentation("r-long", sid, client._stimuli[sid], 5, 0)
        session = tmp_path / "other.h5"
        write_stimulus(session, _stimulus(t=3), RATE)
        with pytest.raises(SessionFileError, match="stimulus-only"):
            client.present(_stimulus(), repeats=1, session_path=session)


def test_cli_keys_and_present(server: RigServer, backend: SimBackend, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(rig_app, ["keys", "--out", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k" / "server.key_secret").is_file()
    assert (tmp_path / "k" / "authorized_clients" / "client.key").is_file()
    stim = tmp_path / "stim.h5"
    frames = _stimulus(t=8, seed=9)
    write_stimulus(stim, frames, RATE)
    out = tmp_path / "cli_session.h5"
    for _ in range(2):
        result = runner.invoke(rig_app, ["present", str(stim), "--rig", server.address, "--repeats", "2",
                                         "--out", str(out), "--insecure"])
        assert result.exit_code == 0, result.output
    journal = SessionJournal(out)
    with open_recording(out) as rec:
        assert len(rec.segments) == 2 and rec.n_frames == 16
        for rid, seg in zip(journal.intents, rec.segments, strict=True):
            np.testing.assert_array_equal(rec.counts(segment=seg.name), _expected(backend, frames, rid, 2))
    result = runner.invoke(rig_app, ["present", str(stim), "--rig", server.address, "--out", str(out)])
    assert result.exit_code != 0 and "keys" in result.output

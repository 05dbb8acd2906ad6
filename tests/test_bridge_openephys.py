"""The psychopy backend's spike sources: Open Ephys ZMQ interface, and PsychoPy + simulated retina."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from rig_bridge.openephys import CellMap, OpenEphysSubscriber
from rig_bridge.psychopy_backend import build_sequence
from rig_bridge.transport import free_port


class _FakeOpenEphys:
    """A local publisher speaking the ZMQ Interface plugin's documented message format."""

    def __init__(self) -> None:
        self.port = free_port()
        ctx = zmq.Context.instance()
        self.pub = ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.bind(f"tcp://127.0.0.1:{self.port}")
        self.rep = ctx.socket(zmq.REP)
        self.rep.linger = 0
        self.rep.bind(f"tcp://127.0.0.1:{self.port + 1}")
        self.heartbeats: list[dict] = []
        self.num = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._answer, daemon=True)
        self._thread.start()

    def _answer(self) -> None:
        while not self._stop.is_set():
            if self.rep.poll(20):
                self.heartbeats.append(json.loads(self.rep.recv()))
                self.rep.send(b"heartbeat received")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.pub.close()
        self.rep.close()

    def _send(self, header: dict, data: bytes | None) -> None:
        self.num += 1
        header = {"message_num": self.num, "timestamp": int(time.time() * 1000), **header}
        parts = [b"EVENT\0", json.dumps(header).encode()]
        self.pub.send_multipart(parts + ([data] if data is not None else []))

    def spike(self, electrode: str, sorted_id: int, sample: int) -> None:
        waveform = np.zeros((4, 40), dtype=np.float32).tobytes()
        self._send({"type": "spike", "spike": {"stream": "example_data", "source_node": 104,
                                              "electrode": electrode, "sample_num": sample,
                                              "num_channels": 4, "num_samples": 40,
                                              "sorted_id": sorted_id, "threshold": [-50.0] * 4}}, waveform)

    def ttl(self, line: int, state: int, sample: int) -> None:
        data = bytes([line, state]) + (1 << line).to_bytes(8, "little")
        self._send({"type": "event", "content": {"stream": "example_data", "source_node": 104,
                                                 "type": 3, "sample_num": sample},
                    "data_size": len(data)}, data)

    def skip(self, n: int) -> None:
        self.num += n


def test_subscriber_reads_the_plugin_format(tmp_path: Path) -> None:
    cmap = tmp_path / "cells.csv"
    cmap.write_text("electrode,sorted_id,cell_id\nTetrode 1,1,101\nTetrode 1,2,102\nTetrode 2,1,201\n")
    oe = _FakeOpenEphys()
    sub = OpenEphysSubscriber(f"tcp://127.0.0.1:{oe.port}", CellMap.load(cmap), photodiode_line=0,
                              heartbeat_s=0.1).start()
    try:
        deadline = time.monotonic() + 5
        while sub.latest_sample < 0:  # PUB/SUB joins late: probe until the subscriber hears us
            assert time.monotonic() < deadline, "subscriber never connected"
            oe.ttl(5, 1, 0)
            time.sleep(0.02)
        mark = sub.mark()
        for i, sample in enumerate([1000, 1500, 2000, 2500]):
            oe.ttl(0, i % 2, sample)  # photodiode edges, both directions
            oe.ttl(1, 1, sample + 3)  # another TTL line: not a flip
        oe.spike("Tetrode 1", 1, 1200)
        oe.spike("Tetrode 1", 2, 1700)
        oe.skip(2)  # two messages lost on the way
        oe.spike("Tetrode 2", 1, 2100)
        oe.spike("Tetrode 2", 0, 2200)  # unsorted: not a cell
        oe.spike("Tetrode 1", 1, 2600)  # after the window asked for below
        edges = sub.wait_edges(mark, 4, timeout_s=3)
        np.testing.assert_array_equal(edges, [1000, 1500, 2000, 2500])
        assert sub.wait_sample(2600, 3)
        cells, samples = sub.spikes_between(1000, 2500)
        np.testing.assert_array_equal(cells, [101, 102, 201])
        np.testing.assert_array_equal(samples, [1200, 1700, 2100])
        assert sub.lost_messages == 2 and sub.unmapped_spikes == 1
        deadline = time.monotonic() + 3
        while not oe.heartbeats:
            assert time.monotonic() < deadline, "no heartbeat reached the plugin's listening port"
            time.sleep(0.02)
        assert oe.heartbeats[0]["type"] == "heartbeat" and oe.heartbeats[0]["application"]
        with pytest.raises(RuntimeError, match="saw 0 of 3"):
            sub.wait_edges(sub.mark(), 3, timeout_s=0.2)
    finally:
        sub.stop()
        oe.close()


def test_cell_map_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("electrode,cell_id\nA,1\n")
    with pytest.raises(ValueError, match="sorted_id"):
        CellMap.load(bad)
    bad.write_text("electrode,sorted_id,cell_id\nA,1,5\nA,1,6\n")
    with pytest.raises(ValueError, match="twice"):
        CellMap.load(bad)


def test_sequence_layout() -> None:
    frames = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    seq = build_sequence(frames, repeats=2, isi_grey_frames=2)
    assert seq.repeat_starts == (0, 5) and len(seq.frames) == 10  # 3+2 grey, 3+2 grey (last >= 1)
    assert (seq.frames[3:5] == 128).all()
    np.testing.assert_array_equal(seq.frames[5:8], frames)


@pytest.mark.render
@pytest.mark.timeout(90)
def test_psychopy_backend_session(tmp_path: Path) -> None:
    from rig_bridge.client import RigClient
    from rig_bridge.psychopy_backend import PsychopyBackend, SimulatedSource
    from rig_bridge.retina.backend import presentation_seed, repeat_counts, repeat_rng
    from rig_bridge.server import RigServer, ServerConfig

    source = SimulatedSource(n_cells=8, size=16, frame_rate=30.0, seed=2)
    backend = PsychopyBackend("default", source, headless=True)
    frames = np.random.default_rng(3).integers(0, 256, (6, 16, 16), dtype=np.uint8)
    config = ServerConfig(port=free_port(), store_dir=tmp_path, insecure=True, rig_seed=2)
    with RigServer(backend, config) as srv, RigClient(srv.address, insecure=True, timeout_s=10) as client:
        counts = client.present(frames, repeats=2, isi_grey_frames=1, session_path=tmp_path / "s.h5",
                                frame_rate=30.0)
        rid = next(r for (_, r) in srv._requests)
    seed = presentation_seed(2, rid)
    expected = np.stack([repeat_counts(source.retina, frames, repeat_rng(seed, r)) for r in range(2)])
    np.testing.assert_array_equal(counts, expected)

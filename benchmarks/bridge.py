"""Rig bridge benchmark: upload throughput, round-trip latency, spike streaming, on loopback.

Raw pyzmq (a bare DEALER/ROUTER echo over the same TCP loopback, with the same security) is
measured in the same run, so the table shows what the protocol (JSON header, CRC-32, content
hashing, disk store, sequence log, uploads in parts) costs on top of the transport. Plain TCP,
no CurveZMQ, unless --curve; with --curve the raw echo is CurveZMQ too (same keys, same ZAP
authenticator), so like is compared with like.

    python benchmarks/bridge.py [--mb 32] [--rtt 300] [--cells 1000] [--frames 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rig_bridge.client import RigClient  # noqa: E402
from rig_bridge.keys import generate_keys  # noqa: E402
from rig_bridge.protocol import DEFAULT_MAX_PAYLOAD_BYTES  # noqa: E402
from rig_bridge.retina.backend import (  # noqa: E402
    SimBackend,  # noqa: E402
    presentation_seed,
    repeat_counts,
    repeat_rng,
)
from rig_bridge.server import RigServer, ServerConfig  # noqa: E402
from rig_bridge.transport import free_port  # noqa: E402


def _raw_echo(n_rtt: int, payload: bytes, n_big: int, keys: Path | None) -> tuple[float, float]:
    """Median small-message round trip (s) and one-way bulk throughput (MB/s) of bare pyzmq.

    With `keys`, both ends use CurveZMQ as the rig and controller do. Bulk messages go in parts
    of the rig's message limit, as the bridge sends them.
    """
    from rig_bridge.transport import bind_server_socket, secure_client_socket

    ctx = zmq.Context()
    port = free_port()
    router = ctx.socket(zmq.ROUTER)
    auth = bind_server_socket(ctx, router, "127.0.0.1", port, keys_dir=keys, insecure=keys is None)
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            if router.poll(50):
                ident, *parts = router.recv_multipart(copy=False)
                # Big messages get a one-byte ack, small ones come back whole (an echo).
                reply = [b"k"] if len(parts[-1]) > 4096 else parts
                router.send_multipart([ident, *reply], copy=False)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    dealer = ctx.socket(zmq.DEALER)
    secure_client_socket(dealer, f"tcp://127.0.0.1:{port}", keys_dir=keys, insecure=keys is None)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    small = [b"status", b'{"v":1}', b""]
    rtts = []
    for _ in range(n_rtt):
        t0 = time.perf_counter()
        dealer.send_multipart(small)
        dealer.recv_multipart()
        rtts.append(time.perf_counter() - t0)
    part = DEFAULT_MAX_PAYLOAD_BYTES
    view = memoryview(payload)
    t0 = time.perf_counter()
    for _ in range(n_big):
        for a in range(0, len(payload), part):  # one round trip per part, like the bridge's
            dealer.send_multipart([b"upload", b"{}", view[a:a + part]], copy=False)
            dealer.recv_multipart()
    mbps = n_big * len(payload) / 1e6 / (time.perf_counter() - t0)
    stop.set()
    thread.join()
    dealer.close(0)
    router.close(0)
    if auth is not None:
        auth.stop()
    ctx.term()
    return statistics.median(rtts), mbps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=32.0, help="size of each uploaded stimulus (MB)")
    ap.add_argument("--uploads", type=int, default=3)
    ap.add_argument("--rtt", type=int, default=300, help="round trips to time")
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--curve", action="store_true", help="CurveZMQ instead of plain TCP")
    args = ap.parse_args()

    side = 256
    n_up = max(1, int(args.mb * 1e6 / (side * side)))
    rng = np.random.default_rng(0)
    uploads = [rng.integers(0, 256, (n_up, side, side), dtype=np.uint8) for _ in range(args.uploads)]
    with tempfile.TemporaryDirectory() as tmp:
        keys = generate_keys(Path(tmp) / "keys") if args.curve else None
        raw_rtt, raw_mbps = _raw_echo(args.rtt, uploads[0].tobytes(), args.uploads, keys)
        # Upload/latency: a backend that accepts any screen size.
        up_backend = SimBackend(n_cells=4, size=side, seed=0)
        config = ServerConfig(port=free_port(), store_dir=Path(tmp) / "store", keys_dir=keys,
                              insecure=not args.curve)
        with RigServer(up_backend, config) as srv, \
                RigClient(srv.address, keys, insecure=not args.curve, timeout_s=60) as client:
            client.hello()
            t0 = time.perf_counter()
            for frames in uploads:
                client.upload(frames)
            up_mbps = sum(f.nbytes for f in uploads) / 1e6 / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.upload(uploads[0])  # already there: one hash-only round trip
            again_s = time.perf_counter() - t0
            rtts = []
            for _ in range(args.rtt):
                t0 = time.perf_counter()
                client.status()
                rtts.append(time.perf_counter() - t0)
            bridge_rtt = statistics.median(rtts)

        backend = SimBackend(n_cells=args.cells, size=64, seed=0)
        frames = np.random.default_rng(1).integers(0, 256, (args.frames, 64, 64), dtype=np.uint8)
        t0 = time.perf_counter()
        for r in range(args.repeats):
            repeat_counts(backend.retina, frames, repeat_rng(0, r))
        retina_s = time.perf_counter() - t0
        config = ServerConfig(port=free_port(), store_dir=Path(tmp) / "store2", keys_dir=keys,
                              insecure=not args.curve)
        with RigServer(backend, config) as srv, \
                RigClient(srv.address, keys, insecure=not args.curve, timeout_s=60) as client:
            sid = client.upload(frames)
            t0 = time.perf_counter()
            client._call("present", {"stimulus_id": sid, "repeats": args.repeats, "isi_grey_frames": 0},
                         request_id="r-bench")
            counts = client._run_presentation("r-bench", sid, frames, args.repeats, 0)
            stream_s = time.perf_counter() - t0
        seed = presentation_seed(0, "r-bench")
        expected = np.stack([repeat_counts(backend.retina, frames, repeat_rng(seed, r))
                             for r in range(args.repeats)])
        lossless = bool(np.array_equal(counts, expected))
        n_spikes = int(counts.sum())

    sec = "CurveZMQ, raw pyzmq too" if args.curve else "plain TCP"
    rows = [
        ("upload throughput", f"{up_mbps:8.1f} MB/s", f"{raw_mbps:8.1f} MB/s",
         f"{args.uploads} x {uploads[0].nbytes / 1e6:.1f} MB in {DEFAULT_MAX_PAYLOAD_BYTES >> 20} MiB parts, "
         "hashed + CRC + stored"),
        ("re-upload (by hash)", f"{again_s * 1e3:8.2f} ms", "", "frames not sent again"),
        ("round trip (status)", f"{bridge_rtt * 1e6:8.0f} us", f"{raw_rtt * 1e6:8.0f} us",
         f"median of {args.rtt}"),
        ("spikes streamed", f"{n_spikes / stream_s:8.0f} /s", "",
         f"{n_spikes} spikes, {args.cells} cells, {args.repeats} x {args.frames} frames, "
         f"lossless={lossless}; retina alone {retina_s:.2f} s of {stream_s:.2f} s"),
    ]
    print(f"rig bridge on loopback ({sec})")
    print(f"{'measure':<22}{'bridge':>14}{'raw pyzmq':>14}  notes")
    for name, bridge, raw, note in rows:
        print(f"{name:<22}{bridge:>14}{raw:>14}  {note}")
    if not lossless:
        raise SystemExit("spike stream lost or changed spikes")


if __name__ == "__main__":
    main()

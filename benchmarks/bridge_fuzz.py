"""Fuzz a rig server over loopback: adversarial and mutated messages, each must be answered.

A rig (`insilico rig serve`, its own process) gets `--structured` adversarial messages (every
command with ill-typed, missing, huge, negative, nested or non-ASCII fields; wrong frame counts;
payloads that disagree with their header) and `--mutated` ones (valid commands with bytes
flipped, cut or inserted). They are sent one at a time from one raw DEALER; each must get its
reply (`ok`, `error`, or the `heartbeat` answering a heartbeat) within `--wait-s`. At the end the
rig process must be alive and a real controller served. Printed: messages sent, answered,
unanswered (hangs), whether the rig crashed, and the rig's RSS before and after.

    python benchmarks/bridge_fuzz.py [--structured 103000] [--mutated 60000] [--seed 0]

Every address is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge_load import HOST, _rss_mib, _serve  # noqa: E402

from rig_bridge.client import RigClient  # noqa: E402
from rig_bridge.protocol import COMMANDS, MESSAGE_TYPES, Message, encode  # noqa: E402
from rig_bridge.transport import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SESSIONS = [f"s-fuzz-{i}" for i in range(8)]
JUNK = [None, True, -1, 0, 2**63, -(2**70), 1e308, -0.0, "", "x" * 5000, "\u00e9\u4e2d\U0001f600", [], {},
        [1, [2, [3]]], {"a": {"b": {"c": []}}}, "..", "../../etc", "a\nb", "0" * 64, 3.5, "NaN"]


def _valid(rng: random.Random) -> list[bytes]:
    mtype = rng.choice(sorted(COMMANDS))
    body = {
        "hello": {"protocol": 1, "software": "fuzz", "client": "fuzz"},
        "upload": {"stimulus_id": f"{rng.getrandbits(256):064x}", "frame_rate": 30.0},
        "present": {"stimulus_id": f"{rng.getrandbits(256):064x}", "repeats": 1, "isi_grey_frames": 0},
        "status": {}, "abort": {}, "heartbeat": {},
        "fetch": {"from_seq": 1, "to_seq": rng.randint(1, 100)},
        "ack": {"request_id": f"r-{rng.getrandbits(32):x}"},
    }[mtype]
    payload = None
    if mtype == "upload" and rng.random() < 0.5:
        payload = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (rng.randint(1, 4), 64, 64),
                                                                         dtype=np.uint8)
    return encode(Message(mtype, rng.choice(SESSIONS), rng.randint(0, 10**6), f"q-{rng.getrandbits(40):x}",
                          body, payload))


def _structured(rng: random.Random) -> list[bytes]:
    frames = _valid(rng)
    header = json.loads(frames[1])
    kind = rng.randrange(8)
    if kind == 0:  # a header field ill-typed or missing
        key = rng.choice(list(header))
        if rng.random() < 0.3:
            del header[key]
        else:
            header[key] = rng.choice(JUNK)
    elif kind == 1:  # a body field ill-typed
        body = header["body"] if isinstance(header["body"], dict) else {}
        body[rng.choice(list(body) or ["x"])] = rng.choice(JUNK)
        header["body"] = body
    elif kind == 2:  # another message type, known or not
        frames[0] = rng.choice([t.encode() for t in sorted(MESSAGE_TYPES)] + [b"", b"\xff\xfe", b"x" * 40, b"HELLO"])
    elif kind == 3:  # payload that disagrees with its header
        frames[2] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        if rng.random() < 0.5:
            header["nbytes"], header["crc32"] = len(frames[2]), zlib.crc32(frames[2])
    elif kind == 4:  # dtype / shape lies
        header["dtype"] = rng.choice(["uint8", "float64", "object", "<U10", None, 7])
        header["shape"] = rng.choice([[1, 2], [], [2**41], [-1], "3", None, [1] * 9])
    elif kind == 5:  # wrong number of frames
        return [frames[0]] * rng.choice([0, 1, 2, 4, 7])
    elif kind == 6:  # not JSON, or not an object
        return [frames[0], rng.choice([b"{", b"[]", b"null", b"\xff" * 10, b'{"v":NaN}', b"1" * 5000]), frames[2]]
    else:  # deep nesting
        header["body"] = json.loads("[" * 50 + "]" * 50) if rng.random() < 0.5 else {"a": "b" * 60_000}
    return [frames[0], json.dumps(header).encode(), frames[2]]


def _mutated(rng: random.Random) -> list[bytes]:
    frames = _valid(rng)
    i = rng.randrange(len(frames))
    data = bytearray(frames[i])
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(3)
        if op == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            del data[rng.randrange(len(data)):][: rng.randint(1, 16)]
        else:
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    frames[i] = bytes(data)
    return frames


def _answered(sock: zmq.Socket, wait_s: float) -> bool:
    """The message just sent got its answer (rig-started heartbeats, `req` "hb", do not count)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000) + 1):
            return False
        parts = sock.recv_multipart()
        if parts[0] in (b"ok", b"error"):
            return True
        if parts[0] == b"heartbeat" and len(parts) == 3 and b'"req":"hb"' not in parts[1]:
            return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--structured", type=int, default=103_000)
    ap.add_argument("--mutated", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wait-s", type=float, default=5.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port(HOST)
        proc = _serve(REPO, port, Path(tmp) / "store")
        address = f"tcp://{HOST}:{port}"
        rss0 = _rss_mib(proc.pid)
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(address)
        counts = {"structured": [0, 0], "mutated": [0, 0]}
        t0 = time.perf_counter()
        try:
            for name, n, make in (("structured", args.structured, _structured), ("mutated", args.mutated, _mutated)):
                for _ in range(n):
                    msg = make(rng)
                    if msg:
                        sock.send_multipart(msg)
                    else:
                        sock.send(b"")  # an empty single-frame message
                    counts[name][0] += 1
                    if _answered(sock, args.wait_s):
                        counts[name][1] += 1
                    elif proc.poll() is not None:
                        break
            elapsed = time.perf_counter() - t0
            crashed = proc.poll() is not None
            served = False
            if not crashed:
                with RigClient(address, insecure=True, timeout_s=10) as client:
                    served = client.status()["state"] == "idle"
                rss1 = _rss_mib(proc.pid)
        finally:
            sock.close(0)
            proc.terminate()
            proc.wait(30)
    print(f"rig bridge fuzz over loopback, seed {args.seed}, {elapsed:.0f} s")
    for name, (sent, answered) in counts.items():
        print(f"  {name:<11} sent {sent:>7}  answered {answered:>7}  unanswered (hangs) {sent - answered}")
    print(f"  rig crashed: {crashed}; a controller served afterwards: {served}"
          + ("" if crashed else f"; rig RSS {rss0:.0f} -> {rss1:.0f} MiB"))


if __name__ == "__main__":
    main()

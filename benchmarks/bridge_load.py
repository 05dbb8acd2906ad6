"""Rig bridge under load from a hostile or careless local client (issue 20), loopback only.

Two checks, each against a rig server running as its own process (`insilico rig serve`), so
its memory and CPU are measured from /proc without the client's:

- session flood: one raw DEALER says `hello` under `--hellos` distinct session ids as fast as
  the rig answers; before and after: the rig's RSS, its idle CPU over `--idle-s`, and the
  median `status` round trip of a real controller.
- big uploads: `--uploads` controllers upload a `--upload-mb` stimulus each at the same time;
  the rig's peak RSS (VmHWM) against its RSS before.
- oversized messages: `--raw-conns` raw connections each send one `--raw-mb` message (far over
  the rig's per-message limit) at once; the rig's peak RSS against its RSS before.

`--baseline DIR` runs the same checks against the rig of another checkout (e.g. the commit
before the fix) in the same run, for a table of both.

    python benchmarks/bridge_load.py [--hellos 150000] [--upload-mb 400] [--uploads 2] [--baseline DIR]

Every address is 127.0.0.1; nothing here can target another host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rig_bridge.client import RigClient  # noqa: E402
from rig_bridge.protocol import Message, encode  # noqa: E402
from rig_bridge.transport import free_port  # noqa: E402

HOST = "127.0.0.1"  # loopback only, by construction
SIDE = 64


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_cpu(pid: int, seconds: float) -> float:
    c0, t0 = _cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (_cpu_s(pid) - c0) / (time.monotonic() - t0)


def _rtt_ms(address: str, n: int = 100) -> float:
    with RigClient(address, insecure=True, timeout_s=30) as client:
        client.hello()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.status()
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _serve(repo: Path, port: int, store: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "rig_bridge.cli", "serve", "--backend", "sim", "--insecure", "--host", HOST,
           "--port", str(port), "--store", str(store), "--sim-size", str(SIDE), "--sim-cells", "8"]
    proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _rtt_ms(f"tcp://{HOST}:{port}", 1)
            return proc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("rig server did not start")


def _flood(address: str, n: int) -> tuple[int, float]:
    """Send `n` hellos with distinct session ids, at most 1000 unanswered; returns (answered, seconds)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    sent = answered = 0
    t0 = time.perf_counter()
    while answered < n:
        while sent < n and sent - answered < 1000:
            sock.send_multipart(encode(Message("hello", f"flood-{sent}", sent, f"h-{sent}", {"protocol": 1})))
            sent += 1
        if not sock.poll(30_000):
            break
        while sock.poll(0):
            kind = sock.recv_multipart()[0]
            if kind in (b"ok", b"error"):
                answered += 1
    sock.close(0)
    return answered, time.perf_counter() - t0


def _uploads(address: str, n: int, mb: float) -> tuple[float, bool]:
    frames_n = int(mb * 1e6 / (SIDE * SIDE))
    stimuli = [np.random.default_rng(i).integers(0, 256, (frames_n, SIDE, SIDE), dtype=np.uint8) for i in range(n)]
    ok = [False] * n

    def one(i: int) -> None:
        with RigClient(address, insecure=True, timeout_s=120) as client:
            client.upload(stimuli[i])
            ok[i] = True

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, all(ok)


def _oversized(address: str, conns: int, mb: float) -> float:
    """`conns` raw DEALERs send one `mb` MB upload each; seconds until each is answered or cut off."""
    ctx = zmq.Context.instance()
    payload = bytes(int(mb * 1e6))  # one buffer, sent by every connection without a copy
    header = encode(Message("upload", "s-raw", 1, "u-1", {"frame_rate": 30.0}))[1]
    socks, monitors = [], []
    for _ in range(conns):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        monitors.append(sock.get_monitor_socket(zmq.EVENT_DISCONNECTED))
        sock.connect(address)
        socks.append(sock)
    t0 = time.perf_counter()
    for sock in socks:
        sock.send_multipart([b"upload", header, payload], copy=False)
    pending = set(range(conns))
    while pending and time.perf_counter() - t0 < 60:
        for i in list(pending):
            if socks[i].poll(10) or monitors[i].poll(0):
                pending.discard(i)
    elapsed = time.perf_counter() - t0
    for sock, mon in zip(socks, monitors, strict=True):
        sock.disable_monitor()
        mon.close(0)
        sock.close(0)
    return elapsed


def run(repo: Path, args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port(HOST)
        address = f"tcp://{HOST}:{port}"
        proc = _serve(repo, port, Path(tmp) / "store")
        try:
            pid = proc.pid
            out["rss0"], out["cpu0"], out["rtt0"] = _rss_mib(pid), _idle_cpu(pid, args.idle_s), _rtt_ms(address)
            out["answered"], out["flood_s"] = _flood(address, args.hellos)
            time.sleep(args.settle_s)  # sessions presumed dead (3 s), table swept
            out["rss1"], out["cpu1"], out["rtt1"] = _rss_mib(pid), _idle_cpu(pid, args.idle_s), _rtt_ms(address)
            if args.uploads:
                # Writing 5 to clear_refs resets the peak (VmHWM) to the RSS now (Linux >= 4.0).
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                rss = _rss_mib(pid)
                out["upload_s"], out["upload_ok"] = _uploads(address, args.uploads, args.upload_mb)
                out["rss_up0"], out["rss_peak"] = rss, _rss_mib(pid, "VmHWM")
            if args.raw_conns:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                rss = _rss_mib(pid)
                out["raw_s"] = _oversized(address, args.raw_conns, args.raw_mb)
                time.sleep(1.0)
                out["rss_raw0"], out["rss_raw_peak"] = rss, _rss_mib(pid, "VmHWM")
                out["rtt2"] = _rtt_ms(address)
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hellos", type=int, default=150_000)
    ap.add_argument("--idle-s", type=float, default=5.0, help="seconds over which idle CPU is measured")
    ap.add_argument("--settle-s", type=float, default=5.0, help="wait after the flood before measuring")
    ap.add_argument("--uploads", type=int, default=2, help="controllers uploading at once (0: skip)")
    ap.add_argument("--upload-mb", type=float, default=400.0)
    ap.add_argument("--raw-conns", type=int, default=2, help="raw connections sending one oversized message (0: skip)")
    ap.add_argument("--raw-mb", type=float, default=300.0)
    ap.add_argument("--baseline", type=Path, help="checkout whose rig to measure too (e.g. before the fix)")
    args = ap.parse_args()
    runs = {"this tree": run(REPO, args)}
    if args.baseline:
        runs[f"baseline {args.baseline}"] = run(args.baseline, args)
    print(f"rig bridge under load, loopback ({args.hellos} hellos; {args.uploads} x {args.upload_mb:g} MB uploads)")
    for name, r in runs.items():
        print(f"\n{name}")
        print(f"  hellos answered        {r['answered']} in {r['flood_s']:.1f} s")
        print(f"  rig RSS                {r['rss0']:.0f} -> {r['rss1']:.0f} MiB ({r['rss1'] - r['rss0']:+.0f})")
        print(f"  rig idle CPU           {r['cpu0']:.1f} % -> {r['cpu1']:.1f} %")
        print(f"  status round trip      {r['rtt0']:.2f} -> {r['rtt1']:.2f} ms (median of 100)")
        if "rss_peak" in r:
            print(f"  uploads                ok={r['upload_ok']} in {r['upload_s']:.1f} s; rig peak RSS "
                  f"{r['rss_peak']:.0f} MiB, {r['rss_peak'] - r['rss_up0']:+.0f} over its RSS before")
        if "rss_raw_peak" in r:
            print(f"  oversized messages     {args.raw_conns} x {args.raw_mb:g} MB, settled in {r['raw_s']:.1f} s; "
                  f"rig peak RSS {r['rss_raw_peak']:.0f} MiB, {r['rss_raw_peak'] - r['rss_raw0']:+.0f} over its RSS "
                  f"before; status round trip after {r['rtt2']:.2f} ms")


if __name__ == "__main__":
    main()

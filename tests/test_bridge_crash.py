"""Kill the rig server, then the controller, mid-presentation (real processes, SIGKILL).

At the end every presentation is in the session file exactly once, with exactly the spikes the
simulated retina fires for it (its spikes are seeded per presentation, so a re-run after the
rig's crash reproduces them and they can be recomputed here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rig_bridge.journal import SessionJournal
from rig_bridge.retina.backend import SimBackend, presentation_seed, repeat_counts, repeat_rng
from rig_bridge.transport import free_port
from stimuli.recording import open_recording, write_stimulus

CELLS, SIZE, RATE, SEED = 10, 8, 30.0, 11
T, REPEATS = 24, 3  # 0.8 s per repeat in real time: 2.4 s per presentation


def _serve(port: int, store: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rig_bridge.cli", "serve", "--backend", "sim", "--insecure",
           "--port", str(port), "--store", str(store), "--realtime", "--sim-cells", str(CELLS),
           "--sim-size", str(SIZE), "--sim-seed", str(SEED), "--heartbeat", "0.25"]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _present(port: int, stim: Path, out: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rig_bridge.cli", "present", str(stim), "--rig", f"tcp://127.0.0.1:{port}",
           "--repeats", str(REPEATS), "--out", str(out), "--insecure", "--timeout", "20"]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait_for(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _presenting(session: Path) -> bool:
    journal = Path(f"{session}.journal")
    return journal.is_file() and b'"intent"' in journal.read_bytes()


def _rig_showing_count(log: Path) -> int:
    """How many presentations the rig has started (its log says "presenting <request>")."""
    return log.read_text(errors="replace").count("presenting ") if log.is_file() else 0


def _rig_showing(log: Path, n: int) -> bool:
    """The rig has started its n-th presentation: a kill now lands mid-presentation (2.4 s long)."""
    return _rig_showing_count(log) >= n


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.mark.timeout(150)
def test_kill_rig_then_controller_mid_presentation(tmp_path: Path) -> None:
    port, store, log = free_port(), tmp_path / "store", tmp_path / "log.txt"
    frames = np.random.default_rng(1).integers(0, 256, (T, SIZE, SIZE), dtype=np.uint8)
    stim = tmp_path / "stim.h5"
    write_stimulus(stim, frames, RATE)
    session = tmp_path / "session.h5"
    rig = _serve(port, store, log)
    try:
        # 1. The rig dies mid-presentation and comes back; the controller waits and resumes.
        controller = _present(port, stim, session, log)
        _wait_for(lambda: _presenting(session) and _rig_showing(log, 1), 30, "the rig to start the first presentation")
        _kill(rig)
        assert controller.poll() is None, log.read_text()
        time.sleep(0.5)  # the rig stays down a while (an outage, not a wait for something)
        rig = _serve(port, store, log)
        assert controller.wait(40) == 0, log.read_text()

        # 2. The controller dies mid-presentation; rerun with the same command, it resumes.
        controller = _present(port, stim, session, log)
        shown = _rig_showing_count(log)
        _wait_for(lambda: len(SessionJournal(session).intents) == 2 and _rig_showing(log, shown + 1), 30,
                  "the rig to start the second presentation")
        _kill(controller)
        assert not SessionJournal(session).stored >= set(SessionJournal(session).intents)
        rerun = _present(port, stim, session, log)
        assert rerun.wait(40) == 0, log.read_text()
    finally:
        if rig.poll() is None:
            _kill(rig)

    journal = SessionJournal(session)
    assert len(journal.intents) == 2, "the rerun resumed the killed presentation instead of adding one"
    assert journal.stored == set(journal.intents)
    retina = SimBackend(n_cells=CELLS, size=SIZE, frame_rate=RATE, seed=SEED).retina
    with open_recording(session) as rec:
        assert [s.name for s in rec.segments] == [i.segment for i in journal.intents.values()]
        assert rec.n_frames == 2 * T
        for rid, intent in journal.intents.items():
            seed = presentation_seed(SEED, rid)
            expected = np.stack([repeat_counts(retina, frames, repeat_rng(seed, r)) for r in range(REPEATS)])
            np.testing.assert_array_equal(rec.counts(segment=intent.segment), expected)
            np.testing.assert_array_equal(rec.frames(segment=intent.segment), frames)

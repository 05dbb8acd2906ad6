"""The closed loop end to end against a simulated rig in a subprocess, killed and resumed.

The runner is a real process, SIGKILLed once the session journal shows the first
presentation stored and the next one started; the same command then finishes the run. At the
end every planned clip is in the session file exactly once, the round's twin is fine-tuned and
evaluated, and the report exists. A second check drops the runner's own record of the
presentations (a crash between the rig bridge storing a presentation and the runner noting
it) and reruns: nothing is shown again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from insilico.loop.runner import run_protocol
from rig_bridge.journal import SessionJournal
from rig_bridge.transport import free_port
from stimuli.recording import open_recording
from vist_model.twin import Twin

CELL = 3  # an id of the tiny recording (12 cells, 32 x 32 px, sim seed 0)

PROTOCOL = """
kind = "mei_closed_loop"
rounds = 1
[design]
cells = [{cell}]
objectives = ["increase"]
controls = ["natural", "parametric"]
n_frames = 40
window_frames = 2
seeds = 1
steps = 1
comparison_trials = 1
natural_top_k = 1
device = "cpu"
[presentation]
repeats = 2
isi_grey_frames = 3
[finetune]
mode = "readout"
epochs = 1
window = 40
include_training_data = false
focus_weight = 10.0
[evaluation]
data = "{data}"
segment = "mov2"
"""

RUNNER = """
import sys
from insilico.loop.runner import run_protocol
run_protocol(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], insecure=True, timeout_s=60, live=False,
             feature_cache=sys.argv[5])
"""


def _serve(port: int, store: Path, log: Path, realtime: bool = True) -> subprocess.Popen:
    # Real time: each presentation takes ~3 s, so the kill lands between two of them.
    cmd = [sys.executable, "-m", "rig_bridge.cli", "serve", "--backend", "sim", "--insecure", "--port", str(port),
           "--store", str(store), *(["--realtime"] if realtime else []), "--sim-cells", "12", "--sim-size", "32",
           "--sim-seed", "0"]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _journal_events(session: Path) -> list[dict]:
    path = Path(f"{session}.journal")
    if not path.is_file():
        return []
    events = []
    for line in path.read_bytes().split(b"\n"):
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _count(session: Path, event: str) -> int:
    return sum(e.get("event") == event for e in _journal_events(session))


def _wait_for(predicate, process: subprocess.Popen, log: Path, timeout_s: float, what: str) -> None:  # noqa: ANN001
    """Poll `predicate` until it holds; fail naming `what` on timeout or if `process` died."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _assert_stored_once(session: Path, n: int) -> None:
    journal = SessionJournal(session)
    intents = list(journal.intents.values())
    assert len(intents) == n and len({i.stimulus_id for i in intents}) == n
    assert all(i.request_id in journal.stored for i in intents)
    with open_recording(session) as rec:
        names = [s.name for s in rec.segments]
        assert sorted(names) == sorted(i.segment for i in intents)
        for s in rec.segments:
            counts = rec.counts(segment=s.name)
            assert counts.shape == (2, 40, 12) and np.isfinite(counts).all()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_runner_mid_round_then_resume(tiny_twin_dir: Path, tiny_recording: Path, feature_cache_dir: Path,
                                           tmp_path: Path) -> None:
    protocol = tmp_path / "loop.toml"
    protocol.write_text(PROTOCOL.format(cell=CELL, data=tiny_recording))
    out, log = tmp_path / "exp", tmp_path / "log.txt"
    session = out / "round_1" / "session.h5"
    port = free_port()
    rig = _serve(port, tmp_path / "store", log)
    address = f"tcp://127.0.0.1:{port}"
    args = [str(protocol), str(tiny_twin_dir), address, str(out), str(feature_cache_dir)]
    try:
        runner = subprocess.Popen([sys.executable, "-c", RUNNER, *args], stdout=log.open("ab"),
                                  stderr=subprocess.STDOUT)
        # Killed once the first presentation is stored and the second has started (its intent
        # journaled): mid-round, whatever the machine's speed.
        _wait_for(lambda: _count(session, "stored") >= 1 and _count(session, "intent") >= 2, runner, log, 600,
                  "the first presentation stored and the second started")
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(10)
        events = _journal_events(session)
        n_stored = sum(e.get("event") == "stored" for e in events)
        assert n_stored < 3, "the kill came too late to interrupt the round"

        outcome = run_protocol(*args[:4], insecure=True, timeout_s=60, live=False, feature_cache=args[4])
        _assert_stored_once(session, 3)  # design, best natural clip, best parametric stimulus
        summary = json.loads((out / "round_1" / "summary.json").read_text())
        assert {r["role"] for r in summary["rows"]} == {"design", "natural", "parametric"}
        assert all(r["measured"] is not None and r["measured"] >= 0 for r in summary["rows"])
        assert np.isfinite(summary["design_error"]["mae"]) and -1 <= summary["heldout"]["cc_mean"] <= 1
        assert (out / "round_1" / "twin" / "model.pt").is_file()
        # The fine-tuning stressed the target cell's window in each of the three clips shown for it.
        history = Twin.load(out / "round_1" / "twin").metadata.training["finetune"][-1]
        assert history["focus_weight"] == 10.0
        with open_recording(session) as rec:
            shown = sorted(s.name for s in rec.segments)
        assert sorted(f["segment"] for f in history["focus"][0]) == shown
        assert outcome.report is not None and b"data:image/png;base64," in outcome.report.read_bytes()

        # A crash after the bridge stored the presentations but before the runner noted them.
        state_path = out / "state.json"
        state = json.loads(state_path.read_text())
        for step in ("presented", "present", "finetune", "evaluate", "summary"):
            state["steps"]["1"].pop(step)
        state_path.write_text(json.dumps(state))
        rig_log_before = log.read_text().count("present")
        run_protocol(*args[:4], insecure=True, timeout_s=60, live=False, feature_cache=args[4])
        _assert_stored_once(session, 3)
        assert all(v["resumed"] for v in json.loads(state_path.read_text())["steps"]["1"]["presented"].values())
        assert log.read_text().count("present") == rig_log_before
    finally:
        rig.send_signal(signal.SIGTERM)
        rig.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_round_two_refines_round_ones_designs(tiny_twin_dir: Path, tiny_recording: Path, feature_cache_dir: Path,
                                              tmp_path: Path) -> None:
    protocol = tmp_path / "loop.toml"
    text = PROTOCOL.format(cell=CELL, data=tiny_recording).replace("rounds = 1", "rounds = 2")
    protocol.write_text(text.replace('objectives = ["increase"]', 'objectives = ["increase", "discriminative"]\n'
                                                                   "refine = true"))
    out, log = tmp_path / "exp", tmp_path / "log.txt"
    port = free_port()
    rig = _serve(port, tmp_path / "store", log, realtime=False)
    try:
        outcome = run_protocol(protocol, tiny_twin_dir, f"tcp://127.0.0.1:{port}", out, insecure=True, timeout_s=60,
                               live=False, feature_cache=feature_cache_dir)
    finally:
        rig.send_signal(signal.SIGTERM)
        rig.wait(10)
    state = json.loads((out / "state.json").read_text())["steps"]
    for objective in ("increase", "discriminative"):
        first = out / "round_1" / "designs" / objective / f"cell{CELL}.h5"
        again = json.loads((out / "round_2" / "designs" / objective / f"cell{CELL}.json").read_text())
        assert again["started_from"] == str(first)  # round 2 starts from round 1's design
        # Round 1 starts where `insilico optimize` does by default: "auto", the STA among its candidates
        # (the recording has white noise), the kept start recorded.
        start = json.loads((first.with_suffix(".json")).read_text())["start"]
        assert start["setting"] == "auto" and "sta" in start["objective_after_steps"]
        item = next(i for i in state["2"]["design"] if i["objective"] == objective)
        assert item["refined_from"] == str(first)
    # Each objective is summarised by what it asks: the rate, or the margin over the other cells.
    summary = json.loads((out / "round_2" / "summary.json").read_text())
    rows = {(r["objective"], r["role"]): r for r in summary["rows"]}
    assert summary["measured_by_objective"]["increase"]["design"] == rows["increase", "design"]["measured"]
    assert summary["measured_by_objective"]["discriminative"]["design"] == rows["discriminative", "design"][
        "measured_margin"]
    assert all(r["measured_sem"] is not None and r["measured_sem"] >= 0 for r in summary["rows"])
    assert "discriminative: design" in outcome.report.read_text()

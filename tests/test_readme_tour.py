"""The README's tour of the command line, as written, in a fresh folder (issue 23).

The slow test runs every command of the tour in order, optional `[...]` parts left out, from an
empty temporary folder: the way a newcomer meets the toolkit. The fast test, in the default
run, checks that every tour command parses (its sub-command and flags exist, values have the
right types) and that the protocols and rig profiles it names resolve from any folder.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOUR_HEADING = "## A tour of the command line"


def tour_commands() -> list[list[str]]:
    """The `insilico ...` lines of the README's tour, optional `[...]` parts dropped, as argv lists."""
    text = (REPO / "README.md").read_text()
    block = text.split(TOUR_HEADING, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = re.sub(r"\s*\[[^\]]*\]", "", line).strip()
        if line.startswith("insilico "):
            commands.append(shlex.split(line, comments=True))
    return commands


def _parse_only(argv: list[str]) -> None:
    """Let click parse a command line (sub-command, flags, value types) without running it."""
    import click
    import typer.main

    from insilico.cli import app

    command: click.Command | None = typer.main.get_command(app)
    name, args = "insilico", [a for a in argv[1:] if a != "&"]
    while isinstance(command, click.Group):  # the tour's groups (rig, import) take no options of their own
        name, args = args[0], args[1:]
        command = command.get_command(click.Context(command), name)
        assert command is not None, f"{shlex.join(argv)}: no command {name!r}"
    command.make_context(name, list(args))  # raises click's UsageError on an unknown flag or a bad value


def test_the_tour_parses_and_names_what_ships(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from insilico.loop.protocol import load_protocol
    from stimuli.presentation import load_profile

    commands = tour_commands()
    assert len(commands) >= 15 and commands[0][:2] == ["insilico", "demo"]
    monkeypatch.chdir(tmp_path)  # names must resolve from a folder that is not the repository
    for argv in commands:
        _parse_only(argv)
        if "--profile" in argv:
            load_profile(argv[argv.index("--profile") + 1])
        if argv[1] == "run":
            load_protocol(argv[2])
            assert "--insecure" in argv or "--keys" in argv, f"{shlex.join(argv)}: --rig needs --keys or --insecure"
    text = (REPO / "README.md").read_text()
    demo_out = commands[0][commands[0].index("--out") + 1].rstrip("/")
    assert f"`{demo_out}/exp/report.html`" in text  # where the demo writes its report


def test_the_python_example_names_what_exists() -> None:
    # Running it trains a twin (minutes); the imports and the calls' keywords are checked here.
    import ast
    import importlib
    import inspect

    text = (REPO / "README.md").read_text()
    code = text.split("## From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    tree = ast.parse(code)
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            names.update({a.name: getattr(module, a.name) for a in node.names})  # AttributeError if gone
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            params = inspect.signature(names[node.func.id]).parameters
            for kw in node.keywords:
                assert kw.arg in params, f"{node.func.id}() takes no {kw.arg}="
    assert len(code.strip().splitlines()) <= 12


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while _port_free(port):
        assert proc.poll() is None, "the rig server exited"
        assert time.monotonic() < deadline, f"nothing listens on {port} after {seconds} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    import imageio.v3 as iio

    if not _port_free(5555):
        pytest.skip("port 5555 (the tour's rig address) is in use on this machine")
    # The one input the tour presumes the user brings: a video file.
    frames = np.random.default_rng(0).integers(0, 256, (30, 48, 64, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "movie.mp4", frames, plugin="pyav", codec="libx264", fps=30)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}  # render must manage without one
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["INSILICO_CACHE"] = str(tmp_path / "cache")
    background = []
    try:
        for argv in tour_commands():
            line = shlex.join(argv)
            cmd = [sys.executable, "-m", "insilico.cli", *argv[1:]]
            if cmd[-1] == "&":
                proc = subprocess.Popen(cmd[:-1], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                background.append(proc)
                _wait_for_port(5555, proc)
                continue
            done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
            output = done.stdout + done.stderr
            assert done.returncode == 0, f"{line}\n{output}"
            assert "Traceback" not in output, f"{line}\n{output}"
            assert " nan" not in output, f"{line}: a number without its context\n{output}"
    finally:
        for proc in background:
            proc.terminate()
            proc.wait(30)
    for produced in ("demo/exp/report.html", "data.h5", "runs/m1/model.pt", "eval.json", "cells.csv",
                     "designs/cell42.h5", "reports/cell42.html", "shown.h5", "session.h5", "exp/report.html",
                     "movie.h5"):
        assert (tmp_path / produced).is_file(), produced

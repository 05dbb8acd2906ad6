"""An X server of our own for headless rendering when the shell has no display.

`insilico render` renders headless by default; on a server or in a plain SSH session
DISPLAY is unset and PsychoPy cannot open even an offscreen window. Rather than asking
every user to wrap the command in `xvfb-run`, the command starts Xvfb itself for as long as
it renders (`-displayfd` lets Xvfb pick a free display number and tell us which).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

START_TIMEOUT_S = 10.0


class XvfbUnavailable(RuntimeError):
    """No display is set and Xvfb is not installed or would not start."""


@contextmanager
def virtual_display(width: int = 1024, height: int = 768) -> Iterator[str | None]:
    """Yield the X display to render on: the current one, or an Xvfb started for the block.

    Off Linux, or with DISPLAY already set, nothing is started and the current display
    (None off Linux) is yielded.
    """
    if not sys.platform.startswith("linux") or os.environ.get("DISPLAY"):
        yield os.environ.get("DISPLAY")
        return
    binary = shutil.which("Xvfb")
    if binary is None:
        raise XvfbUnavailable("no X display (DISPLAY is unset) and no Xvfb to start one: install it "
                              "(Debian: apt-get install xvfb) or run on a machine with a display")
    read_fd, write_fd = os.pipe()
    # Its log goes to a file, not a pipe nobody reads while it runs (a full pipe would stall it).
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [binary, "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24", "+extension", "GLX",
         "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=log,
    )
    os.close(write_fd)
    try:
        number = _read_display_number(read_fd, server, log)
        os.environ["DISPLAY"] = f":{number}"
        try:
            yield os.environ["DISPLAY"]
        finally:
            os.environ.pop("DISPLAY", None)
    finally:
        os.close(read_fd)
        log.close()
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _read_display_number(fd: int, server: subprocess.Popen[bytes], log: IO[bytes]) -> int:
    text = b""
    while not text.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], START_TIMEOUT_S)
        chunk = os.read(fd, 16) if ready else b""
        if not chunk:
            server.kill()
            server.wait()
            log.seek(0)
            err = log.read().decode(errors="replace").strip().splitlines()
            raise XvfbUnavailable("no X display (DISPLAY is unset) and Xvfb did not start"
                                  + (f": {err[-1]}" if err else ""))
        text += chunk
    return int(text.strip())

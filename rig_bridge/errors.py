"""Errors the controller raises; each message says what went wrong and where."""

from __future__ import annotations

from stimuli.errors import InsilicoError


class RigError(InsilicoError):
    """Base class of the controller's errors."""


class RigTimeoutError(RigError, TimeoutError):
    """The rig did not answer (no reply and no heartbeat) within the timeout."""


class RigAuthError(RigError):
    """The rig refused this controller during the CurveZMQ handshake."""


class RigRemoteError(RigError):
    """The rig answered with an error reply; `code` is one of protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"rig error {code}: {message}")
        self.code = code
        self.message = message


class SessionFileError(RigError, ValueError):
    """The session recording cannot take this presentation (size, rate, cells, repeats)."""

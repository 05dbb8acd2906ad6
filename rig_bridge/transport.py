"""Socket set-up shared by the rig server and the controller: CurveZMQ or explicit plain TCP.

Plain TCP is only ever used when the caller says `insecure=True`, and then only on loopback
unless `allow_remote_insecure=True` as well: an unencrypted rig port on a lab network would let
anyone present stimuli.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket as pysocket
from urllib.parse import urlparse

import zmq
from zmq.auth.thread import ThreadAuthenticator

from rig_bridge.keys import load_client_keys, load_server_keys
from stimuli.errors import InputError

auth_log = logging.getLogger("rig_bridge.auth")


class InsecureAddressError(InputError):
    """Plain TCP was asked for on an address that is not loopback."""


class _LoggingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, plus one log line (with the peer's address) per refused controller.

    pyzmq itself only logs at debug level, so a stranger knocking left no trace in the rig log.
    Handshakes that fail before ZAP is asked (wrong server key, plain TCP against CurveZMQ)
    are logged by the server's socket monitor.
    """

    _address = "?"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) > 3:
            self._address = msg[3].decode("utf-8", "replace")
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            auth_log.warning("CurveZMQ handshake from %s refused: %s", self._address,
                             status_text.decode("utf-8", "replace")[:200])
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(address: str) -> str:
    parsed = urlparse(address)
    if parsed.scheme != "tcp" or not parsed.hostname:
        raise InputError(f"rig address must look like tcp://HOST:PORT, got {address!r}")
    return parsed.hostname


def endpoint(host: str, port: int) -> str:
    """`tcp://HOST:PORT`, with an IPv6 address in brackets as ZeroMQ wants it."""
    host = host.strip("[]")
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _use_ipv6(sock: zmq.Socket, host: str) -> None:
    # ZeroMQ sockets speak IPv4 only unless told otherwise.
    if ":" in host.strip("[]"):
        sock.ipv6 = True


def check_insecure(host: str, allow_remote_insecure: bool) -> None:
    if not is_loopback(host) and not allow_remote_insecure:
        raise InsecureAddressError(
            f"refusing plain (unencrypted) TCP on {host}: insecure mode is for loopback only; "
            "use CurveZMQ keys (keys_dir), or allow it explicitly (allow_remote_insecure)")


def bind_server_socket(ctx: zmq.Context, sock: zmq.Socket, host: str, port: int, *,
                       keys_dir: str | os.PathLike[str] | None, insecure: bool,
                       allow_remote_insecure: bool = False) -> ThreadAuthenticator | None:
    """Configure security on `sock`, bind it, and return the running authenticator (if any)."""
    auth = None
    if insecure and keys_dir is not None:
        raise InputError("give either keys (CurveZMQ) or insecure (plain TCP), not both")
    if insecure:
        check_insecure(host, allow_remote_insecure)
    else:
        if keys_dir is None:
            raise InputError("the rig needs keys_dir (CurveZMQ), or insecure=True for plain TCP on loopback")
        keys = load_server_keys(keys_dir)
        auth = _LoggingAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(keys.authorized_dir))
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
        sock.curve_server = True
    _use_ipv6(sock, host)
    try:
        sock.bind(endpoint(host, port))
    except zmq.ZMQError as err:
        if auth is not None:
            auth.stop()
        raise OSError(f"cannot serve on {endpoint(host, port)}: {err.strerror}") from None
    return auth


def secure_client_socket(sock: zmq.Socket, address: str, *, keys_dir: str | os.PathLike[str] | None,
                         insecure: bool, allow_remote_insecure: bool = False) -> None:
    """Apply the controller's CurveZMQ keys (or check that plain TCP is allowed) before connect."""
    host = host_of(address)
    _use_ipv6(sock, host)
    if insecure and keys_dir is not None:
        raise InputError("give either keys_dir (CurveZMQ) or insecure=True (plain TCP), not both")
    if insecure:
        check_insecure(host, allow_remote_insecure)
        return
    if keys_dir is None:
        raise InputError("the controller needs keys_dir (CurveZMQ), or insecure=True for plain TCP on loopback")
    keys = load_client_keys(keys_dir)
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server_public


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and benchmarks)."""
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])

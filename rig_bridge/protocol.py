"""The bridge's wire format: multipart ZeroMQ messages `[type, JSON header, payload]`.

Version 1 is described in docs/bridge-protocol.md. Every message carries one numpy array (or
none) as its payload; the header says its dtype, shape, byte count and CRC-32, so a receiver can
check that what arrived is what was sent before it trusts a single byte. `decode` is strict:
anything it does not understand raises `MessageError(code, message)`, never something else,
which is what lets the rig server answer garbage with an error reply and keep serving.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from stimuli.errors import InputError

PROTOCOL_VERSION = 1
# One message's payload at most; larger stimuli are uploaded in parts of this size.
DEFAULT_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
# A whole stimulus at most (it is stored on the rig's disk, never held in its memory).
DEFAULT_MAX_STIMULUS_BYTES = 4 * 1024**3
MAX_HEADER_BYTES = 64 * 1024
MAX_TYPE_BYTES = 32
MAX_NDIM = 4
# Header fields, all required; `v` is checked before the others (an old peer hears "wrong version").
HEADER_FIELDS = ("v", "session", "seq", "req", "dtype", "shape", "nbytes", "crc32", "body")

# Commands go controller -> rig; each is answered by exactly one `ok` or `error` reply.
COMMANDS = frozenset({"hello", "upload", "present", "status", "abort", "fetch", "ack", "heartbeat"})
REPLIES = frozenset({"ok", "error"})
# Streams go rig -> controller. Logged streams carry a gap-free per-session sequence number.
LOGGED_STREAMS = frozenset({"flips", "spikes", "counts", "done"})
STREAMS = LOGGED_STREAMS | {"heartbeat"}
MESSAGE_TYPES = COMMANDS | REPLIES | STREAMS

# Payload dtypes the bridge ever sends; anything else (objects, strings) is refused outright.
ALLOWED_DTYPES = frozenset({"uint8", "uint16", "int32", "uint32", "int64", "float32", "float64"})

# Ids become path components on the rig (`results/<session>/<request>.npz`), so the first
# character is a letter or digit: ".", ".." and hidden or option-like names can never pass.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,79}$")
# A stimulus id is always the 64 hex digits of its BLAKE2b-256 content hash.
_STIMULUS_ID_RE = re.compile(r"^[0-9a-f]{64}$")

# Error codes used in `error` replies and MessageError; docs/bridge-protocol.md lists them.
ERROR_CODES = frozenset({
    "malformed",         # not a 3-part message, header is not JSON, missing/ill-typed fields
    "unknown_type",      # message type not in MESSAGE_TYPES
    "bad_version",       # protocol version other than PROTOCOL_VERSION
    "shape_mismatch",    # payload bytes do not match dtype x shape, or nbytes
    "checksum",          # CRC-32 of the payload does not match the header
    "too_large",         # payload above the receiver's configured maximum
    "bad_frames",        # NaN, infinite or out-of-range grey levels, wrong frame shape
    "bad_request",       # well-formed message with an invalid body
    "unknown_session",   # no hello for this session on this rig instance
    "unknown_stimulus",  # present/upload of a stimulus id the rig does not hold
    "busy",              # another presentation is running
    "full",              # the rig's session table is full of sessions holding unacknowledged data
    "aborted",           # the presentation was aborted
    "gone",              # fetched messages were already dropped (acked or restarted rig)
    "internal",          # a bug or backend failure on the rig (message says which)
})


class MessageError(Exception):
    """A message that breaks the protocol. `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Message:
    """One decoded message.

    Attributes:
        type: one of MESSAGE_TYPES.
        session: session id chosen by the controller.
        seq: for logged streams, the position in the session's stream log (1, 2, ...);
            for other messages the sender's running message counter.
        request_id: the command this message belongs to (replies and streams echo it).
        body: small JSON fields of the message (read-only mapping).
        payload: the binary part as a numpy array, or None.
        version: protocol version of the sender.
    """

    type: str
    session: str
    seq: int
    request_id: str
    body: Mapping[str, Any] = field(default_factory=dict)
    payload: np.ndarray | None = None
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", MappingProxyType(dict(self.body)))


def encode(message: Message) -> list[bytes]:
    """Serialise a message to its three ZeroMQ frames `[type, header, payload]`."""
    if message.type not in MESSAGE_TYPES:
        raise MessageError("unknown_type", f"cannot send unknown message type {message.type!r}")
    _check_id("session", message.session)
    _check_id("request_id", message.request_id)
    payload = b""
    dtype: str | None = None
    shape: list[int] | None = None
    if message.payload is not None:
        arr = np.ascontiguousarray(message.payload)
        dtype = arr.dtype.name
        if dtype not in ALLOWED_DTYPES:
            raise MessageError("bad_request", f"payload dtype {dtype} is not one of {sorted(ALLOWED_DTYPES)}")
        # Little-endian on the wire whatever the host, so both ends agree byte for byte.
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        shape = [int(s) for s in arr.shape]
        payload = arr.tobytes()
    header = {
        "v": int(message.version),
        "session": message.session,
        "seq": int(message.seq),
        "req": message.request_id,
        "dtype": dtype,
        "shape": shape,
        "nbytes": len(payload),
        "crc32": zlib.crc32(payload),
        "body": dict(message.body),
    }
    try:
        header_bytes = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as err:
        raise MessageError("bad_request", f"message body is not plain finite JSON: {err}") from None
    return [message.type.encode("ascii"), header_bytes, payload]


def decode(frames: Sequence[bytes], *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Message:
    """Parse and check three frames; raise MessageError naming the first problem found."""
    if len(frames) != 3:
        raise MessageError("malformed", f"expected 3 frames [type, header, payload], got {len(frames)}")
    if len(frames[0]) > MAX_TYPE_BYTES:
        raise MessageError("malformed", f"type frame is {len(frames[0])} bytes (max {MAX_TYPE_BYTES})")
    try:
        mtype = bytes(frames[0]).decode("ascii")
    except UnicodeDecodeError:
        raise MessageError("malformed", "type frame is not ASCII") from None
    if mtype not in MESSAGE_TYPES:
        raise MessageError("unknown_type", f"unknown message type {mtype!r}")
    if len(frames[1]) > MAX_HEADER_BYTES:
        raise MessageError("too_large", f"header is {len(frames[1])} bytes (max {MAX_HEADER_BYTES})")
    raw_header = bytes(frames[1])
    # The payload is used in place (a received zmq.Frame is not copied): a stimulus arrives once.
    payload = frames[2] if isinstance(frames[2], bytes) else memoryview(frames[2]).cast("B")
    header = _parse_header(raw_header)  # checks the version first
    nbytes = header["nbytes"]
    if nbytes > max_payload_bytes or len(payload) > max_payload_bytes:
        raise MessageError("too_large", f"payload of {max(nbytes, len(payload))} bytes exceeds the maximum of {max_payload_bytes}")
    if nbytes != len(payload):
        raise MessageError("shape_mismatch", f"header says {nbytes} payload bytes, {len(payload)} arrived")
    if zlib.crc32(payload) != header["crc32"]:
        raise MessageError("checksum", "payload CRC-32 does not match the header (corrupted in transit)")
    array = _payload_array(header["dtype"], header["shape"], payload)
    return Message(type=mtype, session=header["session"], seq=header["seq"], request_id=header["req"],
                   body=header["body"], payload=array, version=header["v"])


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as err:
        raise MessageError("malformed", f"header is not UTF-8 JSON ({err})") from None
    if not isinstance(header, dict):
        raise MessageError("malformed", f"header must be a JSON object, got {type(header).__name__}")
    # The version is checked before anything else so an old peer hears "wrong version",
    # not a complaint about some field it never knew about.
    version = header.get("v")
    if not is_int(version):
        raise MessageError("malformed", "header field 'v' (protocol version) must be an integer")
    if version != PROTOCOL_VERSION:
        raise MessageError("bad_version", f"protocol version {shown(version)} is not supported (this end speaks {PROTOCOL_VERSION})")
    for key in ("session", "req"):
        value = header.get(key)
        if not isinstance(value, str) or not _ID_RE.fullmatch(value):
            raise MessageError("malformed", f"header field {key!r} must be an id of 1-80 characters "
                                f"[A-Za-z0-9_.:-] starting with a letter or digit, got {shown(value)}")
    for key in ("seq", "nbytes", "crc32"):
        value = header.get(key)
        if not is_int(value) or value < 0 or value >= 2**63:
            raise MessageError("malformed", f"header field {key!r} must be a non-negative integer, got {shown(value)}")
    # Every field is required (docs/bridge-protocol.md); "no payload" is spelt dtype = shape = null.
    absent = [key for key in HEADER_FIELDS if key not in header]
    if absent:
        raise MessageError("malformed", f"header lacks required field(s) {', '.join(absent)}")
    if not isinstance(header.get("body"), dict):
        raise MessageError("malformed", "header field 'body' must be a JSON object")
    dtype, shape = header.get("dtype"), header.get("shape")
    if (dtype is None) != (shape is None):
        raise MessageError("malformed", "header fields 'dtype' and 'shape' must be both set or both null")
    if dtype is not None:
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise MessageError("malformed", f"payload dtype {shown(dtype)} is not one of {sorted(ALLOWED_DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(is_int(s) and 0 <= s < 2**40 for s in shape)):
            raise MessageError("malformed", f"payload shape must be a list of <= {MAX_NDIM} non-negative integers, got {shown(shape)}")
    return header


def _payload_array(dtype: str | None, shape: list[int] | None, payload: bytes) -> np.ndarray | None:
    if dtype is None:
        if payload:
            raise MessageError("shape_mismatch", f"{len(payload)} payload bytes arrived but the header declares no payload")
        return None
    assert shape is not None
    wire = np.dtype(dtype).newbyteorder("<")
    expected = math.prod(shape) * wire.itemsize
    if expected != len(payload):
        raise MessageError("shape_mismatch", f"{dtype} {shape} needs {expected} bytes, {len(payload)} arrived")
    return np.frombuffer(payload, dtype=wire).reshape(shape).astype(np.dtype(dtype), copy=False)


def _refuse_constant(name: str) -> None:
    raise InputError(f"{name} is not allowed in the header")


def is_int(value: object) -> bool:
    """A JSON integer (a bool is not one, though Python counts it as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise MessageError("bad_request", f"{name} must be 1-80 characters of [A-Za-z0-9_.:-] starting with a "
                            f"letter or digit, got {shown(value)}")


def is_valid_id(value: object) -> bool:
    """True for strings usable as session or request ids (and so as file names on the rig)."""
    return isinstance(value, str) and bool(_ID_RE.fullmatch(value))


def is_stimulus_id(value: object) -> bool:
    """True for a stimulus id as `stimulus_id` makes it: 64 lowercase hex digits."""
    return isinstance(value, str) and bool(_STIMULUS_ID_RE.fullmatch(value))


def shown(value: object, limit: int = 100) -> str:
    """`repr` of a value cut to `limit` characters: an error line never echoes a whole attack."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def checked_frames(payload: np.ndarray | None, *, max_side: int = 4096) -> np.ndarray:
    """Validate an uploaded stimulus and return it as uint8 `[T, H, W]` grey levels.

    uint8 passes as is; float32/float64 grey levels must be finite and in [0, 255] and are
    rounded. Raises MessageError("bad_frames", ...) naming the problem.
    """
    if payload is None:
        raise MessageError("bad_frames", "upload carries no frames")
    if payload.ndim != 3 or min(payload.shape) < 1:
        raise MessageError("bad_frames", f"frames must be [T, H, W] with T, H, W >= 1, got shape {list(payload.shape)}")
    if payload.shape[1] > max_side or payload.shape[2] > max_side:
        raise MessageError("bad_frames", f"frames of {payload.shape[1]}x{payload.shape[2]} exceed {max_side} pixels a side")
    if payload.dtype == np.uint8:
        return payload
    if payload.dtype.kind != "f":
        raise MessageError("bad_frames", f"frames must be uint8 or float grey levels, got {payload.dtype}")
    finite = np.isfinite(payload)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.reshape(len(payload), -1).all(axis=1))[0])
        raise MessageError("bad_frames", f"frame {bad} holds NaN or infinite values")
    lo, hi = float(payload.min()), float(payload.max())
    if lo < 0 or hi > 255:
        raise MessageError("bad_frames", f"grey levels must lie in [0, 255], got [{lo:g}, {hi:g}]")
    return np.rint(payload).astype(np.uint8)


def stimulus_id(frames: np.ndarray, frame_rate: float) -> str:
    """Content address of a stimulus: BLAKE2b-256 over rate, shape and the uint8 frames."""
    import hashlib

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    h = hashlib.blake2b(digest_size=32)
    h.update(f"insilico-stimulus-v1 {float(frame_rate)!r} {list(frames.shape)}\n".encode())
    h.update(memoryview(frames).cast("B"))
    return h.hexdigest()


def peek_request(frames: Sequence[bytes]) -> tuple[str, str]:
    """Best-effort (session, request_id) of a message that failed to decode, for the error reply."""
    session, req = "unknown", "unknown"
    if len(frames) >= 2 and len(frames[1]) <= MAX_HEADER_BYTES:
        try:
            header = json.loads(bytes(frames[1]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return session, req
        if isinstance(header, dict):
            if is_valid_id(header.get("session")):
                session = header["session"]
            if is_valid_id(header.get("req")):
                req = header["req"]
    return session, req

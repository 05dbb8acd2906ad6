"""The bridge's wire format: round trips, every rejection, and a fuzzed decoder."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rig_bridge.binning import bin_spikes, frame_edges
from rig_bridge.protocol import (
    ERROR_CODES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Message,
    MessageError,
    checked_frames,
    decode,
    encode,
    stimulus_id,
)


def _frames(**kw: object) -> list[bytes]:
    msg = Message(type=kw.pop("type", "upload"), session="s-1", seq=7, request_id="r-1",
                  body=kw.pop("body", {"frame_rate": 30.0}), payload=kw.pop("payload", None))
    return encode(msg)


def _with_header(frames: list[bytes], **changes: object) -> list[bytes]:
    header = json.loads(frames[1])
    header.update(changes)
    return [frames[0], json.dumps(header).encode(), frames[2]]


@pytest.mark.parametrize("payload", [
    None,
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.array([[1, 300_000], [2, 2**40]], dtype=np.int64),
    np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2),
    np.zeros((0, 2), dtype=np.int64),
    np.arange(5, dtype=np.uint16),
])
def test_round_trip_keeps_everything(payload: np.ndarray | None) -> None:
    msg = Message("present", "sess-A", 42, "req-9", {"repeats": 3, "nested": {"a": [1, 2]}}, payload)
    out = decode(encode(msg))
    assert (out.type, out.session, out.seq, out.request_id) == ("present", "sess-A", 42, "req-9")
    assert dict(out.body) == {"repeats": 3, "nested": {"a": [1, 2]}}
    if payload is None:
        assert out.payload is None
    else:
        assert out.payload.dtype == payload.dtype and out.payload.shape == payload.shape
        np.testing.assert_array_equal(out.payload, payload)


def test_header_carries_checksum_and_sizes() -> None:
    payload = np.arange(10, dtype=np.uint8)
    header = json.loads(_frames(payload=payload)[1])
    assert header["v"] == PROTOCOL_VERSION
    assert header["nbytes"] == 10 and header["shape"] == [10] and header["dtype"] == "uint8"
    assert header["crc32"] == zlib.crc32(payload.tobytes())


def _code(frames: list[bytes], **kw: object) -> str:
    with pytest.raises(MessageError) as info:
        decode(frames, **kw)
    assert info.value.code in ERROR_CODES
    return info.value.code


def test_rejections_name_the_problem() -> None:
    good = _frames(payload=np.arange(12, dtype=np.uint8).reshape(1, 3, 4))
    assert _code(good[:2]) == "malformed"
    assert _code([*good, b"extra"]) == "malformed"
    assert _code([b"launch_missiles", good[1], good[2]]) == "unknown_type"
    assert _code([b"\xff\xfe", good[1], good[2]]) == "malformed"
    assert _code([good[0], b"{not json", good[2]]) == "malformed"
    assert _code([good[0], b"[1, 2]", good[2]]) == "malformed"
    assert _code(_with_header(good, v=2)) == "bad_version"
    assert _code(_with_header(good, v="1")) == "malformed"
    assert _code(_with_header(good, seq=-1)) == "malformed"
    assert _code(_with_header(good, session="has space")) == "malformed"
    assert _code(_with_header(good, dtype="object")) == "malformed"
    assert _code(_with_header(good, body=[])) == "malformed"
    assert _code(_with_header(good, shape=[2, 3, 4])) == "shape_mismatch"
    assert _code(_with_header(good, nbytes=11)) == "shape_mismatch"
    assert _code([good[0], good[1], good[2][:-1]]) == "shape_mismatch"
    corrupted = bytearray(good[2])
    corrupted[0] ^= 0xFF
    assert _code([good[0], good[1], bytes(corrupted)]) == "checksum"
    assert _code(good, max_payload_bytes=11) == "too_large"
    nan_header = good[1].replace(b'"seq":7', b'"seq":NaN')
    assert _code([good[0], nan_header, good[2]]) == "malformed"


def test_version_error_comes_before_field_errors() -> None:
    """An old or new peer hears 'wrong version', not a complaint about a field it never knew."""
    header = json.dumps({"v": 99, "something": "else"}).encode()
    assert _code([b"hello", header, b""]) == "bad_version"


def test_encode_refuses_what_it_cannot_send() -> None:
    with pytest.raises(MessageError, match="unknown_type"):
        encode(Message("nope", "s", 1, "r"))
    with pytest.raises(MessageError, match="bad_request"):
        encode(Message("ok", "s", 1, "r", {"x": float("nan")}))
    with pytest.raises(MessageError, match="bad_request"):
        encode(Message("ok", "s", 1, "r", payload=np.array(["a"])))


def test_frame_checks() -> None:
    ok = np.full((2, 4, 4), 7, dtype=np.uint8)
    assert checked_frames(ok) is ok
    floats = np.full((2, 4, 4), 254.6, dtype=np.float32)
    assert checked_frames(floats).dtype == np.uint8 and checked_frames(floats)[0, 0, 0] == 255
    bad = np.zeros((3, 4, 4), dtype=np.float32)
    bad[1, 2, 2] = np.nan
    with pytest.raises(MessageError, match="frame 1 holds NaN"):
        checked_frames(bad)
    with pytest.raises(MessageError, match=r"\[0, 255\]"):
        checked_frames(np.full((1, 2, 2), 256.0))
    with pytest.raises(MessageError, match="bad_frames"):
        checked_frames(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(MessageError, match="bad_frames"):
        checked_frames(np.zeros((1, 2, 2), dtype=np.int64))


def test_stimulus_id_is_content_address() -> None:
    a = np.zeros((2, 3, 3), dtype=np.uint8)
    b = a.copy()
    b[1, 1, 1] = 1
    assert stimulus_id(a, 30.0) == stimulus_id(a.copy(), 30.0)
    assert len({stimulus_id(a, 30.0), stimulus_id(b, 30.0), stimulus_id(a, 60.0),
                stimulus_id(a.reshape(2, 9, 1), 30.0)}) == 4


def test_binning_uses_flip_times() -> None:
    # Frame 1 stays up twice as long (a dropped frame); bins follow the flips, not the nominal rate.
    flips = np.array([[0, 1000], [1, 2000], [2, 4000], [3, 5000]])
    edges = frame_edges(flips[::-1], 3)
    np.testing.assert_array_equal(edges, [1000, 2000, 4000, 5000])
    cells = np.array([7, 7, 9, 9, 7])
    samples = np.array([999, 1000, 3999, 4000, 5000])  # before, bin 0, bin 1, bin 2, after
    counts = bin_spikes(edges, np.array([9, 7]), cells, samples)
    np.testing.assert_array_equal(counts, [[0, 1], [1, 0], [1, 0]])
    with pytest.raises(ValueError, match="cover"):
        frame_edges(flips[:3], 3)
    with pytest.raises(ValueError, match="backwards"):
        frame_edges(np.array([[0, 5], [1, 3]]), 1)
    with pytest.raises(ValueError, match=r"cell ids \[8\]"):
        bin_spikes(edges, np.array([9, 7]), np.array([8]), np.array([1500]))


_type_frames = st.one_of(st.sampled_from(sorted(t.encode() for t in MESSAGE_TYPES)), st.binary(max_size=12))
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10)


@st.composite
def _header_frames(draw: st.DrawFn) -> bytes:
    """Headers near the valid ones (so the fuzzer gets past the JSON parse), or raw bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=64))
    header = {"v": 1, "session": "s", "seq": 1, "req": "r", "dtype": "uint8", "shape": [4],
              "nbytes": 4, "crc32": zlib.crc32(b"abcd"), "body": {}}
    for key in draw(st.lists(st.sampled_from(sorted(header)), max_size=3)):
        if draw(st.booleans()):
            header.pop(key, None)
        else:
            header[key] = draw(_json_values)
    return json.dumps(header).encode()


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.one_of(
    st.lists(st.binary(max_size=40), max_size=5),
    st.tuples(_type_frames, _header_frames(), st.sampled_from([b"abcd", b"", b"abc", b"abcde"])).map(list),
))
# Found by this test in CI: a header with no dtype/shape keys at all but a payload.
@example(parts=[b"abort", b'{"v": 1, "session": "s", "seq": 1, "req": "r", "nbytes": 4, '
                          b'"crc32": 3984772369, "body": {}}', b"abcd"])
def test_fuzzed_decoder_only_raises_protocol_errors(parts: list[bytes]) -> None:
    try:
        msg = decode(parts, max_payload_bytes=1024)
    except MessageError as err:
        assert err.code in ERROR_CODES
    else:
        assert msg.type in MESSAGE_TYPES  # whatever decodes is self-consistent
        assert decode(encode(msg)).body == msg.body


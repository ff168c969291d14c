"""Frames: round trips (hypothesis), incremental decoding, and every kind of corruption."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keeldb import limits
from keeldb.codec.frame import (
    FRAME_VERSION,
    HEADER_BYTES,
    FrameDecoder,
    decode_frame,
    encode_frame,
)
from keeldb.errors import (
    FrameChecksumError,
    FrameError,
    FramePayloadError,
    FrameTooLargeError,
    FrameVersionError,
    LimitExceededError,
)

# msgpack values that round-trip exactly (lists, not tuples; str keys and int keys).
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=50) | st.binary(max_size=200))
values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=10) | st.integers(-1000, 1000), inner, max_size=6),
    max_leaves=30,
)


@given(values)
@settings(deadline=None)  # a loaded CI box must not turn slow generation into a failure
def test_round_trip(obj: Any) -> None:
    assert decode_frame(encode_frame(obj)) == obj


@given(st.lists(values, min_size=1, max_size=8), st.data())
@settings(max_examples=60, deadline=None)
def test_stream_split_at_any_points(objs: list[Any], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(o) for o in objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    got: list[Any] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[prev:cut])
        prev = cut
    assert got == objs
    assert decoder.buffered == 0
    assert decoder.frames == len(objs)
    assert decoder.bytes_consumed == len(stream)


def test_byte_at_a_time() -> None:
    objs = [{"op": "write", "key": b"k", "value": i} for i in range(5)]
    decoder = FrameDecoder()
    got: list[Any] = []
    for byte in b"".join(encode_frame(o) for o in objs):
        got += decoder.feed(bytes([byte]))
    assert got == objs


def test_header_layout() -> None:
    frame = encode_frame("hi")
    magic, version, flags, length = struct.unpack(">2sBBI", frame[:8])
    assert (magic, version, flags) == (b"KF", FRAME_VERSION, 0)
    assert length == len(frame) - HEADER_BYTES == 3  # fixstr header + 2 bytes


@given(st.binary(max_size=300) | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20),
       st.data())
@settings(max_examples=300, deadline=None)
def test_any_single_bit_flip_is_detected(obj: Any, data: st.DataObject) -> None:
    frame = bytearray(encode_frame(obj))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    # A small limit keeps the test fast: a length bit flipped high fails the limit at once.
    decoder = FrameDecoder(frame_bytes_max=64 * 1024)
    try:
        out = decoder.feed(bytes(frame))
    except FrameError:
        return
    # A flipped length bit that asks for more bytes leaves the frame incomplete, never wrong.
    assert out == []
    assert decoder.buffered == len(frame)
    (length,) = struct.unpack(">I", frame[4:8])
    with pytest.raises(FrameChecksumError):
        decoder.feed(b"\x00" * (HEADER_BYTES + length - len(frame)))


def test_bad_checksum() -> None:
    frame = bytearray(encode_frame({"a": 1}))
    frame[-1] ^= 0xFF
    with pytest.raises(FrameChecksumError, match="crc32c"):
        decode_frame(bytes(frame))


def test_unknown_version() -> None:
    frame = bytearray(encode_frame(1))
    frame[2] = FRAME_VERSION + 1
    with pytest.raises(FrameVersionError, match="version 2"):
        FrameDecoder().feed(bytes(frame))


def test_bad_magic_and_flags() -> None:
    with pytest.raises(FramePayloadError, match="magic"):
        FrameDecoder().feed(b"GET / HTTP/1.1\r\n\r\n")
    frame = bytearray(encode_frame(1))
    frame[3] = 1
    with pytest.raises(FramePayloadError, match="flags"):
        FrameDecoder().feed(bytes(frame))


def test_undecodable_payload_with_valid_checksum() -> None:
    import crc32c

    payload = b"\xc1"  # never used in msgpack
    head = struct.pack(">2sBBI", b"KF", FRAME_VERSION, 0, len(payload))
    frame = head + struct.pack(">I", crc32c.crc32c(payload, crc32c.crc32c(head))) + payload
    with pytest.raises(FramePayloadError, match="msgpack"):
        decode_frame(frame)
    trailing = b"\x01\x02"  # two objects in one payload is not one frame
    head = struct.pack(">2sBBI", b"KF", FRAME_VERSION, 0, len(trailing))
    frame = head + struct.pack(">I", crc32c.crc32c(trailing, crc32c.crc32c(head))) + trailing
    with pytest.raises(FramePayloadError):
        decode_frame(frame)


def test_oversized_frame_rejected_on_both_sides() -> None:
    small_max = 1024
    with pytest.raises(FrameTooLargeError, match="frame_bytes_max=1024") as info:
        encode_frame(b"x" * 2000, frame_bytes_max=small_max)
    assert isinstance(info.value, LimitExceededError)
    # A header announcing more than the limit fails at once, before any payload arrives.
    head = struct.pack(">2sBBII", b"KF", FRAME_VERSION, 0, limits.frame_bytes_max, 0)
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLargeError):
        decoder.feed(head)
    assert decoder.buffered == 0
    big = encode_frame(b"y" * 2000)
    with pytest.raises(FrameTooLargeError):
        FrameDecoder(frame_bytes_max=small_max).feed(big[:HEADER_BYTES])


def test_failed_decoder_stays_failed_and_keeps_earlier_frames() -> None:
    good = encode_frame("ok")
    decoder = FrameDecoder()
    assert decoder.feed(good + b"garbage-garbage") == ["ok"]
    assert isinstance(decoder.failed, FramePayloadError)
    with pytest.raises(FramePayloadError):
        decoder.feed(good)
    with pytest.raises(FramePayloadError):
        decoder.feed(b"")

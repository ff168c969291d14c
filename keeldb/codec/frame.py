"""Network frames: length-prefixed, checksummed, versioned envelopes around msgpack payloads.

Layout (big-endian, `limits.frame_header_bytes` = 12 bytes of header, then the payload):

    offset  size  field
    0       2     magic   b"KF"
    2       1     version FRAME_VERSION (1)
    3       1     flags   0 (reserved; any other value is rejected)
    4       4     length  payload bytes (header + length <= limits.frame_bytes_max)
    8       4     crc32c  over header bytes 0..7 followed by the payload
    12      n     payload msgpack (bin type on, str as UTF-8)

The checksum covers the length field too, so a flipped length bit is caught once the (wrong)
number of bytes has arrived; the limit check on the length bounds how long that can take.
Everything here is sans-IO: `encode_frame` makes bytes, `FrameDecoder.feed` turns a byte stream
into payloads, and every defect raises a `FrameError` subclass naming what was wrong.
"""

from __future__ import annotations

import struct
from typing import Any

import crc32c
import msgpack

from keeldb import limits
from keeldb.errors import (
    FrameChecksumError,
    FrameError,
    FramePayloadError,
    FrameTooLargeError,
    FrameVersionError,
)

MAGIC = b"KF"
FRAME_VERSION = 1
_HEADER = struct.Struct(">2sBBII")
HEADER_BYTES = _HEADER.size
assert HEADER_BYTES == limits.frame_header_bytes
PAYLOAD_BYTES_MAX = limits.frame_bytes_max - HEADER_BYTES


def pack_payload(obj: Any) -> bytes:
    """msgpack-encode `obj` (bytes stay bytes, str stays str, tuples become lists)."""
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def unpack_payload(data: bytes) -> Any:
    """Decode a msgpack payload; `FramePayloadError` if it is not exactly one valid object."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FramePayloadError(
            f"frame payload of {len(data)} bytes is not valid msgpack ({type(exc).__name__}: "
            f"{exc}); the peer is not speaking keeldb frames, close the connection"
        ) from exc


def encode_frame(obj: Any, *, frame_bytes_max: int = limits.frame_bytes_max) -> bytes:
    """One complete frame carrying `obj`. Raises `FrameTooLargeError` over the limit."""
    payload = pack_payload(obj)
    total = HEADER_BYTES + len(payload)
    if total > frame_bytes_max:
        raise FrameTooLargeError(
            f"frame of {total} bytes exceeds frame_bytes_max={frame_bytes_max}; "
            "send smaller messages (split batches)"
        )
    head = struct.pack(">2sBBI", MAGIC, FRAME_VERSION, 0, len(payload))
    crc = crc32c.crc32c(payload, crc32c.crc32c(head))
    return head + struct.pack(">I", crc) + payload


def _check_header(
    magic: bytes, version: int, flags: int, length: int, frame_bytes_max: int
) -> None:
    if magic != MAGIC:
        raise FramePayloadError(
            f"frame starts with {magic!r}, expected magic {MAGIC!r}; the peer is not speaking "
            "keeldb frames, close the connection"
        )
    if version != FRAME_VERSION:
        raise FrameVersionError(
            f"frame version {version} is not supported (this build speaks {FRAME_VERSION}); "
            "run the same keeldb version on both ends"
        )
    if flags != 0:
        raise FramePayloadError(f"frame flags {flags:#04x} are reserved and must be 0")
    if HEADER_BYTES + length > frame_bytes_max:
        raise FrameTooLargeError(
            f"incoming frame of {HEADER_BYTES + length} bytes exceeds "
            f"frame_bytes_max={frame_bytes_max}; close the connection"
        )


def decode_frame(data: bytes, *, frame_bytes_max: int = limits.frame_bytes_max) -> Any:
    """Decode exactly one complete frame (no trailing bytes)."""
    decoder = FrameDecoder(frame_bytes_max=frame_bytes_max)
    out = decoder.feed(data)
    if len(out) != 1 or decoder.buffered:
        raise FramePayloadError(
            f"expected exactly one frame in {len(data)} bytes, found {len(out)} complete "
            f"frame(s) and {decoder.buffered} leftover byte(s)"
        )
    return out[0]


class FrameDecoder:
    """Incremental decoder: `feed(bytes)` returns the payloads of the frames it completed.

    Memory is bounded: at most one partial frame (<= frame_bytes_max) is buffered, because a
    header announcing more is rejected as soon as it arrives. After any `FrameError` the
    decoder is failed for good (the stream position is lost) and raises again on every feed.
    Frames completed before a defect in the same chunk are still returned; the defect is then
    raised by the next `feed` and visible at once as `failed`.
    """

    __slots__ = ("_buf", "_failed", "_frame_bytes_max", "frames", "bytes_consumed")

    def __init__(self, *, frame_bytes_max: int = limits.frame_bytes_max) -> None:
        assert HEADER_BYTES < frame_bytes_max <= limits.frame_bytes_max
        self._frame_bytes_max = frame_bytes_max
        self._buf = bytearray()
        self._failed: FrameError | None = None
        self.frames = 0  # frames decoded so far
        self.bytes_consumed = 0  # bytes consumed by decoded frames

    @property
    def failed(self) -> FrameError | None:
        """The defect that ended this stream, if any."""
        return self._failed

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Any]:
        if self._failed is not None:
            raise self._failed
        self._buf += data
        out: list[Any] = []
        try:
            pos = 0
            while len(self._buf) - pos >= HEADER_BYTES:
                magic, version, flags, length, crc = _HEADER.unpack_from(self._buf, pos)
                _check_header(magic, version, flags, length, self._frame_bytes_max)
                end = pos + HEADER_BYTES + length
                if len(self._buf) < end:
                    break
                payload = bytes(self._buf[pos + HEADER_BYTES:end])
                actual = crc32c.crc32c(payload, crc32c.crc32c(self._buf[pos:pos + 8]))
                if actual != crc:
                    raise FrameChecksumError(
                        f"frame #{self.frames} of {HEADER_BYTES + length} bytes has crc32c "
                        f"{actual:#010x}, header says {crc:#010x}; the stream is corrupt, "
                        "close the connection"
                    )
                out.append(unpack_payload(payload))
                self.frames += 1
                self.bytes_consumed += end - pos
                pos = end
            del self._buf[:pos]
        except FrameError as exc:
            self._failed = exc
            self._buf.clear()
            if not out:
                raise
            # Hand out the good frames that came before the defect; the next feed raises.
            return out
        assert len(self._buf) < self._frame_bytes_max
        return out

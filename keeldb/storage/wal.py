"""Write-ahead log: one checksummed record per atomic batch.

Record layout (little-endian)::

    u32 payload_length | u32 crc32c(payload) | u32 crc32c(first 8 header bytes) | payload
    payload = msgpack([seq, [[kind, key, value], ...]])

The header carries its own checksum so a flipped bit in a length field is recognised as
corruption: without it a middle record whose length grew past the end of the file would look
like a torn tail, and every later acknowledged record would be dropped silently.

A batch is one record, so it is written with one `append` and is either wholly in the log or
wholly absent after a crash. Recovery (`read_wal`) distinguishes a *torn tail* -- the last
record is incomplete, fails its checksum and reaches the end of the file, or is followed only by
zero bytes -- which is truncated away, from *corruption*: a bad record followed by more data,
which raises `CorruptionError` naming the file and offset (the log cannot be trusted past it,
and silently dropping acknowledged writes in the middle is never right).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import msgpack
from crc32c import crc32c

from keeldb import limits
from keeldb.errors import CorruptionError, LimitExceededError
from keeldb.ports import Disk, File

HEADER = struct.Struct("<III")
HEADER_BYTES = HEADER.size
_LEN_CRC = struct.Struct("<II")
# One op as msgpack bytes of [seq, [[kind, key, value]]], in three prebuilt pieces: fixarray 2
# + uint64 seq (packed); fixarray 1, fixarray 3, fixint kind, bin8 header of the key (by kind
# and key length); bin8 header of the value (by length). Valid msgpack (a non-minimal uint is
# allowed), so the reader stays plain `msgpack.unpackb`.
_SEQ_HEAD = struct.Struct(">HQ").pack
_OP_HEAD = tuple(tuple(bytes((0x91, 0x93, kind, 0xC4, n)) for n in range(256)) for kind in (0, 1))
_BIN8_HEAD = tuple(bytes((0xC4, n)) for n in range(256))
_BIN8_MAX = 255
# Smallest valid payload: msgpack of [seq, []] is at least 3 bytes.
PAYLOAD_BYTES_MIN = 3

Batch = tuple[int, list[tuple[int, bytes, bytes]]]

_pack = msgpack.Packer(use_bin_type=True).pack


def wal_name(number: int) -> str:
    return f"{number:06d}.log"


def encode_record(seq: int, ops: list[tuple[int, bytes, bytes]]) -> bytes:
    """Frame one batch as a WAL record; refuse one over `wal_record_bytes_max`."""
    payload = _pack((seq, ops))
    if len(payload) > limits.wal_record_bytes_max:
        raise LimitExceededError(
            f"WAL record of {len(payload)} bytes is over wal_record_bytes_max="
            f"{limits.wal_record_bytes_max}; split the batch"
        )
    return _frame(payload)


def encode_one(seq: int, kind: int, key: bytes, value: bytes) -> bytes:
    """`encode_record(seq, [(kind, key, value)])` for one checked op (a single put or
    delete): keys and values under 256 bytes are framed from prebuilt pieces instead of a
    msgpack encode; the payload decodes to the same batch."""
    if len(key) > _BIN8_MAX or len(value) > _BIN8_MAX:
        return encode_record(seq, [(kind, key, value)])
    payload = b"".join((_SEQ_HEAD(0x92CF, seq), _OP_HEAD[kind][len(key)], key,
                        _BIN8_HEAD[len(value)], value))
    size = len(payload)
    crc = crc32c(payload, 0, 0)
    return HEADER.pack(size, crc, crc32c(_LEN_CRC.pack(size, crc), 0, 0)) + payload


def _frame(payload: bytes) -> bytes:
    # gil_release_mode=0: hashing a batch takes microseconds; releasing the GIL for it would
    # hand the writer's core to another thread for a whole switch interval.
    size = len(payload)
    crc = crc32c(payload, 0, 0)
    return HEADER.pack(size, crc, crc32c(_LEN_CRC.pack(size, crc), 0, 0)) + payload


class WalWriter:
    """Appends records to one log file. Not thread-safe: the engine serialises writers."""

    __slots__ = ("file", "number")

    def __init__(self, file: File, number: int) -> None:
        self.file = file
        self.number = number

    def append(self, record: bytes) -> None:
        self.file.append(record)

    def size(self) -> int:
        return self.file.size()

    def sync(self) -> None:
        self.file.sync()

    def close(self) -> None:
        self.file.close()


def create_wal(disk: Disk, number: int) -> WalWriter:
    """Create a new, empty log and make its directory entry durable."""
    file = disk.create(wal_name(number))
    disk.sync_dir()
    return WalWriter(file, number)


def _decode(payload: bytes, name: str, offset: int) -> Batch:
    try:
        seq, raw_ops = msgpack.unpackb(payload, raw=False, use_list=False)
        ops = [(int(k), bytes(key), bytes(value)) for k, key, value in raw_ops]
    except Exception as exc:  # a checksummed payload that does not decode is corruption too
        raise CorruptionError(
            f"WAL {name!r} record at offset {offset} has a valid checksum but does not "
            f"decode ({exc}); restore from a backup or run check-store",
            path=name,
            offset=offset,
        ) from exc
    assert isinstance(seq, int) and seq > 0, f"WAL {name} offset {offset}: bad seq {seq!r}"
    return seq, ops


def parse_wal(data: bytes, name: str) -> tuple[list[Batch], int]:
    """Decode every record of `data`; return the batches and the length of the valid prefix.

    Raises `CorruptionError` for a bad record that is followed by more non-zero data.
    """
    batches: list[Batch] = []
    offset = 0
    size = len(data)
    unpack_header = HEADER.unpack_from
    while offset < size:
        bad = ""
        if size - offset < HEADER_BYTES:
            bad = "incomplete header"
            length = 0
        else:
            length, crc, head_crc = unpack_header(data, offset)
            end = offset + HEADER_BYTES + length
            if crc32c(data[offset : offset + 8]) != head_crc:
                bad = "header checksum mismatch"
            elif length < PAYLOAD_BYTES_MIN or length > limits.wal_record_bytes_max:
                bad = "impossible length"
            elif end > size:
                bad = "incomplete record"
            elif crc32c(data[offset + HEADER_BYTES : end]) != crc:
                bad = "checksum mismatch"
        if bad:
            if bad == "checksum mismatch":
                after = data[end:]  # a torn last record has nothing but zeros after it
            elif bad in ("impossible length", "header checksum mismatch"):
                after = data[offset + HEADER_BYTES :]
            else:
                # incomplete header, or a trusted length running past the end of the file
                after = b""
            if not after.strip(b"\0"):
                return batches, offset
            raise CorruptionError(
                f"WAL {name!r} is corrupt at offset {offset} ({bad}) and valid-looking data "
                "follows; acknowledged writes after it cannot be trusted. Restore from a "
                "backup, or move the file away to open the store without its tail",
                path=name,
                offset=offset,
            )
        batches.append(_decode(data[offset + HEADER_BYTES : end], name, offset))
        offset = end
    return batches, offset


def read_wal(
    disk: Disk, name: str, *, repair: bool = True, on_truncate: Callable[[int], None] | None = None
) -> list[Batch]:
    """Read every batch of log `name`; truncate a torn tail when `repair`."""
    file = disk.open(name, append=repair)
    try:
        size = file.size()
        data = file.read_at(0, size)
        batches, valid = parse_wal(data, name)
        if valid < size and repair:
            file.truncate(valid)
            file.sync()
            if on_truncate is not None:
                on_truncate(size - valid)
        return batches
    finally:
        file.close()

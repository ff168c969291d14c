"""Wire and disk encoding of the Raft core's vocabulary: msgpack payloads under a crc32c.

Two framings share one payload encoding:

- a *message* (what `RaftNode` sends to a peer) is `version byte + crc32c(payload) + payload`;
  the receiver checks both and drops a message that fails (the peer resends);
- a *record* (what `raft_log` appends to its files) is `length (4 bytes, big-endian) +
  crc32c(payload) + payload`, so a reader can find the end of each record and tell a torn
  tail from a whole one.

Payloads are plain lists (positional, small), with enums as their string values. Decoding
accepts lists where tuples were encoded (msgpack does not keep the difference).
"""

from __future__ import annotations

import struct
from typing import Any

import crc32c
import msgpack

from keeldb.consensus import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)
from keeldb.errors import CorruptionError
from keeldb.types import NodeId

WIRE_VERSION = 1
_WIRE_HEADER = struct.Struct(">BI")  # version, crc32c of the payload
RECORD_HEADER = struct.Struct(">II")  # payload length, crc32c of the payload
RECORD_BYTES_MAX = 1024 * 1024 * 1024  # one record (a snapshot file is one record)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# --- plain-data forms --------------------------------------------------------------------------


_ENTRY_TYPES = {t.value: t for t in EntryType}
_MSG_TYPES = {t.value: t for t in MsgType}
# member -> wire string: a dict lookup costs ~1/5 of an enum's `.value` property (per entry
# and per message on the hot path).
_ENTRY_VALUES = {t: t.value for t in EntryType}
_MSG_VALUES = {t: t.value for t in MsgType}


def entry_to_plain(e: Entry) -> list[Any]:
    return [e.index, e.term, e.data, _ENTRY_VALUES[e.type]]


def entry_from_plain(p: Any) -> Entry:
    index, term, data, typ = p
    return Entry(int(index), int(term), bytes(data), _ENTRY_TYPES.get(typ) or EntryType(typ))


def meta_to_plain(m: SnapshotMeta) -> list[Any]:
    return [m.index, m.term, list(m.conf_state.voters), list(m.conf_state.learners)]


def meta_from_plain(p: Any) -> SnapshotMeta:
    index, term, voters, learners = p
    cs = ConfState(tuple(NodeId(v) for v in voters), tuple(NodeId(v) for v in learners))
    return SnapshotMeta(int(index), int(term), cs)


def hard_state_to_plain(hs: HardState) -> list[Any]:
    return [hs.term, str(hs.vote), hs.commit]


def hard_state_from_plain(p: Any) -> HardState:
    term, vote, commit = p
    return HardState(int(term), NodeId(vote), int(commit))


def snapshot_to_plain(s: Snapshot) -> list[Any]:
    return [meta_to_plain(s.meta), s.data]


def snapshot_from_plain(p: Any) -> Snapshot:
    meta, data = p
    return Snapshot(meta_from_plain(meta), bytes(data))


def message_to_plain(m: Message) -> list[Any]:
    return [_MSG_VALUES[m.type], str(m.to), str(m.frm), m.term, m.log_term, m.index,
            [entry_to_plain(e) for e in m.entries], m.commit, m.reject, m.reject_hint,
            m.context, None if m.snapshot_meta is None else meta_to_plain(m.snapshot_meta),
            m.snap_offset, m.snap_data, m.snap_total, str(m.target)]


def message_from_plain(p: Any) -> Message:
    (typ, to, frm, term, log_term, index, entries, commit, reject, reject_hint, context,
     meta, snap_offset, snap_data, snap_total, target) = p
    return Message(
        _MSG_TYPES.get(typ) or MsgType(typ), NodeId(to), NodeId(frm), int(term), int(log_term), int(index),
        tuple(entry_from_plain(e) for e in entries), int(commit), bool(reject),
        int(reject_hint), bytes(context), None if meta is None else meta_from_plain(meta),
        int(snap_offset), bytes(snap_data), int(snap_total), NodeId(target))


# --- messages on the wire ----------------------------------------------------------------------


def encode_message(m: Message) -> bytes:
    """One Raft message as bytes for `Send` (checksummed, versioned)."""
    payload = _pack(message_to_plain(m))
    return _WIRE_HEADER.pack(WIRE_VERSION, crc32c.crc32c(payload)) + payload


def decode_message(data: bytes) -> Message:
    """Inverse of `encode_message`. Raises CorruptionError on a bad version, checksum or
    shape (the caller drops the message: Raft tolerates a lost message)."""
    if len(data) < _WIRE_HEADER.size:
        raise CorruptionError(f"raft message of {len(data)} bytes is shorter than its header")
    version, crc = _WIRE_HEADER.unpack_from(data)
    if version != WIRE_VERSION:
        raise CorruptionError(f"raft message version {version}, expected {WIRE_VERSION}; "
                              "run one keeldb version across the cluster")
    payload = data[_WIRE_HEADER.size:]
    if crc32c.crc32c(payload) != crc:
        raise CorruptionError(f"raft message checksum mismatch ({len(payload)} bytes)")
    try:
        return message_from_plain(_unpack(payload))
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptionError(f"raft message does not decode: {exc}") from exc


# --- records on disk ---------------------------------------------------------------------------


def encode_record(obj: Any) -> bytes:
    """One checksummed record holding plain data `obj`."""
    payload = _pack(obj)
    assert len(payload) <= RECORD_BYTES_MAX, f"record of {len(payload)} bytes"
    return RECORD_HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def decode_records(data: bytes, name: str) -> tuple[list[Any], int, str]:
    """Decode records from the start of `data`.

    Returns (records, valid, problem): `valid` is the length of the prefix of whole, intact
    records and `problem` is "" (all of `data` is valid), "torn" (the bytes after `valid` are
    one incomplete last record: what a power loss in the middle of an append leaves) or
    "corrupt" (a record that is complete but fails its checksum or format). A tail of zero
    bytes is "torn" too: a file system may extend a file before the data reaches it.
    """
    out: list[Any] = []
    pos = 0
    n = len(data)
    while pos < n:
        if pos + RECORD_HEADER.size > n:
            return out, pos, "torn"
        size, crc = RECORD_HEADER.unpack_from(data, pos)
        end = pos + RECORD_HEADER.size + size
        if size > RECORD_BYTES_MAX:
            return out, pos, _damage(data, pos)
        if end > n:
            return out, pos, "torn"
        payload = data[pos + RECORD_HEADER.size:end]
        if crc32c.crc32c(payload) != crc:
            # The last record torn inside its payload looks the same as a flipped bit in it.
            return out, pos, "torn" if end == n else _damage(data, pos)
        try:
            out.append(_unpack(payload))
        except (ValueError, TypeError) as exc:
            if not any(data[pos:]):
                return out, pos, "torn"
            raise CorruptionError(f"{name}: record at offset {pos} passes its checksum but does "
                                  f"not decode ({exc}); restore the node from a peer",
                                  path=name, offset=pos) from exc
        pos = end
    return out, pos, ""


def _damage(data: bytes, pos: int) -> str:
    return "corrupt" if any(data[pos:]) else "torn"

"""Multi-version keys over any engine of the `storage.engine` contract.

Every committed write of a transaction is stored as one *version*: the engine key is
`VERSION_PREFIX + escape(user_key) + TERMINATOR + inverted(commit_ts)` and the engine value is
one tag byte (`TAG_PUT` + value, or `TAG_TOMBSTONE`). The escape keeps user-key order
(0x00 becomes 0x00 0xFF, the terminator is 0x00 0x01, so a key sorts before every key it is a
prefix of) and the inverted timestamp (2**64 - 1 - ts, big-endian) makes a forward scan meet
a key's NEWEST version first. The commit that wrote the newest versions is recorded under
`META_LAST_TS` in the same engine batch, so reopening the engine recovers the clock.

Visibility: a reader at timestamp `ts` sees, for each key, the newest version whose commit
timestamp is <= ts; a tombstone there means "absent". Nothing here knows about transactions,
isolation or threads: `keeldb.txn` decides which timestamp a reader uses and which versions
may be garbage collected (`gc_step` is told the horizon).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from keeldb import limits
from keeldb.errors import InvalidKeyError
from keeldb.storage.engine import KIND_DELETE, KIND_PUT, check_key

NAMESPACE = b"\x00txn:"  # every engine key the MVCC layer writes starts with this
VERSION_PREFIX = NAMESPACE + b"v"
VERSION_END = NAMESPACE + b"w"  # first engine key after every version
META_LAST_TS = NAMESPACE + b"m"
TERMINATOR = b"\x00\x01"
TS_BYTES = 8
TS_MAX = 2**64 - 1
TAG_TOMBSTONE = b"\x00"
TAG_PUT = b"\x01"
# Engine-key bytes added to a user key besides escaping.
KEY_OVERHEAD = len(VERSION_PREFIX) + len(TERMINATOR) + TS_BYTES
VALUE_OVERHEAD = 1
_TS_AFTER = b"\xff" * (TS_BYTES + 1)  # key_prefix(k) + this sorts after every version of k


class Reader(Protocol):
    """The read side of an engine (`Engine`, `keeldb.embedded.DB` or a snapshot)."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes | None = None, end: bytes | None = None,
             reverse: bool = False, limit: int | None = None
             ) -> Iterator[tuple[bytes, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version of a user key."""

    key: bytes
    ts: int
    value: bytes | None  # None: a tombstone

    @property
    def engine_key(self) -> bytes:
        return version_key(self.key, self.ts)


def escape(key: bytes) -> bytes:
    """Order-preserving, prefix-free encoding of a user key (without the terminator)."""
    return key.replace(b"\x00", b"\x00\xff")


def unescape(data: bytes) -> bytes:
    return data.replace(b"\x00\xff", b"\x00")


def key_prefix(key: bytes) -> bytes:
    """The engine-key prefix shared by every version of `key` (and only of `key`)."""
    return VERSION_PREFIX + escape(key) + TERMINATOR


def encode_ts(ts: int) -> bytes:
    assert 0 <= ts <= TS_MAX, f"timestamp {ts} out of range"
    return (TS_MAX - ts).to_bytes(TS_BYTES, "big")


def decode_ts(data: bytes) -> int:
    assert len(data) == TS_BYTES, f"timestamp field of {len(data)} bytes"
    return TS_MAX - int.from_bytes(data, "big")


def version_key(key: bytes, ts: int) -> bytes:
    return key_prefix(key) + encode_ts(ts)


def check_user_key(key: object) -> bytes:
    """Validate a transactional key: an engine key that still fits after encoding."""
    key = check_key(key)
    size = len(escape(key)) + KEY_OVERHEAD
    if size > limits.key_bytes_max:
        raise InvalidKeyError(
            f"transactional key of {len(key)} bytes encodes to {size} bytes, over "
            f"key_bytes_max={limits.key_bytes_max}; use a shorter key (zero bytes count twice)"
        )
    return key


def range_bounds(start: bytes | None, end: bytes | None) -> tuple[bytes, bytes]:
    """Engine bounds covering the versions of every user key in [start, end)."""
    lo = VERSION_PREFIX if start is None else key_prefix(start)
    hi = VERSION_END if end is None else key_prefix(end)
    return lo, hi


def decode_version(engine_key: bytes, engine_value: bytes) -> Version:
    """Split a stored version back into (user key, commit ts, value or None)."""
    assert engine_key.startswith(VERSION_PREFIX), f"not a version key: {engine_key!r}"
    body = engine_key[len(VERSION_PREFIX):-TS_BYTES]
    assert body.endswith(TERMINATOR), f"version key without terminator: {engine_key!r}"
    key = unescape(body[: -len(TERMINATOR)])
    ts = decode_ts(engine_key[-TS_BYTES:])
    tag = engine_value[:1]
    if tag == TAG_PUT:
        return Version(key, ts, engine_value[1:])
    assert tag == TAG_TOMBSTONE and len(engine_value) == 1, f"bad version value {engine_value!r}"
    return Version(key, ts, None)


def put_op(key: bytes, ts: int, value: bytes | None) -> tuple[int, bytes, bytes]:
    """The engine op storing one version (value None: a tombstone)."""
    stored = TAG_TOMBSTONE if value is None else TAG_PUT + value
    return (KIND_PUT, version_key(key, ts), stored)


def meta_op(ts: int) -> tuple[int, bytes, bytes]:
    """The engine op recording `ts` as the newest commit (goes in the commit's batch)."""
    return (KIND_PUT, META_LAST_TS, ts.to_bytes(TS_BYTES, "big"))


def last_ts(reader: Reader) -> int:
    """The newest commit timestamp stored, 0 for a fresh engine."""
    raw = reader.get(META_LAST_TS)
    if raw is None:
        return 0
    assert len(raw) == TS_BYTES, f"bad last-ts record {raw!r}"
    return int.from_bytes(raw, "big")


def versions(reader: Reader, key: bytes) -> list[Version]:
    """Every stored version of `key`, newest first (asserts the order)."""
    lo = key_prefix(key)
    out = [decode_version(k, v) for k, v in reader.scan(lo, lo + _TS_AFTER)]
    for newer, older in zip(out, out[1:], strict=False):
        assert newer.ts > older.ts, f"versions of {key!r} out of order: {newer.ts}, {older.ts}"
    return out


def get_at(reader: Reader, key: bytes, ts: int) -> bytes | None:
    """The value of `key` visible at `ts` (None: absent or deleted).

    A one-pair range scan from `version_key(key, ts)`: the newest version at or below `ts`
    is the first engine key there. (An engine point read cannot answer this: each version
    is its own engine key and `ts` is not an engine seq, so the version to read is found
    only by seeking; the engine's page scan makes that seek cheap.)"""
    prefix = key_prefix(key)
    lo = prefix + encode_ts(ts)  # the first version at or below ts
    for engine_key, engine_value in reader.scan(lo, prefix + _TS_AFTER, limit=1):
        assert len(engine_key) == len(lo) and engine_key.startswith(prefix), engine_key
        assert decode_ts(engine_key[-TS_BYTES:]) <= ts, (engine_key, ts)
        tag = engine_value[:1]
        if tag == TAG_PUT:
            return engine_value[1:]
        assert tag == TAG_TOMBSTONE and len(engine_value) == 1, f"bad version {engine_value!r}"
        return None
    return None


def scan_at(reader: Reader, ts: int, start: bytes | None = None, end: bytes | None = None,
            reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
    """Live (key, value) pairs visible at `ts` with start <= key < end, in key order.

    Lazily reads the engine; versions newer than `ts` and shadowed older versions are
    skipped. Each key's versions are asserted to come in timestamp order.
    """
    lo, hi = range_bounds(start, end)
    current: bytes | None = None
    chosen: Version | None = None
    last_ts_seen = -1
    for engine_key, engine_value in reader.scan(lo, hi, reverse=reverse):
        version = decode_version(engine_key, engine_value)
        if version.key != current:
            if chosen is not None and chosen.value is not None:
                yield chosen.key, chosen.value
            current, chosen, last_ts_seen = version.key, None, -1
        elif reverse:
            assert version.ts > last_ts_seen, f"versions of {current!r} out of order"
        else:
            assert version.ts < last_ts_seen, f"versions of {current!r} out of order"
        last_ts_seen = version.ts
        if version.ts <= ts and (chosen is None or reverse):
            # Forward: the first version <= ts is the newest visible. Reverse: versions
            # arrive oldest first, so the last one <= ts wins.
            chosen = version
    if chosen is not None and chosen.value is not None:
        yield chosen.key, chosen.value


@dataclass(frozen=True, slots=True)
class GcStep:
    """What one garbage-collection step did and where the next one starts."""

    ops: list[tuple[int, bytes, bytes]]  # engine deletes to apply (one batch)
    examined: int
    next_start: bytes | None  # None: the pass reached the end of the keyspace


def gc_step(reader: Reader, horizon: int, start: bytes | None = None,
            entries_max: int = limits.mvcc_gc_step_entries) -> GcStep:
    """Plan the deletion of versions no reader at a timestamp >= `horizon` can see.

    For each key, the newest version with ts <= horizon stays (it is what such a reader
    sees); every older one goes. That kept version is a tombstone whose removal is also
    safe only when all older versions go in the same batch, so a tombstone is dropped only
    when its key was examined whole in this step. Examines about `entries_max` versions,
    resuming at user key `start`.
    """
    assert entries_max > 0
    lo, hi = range_bounds(start, None)
    ops: list[tuple[int, bytes, bytes]] = []
    examined = 0
    key: bytes | None = None
    kept: Version | None = None  # the newest version <= horizon of the current key
    older: list[bytes] = []

    def finish(whole: bool) -> None:
        if kept is not None and kept.value is None and whole:
            ops.append((KIND_DELETE, kept.engine_key, b""))
        ops.extend((KIND_DELETE, k, b"") for k in older)

    for engine_key, engine_value in reader.scan(lo, hi):
        version = decode_version(engine_key, engine_value)
        if version.key != key:
            if key is not None:
                finish(whole=True)
                if examined >= entries_max:
                    return GcStep(ops, examined, version.key)
            key, kept, older = version.key, None, []
        examined += 1
        if version.ts > horizon:
            continue
        if kept is None:
            kept = version
        else:
            older.append(engine_key)
        if examined >= entries_max + limits.mvcc_gc_step_entries:
            # One huge key: drop what is older than `kept` now, keep the rest for later.
            finish(whole=False)
            return GcStep(ops, examined, version.key)
    if key is not None:
        finish(whole=True)
    return GcStep(ops, examined, None)

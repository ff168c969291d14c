"""The requests of the key-value state machine and their log-entry encoding.

Typed requests (`Get`, `Set`, ..., and the interactive-transaction requests `TxnStart`,
`TxnStep`, `TxnCommit`) come from `keeldb.server.commands` (RESP) or any other front end; a
`Batch` of them is one log entry (`encode_batch`/`decode_batch`, msgpack) and `Applied` is its
outcome. `KvStateMachine` (`keeldb.node.kvstate`, which re-exports every name here) executes
them; `keeldb.node.kvtxn` holds the transaction rules. SCAN cursors are encoded here too, as
the client decodes them.

The values are slotted, non-frozen dataclasses with value equality and hashing (a frozen
dataclass's `__init__` costs ~2 us for a SET, paid on every replica per applied entry): treat
them as immutable, nobody may change one after building it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import msgpack

from keeldb.codec.resp import Reply

# Expiry modes of Set and Expire: a duration from the batch's now_ms, or an absolute time.
EXPIRE_NONE, EXPIRE_IN_MS, EXPIRE_AT_MS = 0, 1, 2


# --- requests --------------------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Get:
    key: bytes


@dataclass(slots=True, unsafe_hash=True)
class Set:
    key: bytes
    value: bytes
    nx: bool = False
    xx: bool = False
    get: bool = False
    keepttl: bool = False
    expire_mode: int = EXPIRE_NONE
    expire_ms: int = 0


@dataclass(slots=True, unsafe_hash=True)
class Del:
    keys: tuple[bytes, ...]


@dataclass(slots=True, unsafe_hash=True)
class Exists:
    keys: tuple[bytes, ...]


@dataclass(slots=True, unsafe_hash=True)
class MGet:
    keys: tuple[bytes, ...]


@dataclass(slots=True, unsafe_hash=True)
class MSet:
    pairs: tuple[bytes, ...]  # key, value, key, value, ...


@dataclass(slots=True, unsafe_hash=True)
class IncrBy:
    key: bytes
    delta: int


@dataclass(slots=True, unsafe_hash=True)
class Append:
    key: bytes
    value: bytes


@dataclass(slots=True, unsafe_hash=True)
class StrLen:
    key: bytes


@dataclass(slots=True, unsafe_hash=True)
class GetDel:
    key: bytes


@dataclass(slots=True, unsafe_hash=True)
class GetSet:
    key: bytes
    value: bytes


@dataclass(slots=True, unsafe_hash=True)
class Scan:
    """One SCAN step: `cursor` is the first key to look at (b"" = the start)."""

    cursor: bytes
    match: bytes | None = None
    count: int = 10


@dataclass(slots=True, unsafe_hash=True)
class Keys:
    pattern: bytes


@dataclass(slots=True, unsafe_hash=True)
class DbSize:
    pass


@dataclass(slots=True, unsafe_hash=True)
class Ttl:
    key: bytes
    ms: bool = False


@dataclass(slots=True, unsafe_hash=True)
class Expire:
    key: bytes
    mode: int  # EXPIRE_IN_MS or EXPIRE_AT_MS
    when_ms: int
    nx: bool = False
    xx: bool = False
    gt: bool = False
    lt: bool = False
    command: str = "expire"  # named in the "invalid expire time" error


@dataclass(slots=True, unsafe_hash=True)
class Persist:
    key: bytes


@dataclass(slots=True, unsafe_hash=True)
class Watch:
    """Read the WATCH tokens of keys; the reply is a list of [version, live] per key."""

    keys: tuple[bytes, ...]


@dataclass(slots=True, unsafe_hash=True)
class Sweep:
    """Delete up to `count` expired records from the sweep cursor on (the leader proposes
    these periodically, as Redis's active expiry cycle); the reply is how many went."""

    count: int


TxnWrite = tuple[bytes, bytes | None, int]  # key, payload (None = deleted), expire_at_ms
TxnToken = tuple[bytes, int, bool]  # key, version, live: what a transaction read
TxnRange = tuple[bytes, bytes | None]  # scanned keys start <= key < end (None = no end)


@dataclass(slots=True, unsafe_hash=True)
class TxnStart:
    """Start an interactive transaction (read-only): the reply is [version S, now_ms]."""


@dataclass(slots=True, unsafe_hash=True)
class TxnStep:
    """A dry run of one ordinary request inside a transaction (read-only; see kvtxn)."""

    start: int  # the snapshot version S
    started_ms: int  # log time of TxnStart (the age limit counts from it)
    isolation: str
    overlay: tuple[TxnWrite, ...]  # the transaction's own writes the request may see
    request: Request


@dataclass(slots=True, unsafe_hash=True)
class TxnCommit:
    """Commit a transaction (a write: one log entry), validated at apply (see kvtxn)."""

    start: int
    started_ms: int
    isolation: str
    writes: tuple[TxnWrite, ...]
    reads: tuple[TxnToken, ...] = ()
    ranges: tuple[TxnRange, ...] = ()


Request = (Get | Set | Del | Exists | MGet | MSet | IncrBy | Append | StrLen | GetDel | GetSet
           | Scan | Keys | DbSize | Ttl | Expire | Persist | Watch | Sweep | TxnStart | TxnStep
           | TxnCommit)
READ_ONLY: tuple[type, ...] = (Get, Exists, MGet, StrLen, Scan, Keys, DbSize, Ttl, Watch,
                               TxnStart, TxnStep)
_TAGS: dict[type, int] = {cls: i for i, cls in enumerate(
    (Get, Set, Del, Exists, MGet, MSet, IncrBy, Append, StrLen, GetDel, GetSet, Scan, Keys,
     DbSize, Ttl, Expire, Persist, Watch, Sweep, TxnStart, TxnStep, TxnCommit))}
_CLASSES = {i: cls for cls, i in _TAGS.items()}
REQUEST_TYPES: tuple[type, ...] = tuple(_TAGS)  # every request type, in tag order


@dataclass(slots=True, unsafe_hash=True)
class WatchToken:
    key: bytes
    version: int
    live: bool


@dataclass(slots=True, unsafe_hash=True)
class Batch:
    """Requests applied atomically; `watches` abort the batch when any key changed since;
    `session` = (client id, seq) makes a retried batch apply once."""

    requests: tuple[Request, ...]
    watches: tuple[WatchToken, ...] = ()
    session: tuple[int, int] | None = None

    @property
    def read_only(self) -> bool:
        requests = self.requests
        if len(requests) == 1:  # the common case, without a generator
            return isinstance(requests[0], READ_ONLY)
        return all(isinstance(r, READ_ONLY) for r in requests)


@dataclass(slots=True, unsafe_hash=True)
class Applied:
    """The outcome of a batch: one reply per request; `aborted` when a WATCH conflicted
    (nothing applied); `duplicate` when the session had already applied it (the first
    replies are repeated)."""

    replies: tuple[Reply, ...]
    aborted: bool = False
    duplicate: bool = False


def is_read_only(request: Request) -> bool:
    return isinstance(request, READ_ONLY)


# --- log entry encoding ----------------------------------------------------------------------


def _field_getter(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """A C-speed getter of a request's fields as a tuple (what astuple gives for these flat
    classes, without its recursive deep copy: ~8% of a leader's CPU per SET before)."""
    names = tuple(f.name for f in fields(cls))
    if not names:
        return lambda r: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda r: (one(r),)
    return attrgetter(*names)


_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {
    cls: _field_getter(cls) for cls in _TAGS}


def _encode_request(r: Request) -> list[Any]:
    cls = type(r)
    if cls is TxnStep:
        assert isinstance(r, TxnStep)
        return [_TAGS[TxnStep], r.start, r.started_ms, r.isolation, [list(w) for w in r.overlay],
                _encode_request(r.request)]
    if cls is TxnCommit:
        assert isinstance(r, TxnCommit)
        return [_TAGS[TxnCommit], r.start, r.started_ms, r.isolation,
                [list(w) for w in r.writes], [list(t) for t in r.reads],
                [list(g) for g in r.ranges]]
    return [_TAGS[cls], *_GETTERS[cls](r)]


# Request types whose fields are all scalars: decoded without the list -> tuple pass.
_SCALAR_CLASSES: frozenset[type] = frozenset(
    cls for cls in _TAGS if not any("tuple" in str(f.type) or f.type == "Request"
                                    for f in fields(cls)))


def _decode_request(item: list[Any] | tuple[Any, ...]) -> Request:
    cls = _CLASSES[item[0]]
    if cls in _SCALAR_CLASSES:  # the common case (GET, SET): no per-field checks
        scalar: Request = cls(*item[1:])
        return scalar
    tag, *fields_ = item
    if cls is TxnStep:
        start, started, iso, overlay, inner = fields_
        return TxnStep(start, started, iso, tuple((k, p, e) for k, p, e in overlay),
                       _decode_request(inner))
    if cls is TxnCommit:
        start, started, iso, writes, reads, ranges = fields_
        return TxnCommit(start, started, iso, tuple((k, p, e) for k, p, e in writes),
                         tuple((k, v, bool(lv)) for k, v, lv in reads),
                         tuple((lo, hi) for lo, hi in ranges))
    request: Request = cls(*[tuple(f) if isinstance(f, list) else f for f in fields_])
    return request


def batch_to_plain(batch: Batch) -> list[Any]:
    """A batch as msgpack-ready data (`batch_from_plain` reverses it); `encode_batch` packs
    it alone, a Raft command packs it inside its own array (one pack per entry, not two)."""
    reqs = [_encode_request(r) for r in batch.requests]
    watches = [[w.key, w.version, w.live] for w in batch.watches] if batch.watches else []
    return [1, reqs, watches, list(batch.session) if batch.session else None]


def batch_from_plain(plain: list[Any] | tuple[Any, ...]) -> Batch:
    fmt, reqs, watches, session = plain
    assert fmt == 1, f"batch format {fmt} is unknown to this build"
    if len(reqs) == 1 and not watches and not session:  # one plain request: no list passes
        return Batch((_decode_request(reqs[0]),))
    return Batch(tuple([_decode_request(item) for item in reqs]),
                 tuple([WatchToken(k, v, lv) for k, v, lv in watches]) if watches else (),
                 (session[0], session[1]) if session else None)


def encode_batch(batch: Batch) -> bytes:
    """A batch as msgpack bytes for a log entry (decode with `decode_batch`)."""
    return msgpack.packb(batch_to_plain(batch), use_bin_type=True)


def decode_batch(data: bytes) -> Batch:
    return batch_from_plain(msgpack.unpackb(data, raw=False, use_list=True))


# --- SCAN cursors ----------------------------------------------------------------------------


CURSOR_KEY_BYTES_MAX = 1024  # cursor keys are cut here to stay within int()'s 4300 digits


def encode_cursor(key: bytes | None) -> bytes:
    """A SCAN cursor for the next key: "0" when done, else b"\\x01" + key as a decimal integer.

    Cursors are stateless (any node, any connection can continue a scan). A key longer than
    CURSOR_KEY_BYTES_MAX is cut, which only repeats keys, as SCAN allows."""
    if key is None:
        return b"0"
    return b"%d" % int.from_bytes(b"\x01" + key[:CURSOR_KEY_BYTES_MAX], "big")


def decode_cursor(text: bytes) -> bytes | None:
    """The key a cursor stands for (b"" = the start), or None when `text` is not a cursor."""
    if text == b"0":
        return b""
    if not text.isdigit() or text[:1] == b"0" or len(text) > 4000:
        return None
    value = int(text)
    if value == 0:
        return b""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return raw[1:] if raw[:1] == b"\x01" else None

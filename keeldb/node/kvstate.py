"""The Redis-compatible key-value state machine a node applies committed commands with.

Deterministic: every decision depends only on the engine contents, the batch and the time
carried in it (`now_ms`, the leader's log time), never on a local clock, so every replica that
applies the same log reaches the same state. The typed requests (`Get`, `Set`, ...), `Batch`,
`Applied` and the log-entry encoding (`encode_batch`/`decode_batch`) are defined in
`keeldb.node.kvrequests` and re-exported here.

Engine layout (every key starts with a one-byte space tag, so user keys never meet metadata):

    b"k" + key       user value: struct ">BQQ" (format 1, version, expire_at_ms; 0 = none),
                     then the value bytes (VALUE_HEADER_BYTES = 17 bytes of header)
    b"t" + key       tombstone: the version at which a deleted key was deleted (u64 big-endian)
    b"s" + id(u64)   client session: msgpack [last seq, last-used version, packed reply]
    b"m"             metadata: msgpack {"version", "applied", "floor", "count", "sweep"}

Every applied batch is one engine write (data, tombstones, sessions and metadata together),
so a crash never separates a value from its version or a reply from its dedup entry. Between
`begin_group` and `end_group` the writes of several batches are deferred and become ONE engine
write (a server's apply group, a Raft node's entries of one loop turn): reads see the deferred
writes, and every engine write still holds whole batches, so the store is always the state after
some applied batch.

Versions. `version` counts applied batches; a write stamps its key with it. WATCH records a
token (version, live) per key, and EXEC conflicts when a token changed: a write, a delete, or
an expiry in between. Deleted keys keep their version as a tombstone (at most
`limits.kv_tombstones_max`, oldest evicted first; an evicted version raises `floor`, the
version every absent key without a tombstone reports, so eviction can only cause a spurious
conflict, never a missed one).

Transactions. `TxnStart` (read-only: the version S), `TxnStep` (read-only: a dry run of one
request over the transaction's own writes) and `TxnCommit` (one entry, validated at apply
against S) are executed by `keeldb.node.kvtxn`, which explains the rules.

Sessions. A batch may carry (client id, seq). The reply of each client's last seq is kept
(at most `limits.kv_sessions_max` clients, least recently used evicted), so a retried write
applies exactly once and gets its first reply back.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import crc32c
import msgpack
from sortedcontainers import SortedList

from keeldb import limits
from keeldb.codec.resp import (
    INT64_MAX,
    INT64_MIN,
    NULL_ARRAY,
    OK,
    ErrorReply,
    Reply,
    SimpleString,
    parse_int64,
)
from keeldb.errors import LimitExceededError, StateRestoreError
from keeldb.node.kvrequests import (  # noqa: F401  (re-exported: kvstate.Get, .TxnStart, ...)
    CURSOR_KEY_BYTES_MAX,
    EXPIRE_AT_MS,
    EXPIRE_IN_MS,
    EXPIRE_NONE,
    READ_ONLY,
    REQUEST_TYPES,
    Append,
    Applied,
    Batch,
    DbSize,
    Del,
    Exists,
    Expire,
    Get,
    GetDel,
    GetSet,
    IncrBy,
    Keys,
    MGet,
    MSet,
    Persist,
    Request,
    Scan,
    Set,
    StrLen,
    Sweep,
    Ttl,
    TxnCommit,
    TxnRange,
    TxnStart,
    TxnStep,
    TxnToken,
    TxnWrite,
    Watch,
    WatchToken,
    batch_from_plain,
    batch_to_plain,
    decode_batch,
    decode_cursor,
    encode_batch,
    encode_cursor,
    is_read_only,
)
from keeldb.storage.engine import KIND_DELETE, KIND_PUT, Engine, Snapshot

VALUE_FORMAT = 1
_VALUE_HEADER = struct.Struct(">BQQ")
VALUE_HEADER_BYTES = _VALUE_HEADER.size
KEY_BYTES_MAX = limits.key_bytes_max - 1  # one byte goes to the space tag
VALUE_BYTES_MAX = limits.value_bytes_max - VALUE_HEADER_BYTES
_DATA, _TOMB, _SESSION, _META = b"k", b"t", b"s", b"m"
_U64 = struct.Struct(">Q")
SNAPSHOT_MAGIC = b"KEELKV1\n"
_SCAN_PAGE = 4096

ERR_NOT_INTEGER = "ERR value is not an integer or out of range"
ERR_OVERFLOW = "ERR increment or decrement would overflow"
ERR_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


# --- value and reply encodings ----------------------------------------------------------------


def encode_value(payload: bytes, version: int, expire_at_ms: int) -> bytes:
    return _VALUE_HEADER.pack(VALUE_FORMAT, version, expire_at_ms) + payload


def decode_value(raw: bytes) -> tuple[bytes, int, int]:
    """(payload, version, expire_at_ms) of a stored value."""
    fmt, version, expire_at = _VALUE_HEADER.unpack_from(raw)
    assert fmt == VALUE_FORMAT, f"stored value format {fmt} is unknown to this build"
    return raw[VALUE_HEADER_BYTES:], version, expire_at


def pack_reply(value: Reply) -> Any:
    """A reply as msgpack-able data (for the session table)."""
    if value is None or isinstance(value, (bytes, int)):
        return value
    if isinstance(value, SimpleString):
        return ["+", value.text]
    if isinstance(value, ErrorReply):
        return ["-", value.text]
    if isinstance(value, (list, tuple)):
        return ["*", [pack_reply(v) for v in value]]
    assert value is NULL_ARRAY, f"cannot pack a reply of type {type(value).__name__}"
    return ["_"]


def unpack_reply(data: Any) -> Reply:
    if not isinstance(data, list):
        return data
    tag = data[0]
    if tag == "+":
        return OK if data[1] == "OK" else SimpleString(data[1])
    if tag == "-":
        return ErrorReply(data[1])
    if tag == "*":
        return [unpack_reply(v) for v in data[1]]
    assert tag == "_", f"unknown packed reply tag {tag!r}"
    return NULL_ARRAY


# --- glob patterns (Redis stringmatch) ----------------------------------------------------------


@lru_cache(maxsize=256)
def compile_glob(pattern: bytes) -> re.Pattern[bytes]:
    """Redis's glob: * ? [abc] [^a-z] and backslash escapes, as a regex."""
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            out += b".*"
        elif c == b"?":
            out += b"."
        elif c == b"\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i:i + 1])
        elif c == b"[":
            i += 1
            negate = i < n and pattern[i:i + 1] == b"^"
            i += negate
            parts = bytearray()
            while i < n and pattern[i:i + 1] != b"]":
                if pattern[i:i + 1] == b"\\" and i + 1 < n:
                    i += 1
                    parts += re.escape(pattern[i:i + 1])
                elif i + 2 < n and pattern[i + 1:i + 2] == b"-" and pattern[i + 2:i + 3] != b"]":
                    lo, hi = sorted((pattern[i], pattern[i + 2]))
                    parts += b"\\x%02x-\\x%02x" % (lo, hi)
                    i += 2
                else:
                    parts += re.escape(pattern[i:i + 1])
                i += 1
            out += b"[" + (b"^" if negate else b"") + bytes(parts) + b"]" if parts else (
                b"(?!)" if not negate else b".")
        else:
            out += re.escape(c)
        i += 1
    return re.compile(bytes(out), re.DOTALL)


def glob_match(pattern: bytes, key: bytes) -> bool:
    return pattern == b"*" or compile_glob(pattern).fullmatch(key) is not None


# --- the state machine -----------------------------------------------------------------------------


class _Ctx:
    """One batch in progress: an overlay of changed records, applied as one engine write."""

    def __init__(self, sm: KvStateMachine, now_ms: int, version: int) -> None:
        self.sm = sm
        self.now = now_ms
        self.version = version
        self.overlay: dict[bytes, bytes | None] = {}
        self.cache: dict[bytes, bytes | None] = {}  # engine reads of this batch
        self.tombs: dict[bytes, int | None] = {}  # key -> tombstone version, None = drop it
        self.count_delta = 0
        self.sweep: bytes | None = None

    def record(self, key: bytes) -> tuple[bytes, int, int] | None:
        if key in self.overlay:
            raw = self.overlay[key]
        elif key in self.cache:
            raw = self.cache[key]
        else:
            raw = self.cache[key] = self.sm.store_get(_DATA + key)
        return None if raw is None else decode_value(raw)

    def live(self, key: bytes) -> tuple[bytes, int, int] | None:
        rec = self.record(key)
        if rec is None or (rec[2] and rec[2] <= self.now):
            return None
        return rec

    def token(self, key: bytes) -> tuple[int, bool]:
        rec = self.record(key)
        if rec is not None:
            return rec[1], not rec[2] or rec[2] > self.now
        tomb = self.tombs.get(key)
        if tomb is not None:
            return tomb, False
        return self.sm._tomb_versions.get(key, self.sm.floor), False

    def put(self, key: bytes, payload: bytes, expire_at: int) -> None:
        if self.record(key) is None:
            self.count_delta += 1
        if key in self.tombs or key in self.sm._tomb_versions:
            self.tombs[key] = None
        self.overlay[key] = encode_value(payload, self.version, expire_at)

    def delete(self, key: bytes) -> bool:
        """Remove a record; True when it was live. An expired record keeps its version."""
        rec = self.record(key)
        if rec is None:
            return False
        live = not rec[2] or rec[2] > self.now
        self.overlay[key] = None
        self.count_delta -= 1
        self.tombs[key] = self.version if live else rec[1]
        return live

    def scan(self, start: bytes, limit: int) -> list[tuple[bytes, bytes, int, int]]:
        """Up to `limit` records (expired ones too) with key >= start: (key, payload, v, exp)."""
        engine_rows = self.sm.store_scan(_DATA + start, _DATA[:-1] + bytes([_DATA[-1] + 1]),
                                         limit=limit + len(self.overlay))
        merged: dict[bytes, bytes | None] = {k[1:]: v for k, v in engine_rows}
        merged.update((k, v) for k, v in self.overlay.items() if k >= start)
        out = []
        for key in sorted(merged):
            raw = merged[key]
            if raw is None:
                continue
            payload, version, expire = decode_value(raw)
            out.append((key, payload, version, expire))
            if len(out) >= limit:
                break
        return out


class KvStateMachine:
    """Executes batches of requests against an engine it owns (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Deferred engine ops of the group in progress (engine key -> (kind, value)); None =
        # not grouping: every batch is written at once.
        self._pending: dict[bytes, tuple[int, bytes]] | None = None
        self._pending_bytes = 0
        self._pending_meta: dict[str, Any] | None = None  # packed once, when the group writes
        self.group_lost = False  # a write of this group failed: its batches did not apply
        self._load()

    # --- grouped writes ---------------------------------------------------------------------

    @property
    def grouping(self) -> bool:
        return self._pending is not None

    def begin_group(self) -> None:
        """Defer engine writes until `end_group` (see the module docstring)."""
        assert self._pending is None, "begin_group inside a group"
        self._pending, self._pending_bytes, self.group_lost = {}, 0, False

    def end_group(self) -> None:
        """Write the group's deferred ops as one engine write and stop deferring. If that
        write fails, memory goes back to what the engine holds (`group_lost`) and it raises."""
        assert self._pending is not None, "end_group without begin_group"
        try:
            self._flush_pending()
        finally:
            self._pending = None

    def _flush_pending(self) -> None:
        pending, meta = self._pending, self._pending_meta
        if not pending and meta is None:
            return
        ops = [(kind, key, value) for key, (kind, value) in pending.items()] if pending else []
        if meta is not None:
            ops.append((KIND_PUT, _META, msgpack.packb(meta, use_bin_type=True)))
        self._pending, self._pending_bytes, self._pending_meta = {}, 0, None
        try:
            self.engine.write(ops)
        except BaseException:
            self._revert()
            raise

    def _revert(self) -> None:
        """A write failed: drop what is deferred and reload memory from the engine."""
        if self._pending is not None:
            self._pending, self._pending_bytes, self.group_lost = {}, 0, True
        self._pending_meta = None
        self._load()

    def _store_write(self, ops: list[tuple[int, bytes, bytes]]) -> None:
        """One batch's ops: written now, or deferred when grouping."""
        pending = self._pending
        if pending is None:
            self.engine.write(ops)
            return
        size = sum(len(k) + len(v) for _, k, v in ops)
        if (len(pending) + len(ops) > limits.kv_apply_group_ops_max
                or self._pending_bytes + size > limits.kv_apply_group_bytes_max):
            self._flush_pending()  # the earlier batches, whole
            pending = self._pending
            assert pending is not None
        for kind, key, value in ops:
            pending[key] = (kind, value)
        self._pending_bytes += size

    def store_get(self, key: bytes) -> bytes | None:
        """The engine's value of `key`, deferred writes included."""
        pending = self._pending
        if pending:
            hit = pending.get(key)
            if hit is not None:
                return None if hit[0] == KIND_DELETE else hit[1]
        return self.engine.get(key)

    def store_scan(self, start: bytes, end: bytes, *, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` engine pairs with start <= key < end, deferred writes included."""
        pending = self._pending
        extra = [(k, op) for k, op in pending.items() if start <= k < end] if pending else []
        if not extra:
            return list(self.engine.scan(start, end, limit=limit))
        # Deferred deletes hide at most len(extra) engine rows: fetch that many more, so the
        # first `limit` merged rows are all at or below the last row fetched.
        rows = dict(self.engine.scan(start, end, limit=limit + len(extra)))
        for key, (kind, value) in extra:
            if kind == KIND_DELETE:
                rows.pop(key, None)
            else:
                rows[key] = value
        return sorted(rows.items())[:limit]

    # --- state held in memory, rebuilt from the engine ---------------------------------------

    def _load(self) -> None:
        raw = self.engine.get(_META)
        meta = msgpack.unpackb(raw) if raw is not None else {}
        self.version: int = meta.get("version", 0)
        self.applied_index: int = meta.get("applied", 0)
        self.floor: int = meta.get("floor", 0)
        self.key_count: int = meta.get("count", 0)
        self._sweep_cursor: bytes = meta.get("sweep", b"")
        self._tomb_versions: dict[bytes, int] = {}
        self._tomb_order: SortedList = SortedList()
        for k, v in self._prefix(_TOMB):
            (version,) = _U64.unpack(v)
            self._tomb_versions[k] = version
            self._tomb_order.add((version, k))
        self._sessions: dict[int, tuple[int, int, Any]] = {}
        self._session_order: SortedList = SortedList()
        for k, v in self._prefix(_SESSION):
            (cid,) = _U64.unpack(k)
            seq, used, packed = msgpack.unpackb(v, raw=False)
            self._sessions[cid] = (seq, used, packed)
            self._session_order.add((used, cid))

    def _prefix(self, tag: bytes) -> Iterator[tuple[bytes, bytes]]:
        start, end = tag, bytes([tag[0] + 1])
        while True:
            page = self.store_scan(start, end, limit=_SCAN_PAGE)
            for k, v in page:
                yield k[1:], v
            if len(page) < _SCAN_PAGE:
                return
            start = page[-1][0] + b"\x00"

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    @property
    def tombstones(self) -> int:
        return len(self._tomb_versions)

    # --- entry points ------------------------------------------------------------------------

    def read(self, requests: tuple[Request, ...] | list[Request], *, now_ms: int) -> list[Reply]:
        """Execute read-only requests at `now_ms` without changing any state."""
        assert all(isinstance(r, READ_ONLY) for r in requests), "read() takes read-only requests"
        ctx = _Ctx(self, now_ms, self.version)
        return [self._execute(ctx, r) for r in requests]

    def read_batch(self, batch: Batch, *, now_ms: int) -> Applied:
        """Execute a read-only batch (a linearizable read, e.g. after ReadIndex), WATCH
        tokens included; nothing changes, so sessions are not consulted."""
        assert batch.read_only, "read_batch() takes read-only batches; apply() the others"
        ctx = _Ctx(self, now_ms, self.version)
        if any(ctx.token(w.key) != (w.version, w.live) for w in batch.watches):
            return Applied((), aborted=True)
        return Applied(tuple(self._execute(ctx, r) for r in batch.requests))

    def apply(self, batch: Batch, *, index: int, now_ms: int) -> Applied:
        """Apply a committed batch (log index `index`, leader's time `now_ms`) atomically."""
        assert index > self.applied_index, (
            f"log index {index} applied after {self.applied_index}: apply in log order, once")
        assert len(batch.requests) <= limits.kv_batch_requests_max, "batch over its limit"
        ctx = _Ctx(self, now_ms, self.version + 1)
        result = self._session_replay(batch) if batch.session is not None else None
        if result is None:
            if batch.watches and any(ctx.token(w.key) != (w.version, w.live) for w in batch.watches):
                result = Applied((), aborted=True)
            else:
                result = Applied(tuple([_HANDLERS[type(r)](ctx, r) for r in batch.requests]))
        self._commit(ctx, batch, result, index)
        return result

    def _session_replay(self, batch: Batch) -> Applied | None:
        if batch.session is None:
            return None
        cid, seq = batch.session
        entry = self._sessions.get(cid)
        if entry is None or seq > entry[0]:
            return None
        if seq == entry[0]:
            packed = entry[2]
            if packed == ["x"]:
                return Applied((), aborted=True, duplicate=True)
            return Applied(tuple(unpack_reply(packed)), duplicate=True)
        err = ErrorReply(f"ERR session {cid} seq {seq} is older than its last applied seq "
                         f"{entry[0]}; its reply is gone, start a new session")
        return Applied(tuple(err for _ in batch.requests), duplicate=True)

    def _commit(self, ctx: _Ctx, batch: Batch, result: Applied, index: int) -> None:
        """Write the batch's changes as one engine write, then update memory. The in-memory
        indexes change first (to compute evictions); a failed write reloads them."""
        ops: list[tuple[int, bytes, bytes]] = []
        for key, raw in ctx.overlay.items():
            ops.append((KIND_DELETE, _DATA + key, b"") if raw is None else
                       (KIND_PUT, _DATA + key, raw))
        floor = self.floor
        try:
            floor = self._commit_tombstones(ctx, ops)
            if batch.session is not None and not result.duplicate:
                self._commit_session(batch.session, ctx.version, result, ops)
            count = self.key_count + ctx.count_delta
            assert count >= 0, f"key count went negative: {count}"
            sweep = ctx.sweep if ctx.sweep is not None else self._sweep_cursor
            meta = {"version": ctx.version, "applied": index, "floor": floor, "count": count,
                    "sweep": sweep}
            if self._pending is None:
                ops.append((KIND_PUT, _META, msgpack.packb(meta, use_bin_type=True)))
                self._store_write(ops)
            else:  # grouping: only the last batch's metadata is written
                self._store_write(ops)
                self._pending_meta = meta
        except BaseException:
            self._revert()  # the engine write is atomic: memory goes back to what it holds
            raise
        self.version, self.applied_index, self.floor = ctx.version, index, floor
        self.key_count, self._sweep_cursor = count, sweep

    def _commit_tombstones(self, ctx: _Ctx, ops: list[tuple[int, bytes, bytes]]) -> int:
        floor = self.floor
        for key, tomb in ctx.tombs.items():
            old = self._tomb_versions.pop(key, None)
            if old is not None:
                self._tomb_order.remove((old, key))
            if tomb is None:
                ops.append((KIND_DELETE, _TOMB + key, b""))
            else:
                self._tomb_versions[key] = tomb
                self._tomb_order.add((tomb, key))
                ops.append((KIND_PUT, _TOMB + key, _U64.pack(tomb)))
        while len(self._tomb_order) > limits.kv_tombstones_max:
            version, key = self._tomb_order.pop(0)
            del self._tomb_versions[key]
            floor = max(floor, version)
            ops.append((KIND_DELETE, _TOMB + key, b""))
        return floor

    def _commit_session(self, session: tuple[int, int], version: int, result: Applied,
                        ops: list[tuple[int, bytes, bytes]]) -> None:
        cid, seq = session
        if cid in self._sessions:
            self._session_order.remove((self._sessions[cid][1], cid))
        packed = ["x"] if result.aborted else pack_reply(list(result.replies))
        self._sessions[cid] = (seq, version, packed)
        self._session_order.add((version, cid))
        ops.append((KIND_PUT, _SESSION + _U64.pack(cid),
                    msgpack.packb([seq, version, packed], use_bin_type=True)))
        while len(self._session_order) > limits.kv_sessions_max:
            _, old = self._session_order.pop(0)
            del self._sessions[old]
            ops.append((KIND_DELETE, _SESSION + _U64.pack(old), b""))

    # --- snapshots ---------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state (values, tombstones, sessions, metadata) as checksummed bytes."""
        return self.capture()()

    def capture(self) -> Callable[[], bytes]:
        """`snapshot()` in two parts: now, the deferred writes go to the engine and an engine
        snapshot freezes the state (cheap); the returned job scans that snapshot and packs
        the image, on any thread, while batches keep applying here (it reads nothing else
        of this object). The job releases the engine snapshot; call it exactly once."""
        if self._pending is not None:
            self._flush_pending()
        view = self.engine.snapshot()

        def image() -> bytes:
            try:
                return _image(view)
            finally:
                view.close()
        return image

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's (the engine is emptied first)."""
        head = len(SNAPSHOT_MAGIC)
        if data[:head] != SNAPSHOT_MAGIC or len(data) < head + 8:
            raise StateRestoreError("not a keeldb KV snapshot (bad magic); send a snapshot "
                                    "made by KvStateMachine.snapshot()")
        (crc,) = _U64.unpack_from(data, head)
        body = data[head + 8:]
        if crc32c.crc32c(body) != crc:
            raise StateRestoreError(f"KV snapshot checksum mismatch over {len(body)} bytes; "
                                    "the snapshot is corrupt, fetch it again")
        try:
            fmt, pairs = msgpack.unpackb(body, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise StateRestoreError(f"KV snapshot body does not decode: {exc}") from None
        if fmt != 1:
            raise StateRestoreError(f"KV snapshot format {fmt} is unknown to this build")
        if self._pending is not None:
            self._flush_pending()
        old = [tag + k for tag in (_DATA, _META, _SESSION, _TOMB) for k, _ in self._prefix(tag)]
        self._write_chunked([(KIND_DELETE, k, b"") for k in old])
        self._write_chunked([(KIND_PUT, k, v) for k, v in pairs])
        self._load()

    def _write_chunked(self, ops: list[tuple[int, bytes, bytes]]) -> None:
        chunk: list[tuple[int, bytes, bytes]] = []
        size = 0
        for op in ops:
            if chunk and (len(chunk) >= limits.batch_ops_max
                          or size + len(op[1]) + len(op[2]) > limits.batch_bytes_max // 2):
                self.engine.write(chunk)
                chunk, size = [], 0
            chunk.append(op)
            size += len(op[1]) + len(op[2])
        if chunk:
            self.engine.write(chunk)

    # --- commands ------------------------------------------------------------------------------

    def _execute(self, ctx: _Ctx, req: Request) -> Reply:
        handler = _HANDLERS[type(req)]
        return handler(ctx, req)


def _image(view: Snapshot) -> bytes:
    """The snapshot image of the state an engine snapshot holds (see `capture`)."""
    pairs = []
    total = 0
    for tag in (_DATA, _META, _SESSION, _TOMB):
        start, end = tag, bytes([tag[0] + 1])
        while True:  # in pages: a scan's limit is bounded (scan_limit_max)
            page = list(view.scan(start, end, limit=_SCAN_PAGE))
            pairs += page
            total += sum(len(k) + len(v) for k, v in page)
            if total > limits.raft_snapshot_bytes_max:
                raise LimitExceededError(
                    f"KV state of over {total} bytes is over raft_snapshot_bytes_max="
                    f"{limits.raft_snapshot_bytes_max}; shard the key space")
            if len(page) < _SCAN_PAGE:
                break
            start = page[-1][0] + b"\x00"
    body = msgpack.packb([1, pairs], use_bin_type=True)
    return SNAPSHOT_MAGIC + _U64.pack(crc32c.crc32c(body)) + body


def _key_error(key: bytes) -> ErrorReply | None:
    if len(key) > KEY_BYTES_MAX:
        return ErrorReply(f"ERR key of {len(key)} bytes is over the limit of {KEY_BYTES_MAX} "
                          "bytes; use a shorter key")
    return None


def _value_error(size: int) -> ErrorReply | None:
    if size > VALUE_BYTES_MAX:
        return ErrorReply(f"ERR string exceeds maximum allowed size ({size} bytes, limit "
                          f"{VALUE_BYTES_MAX}); split the value over several keys")
    return None


def _expire_at(ctx: _Ctx, mode: int, value: int, command: str) -> int | ErrorReply:
    if mode == EXPIRE_IN_MS:
        if value > INT64_MAX - ctx.now:
            return ErrorReply(f"ERR invalid expire time in '{command}' command")
        return ctx.now + value
    return value


def _h_get(ctx: _Ctx, req: Get) -> Reply:
    rec = ctx.live(req.key)
    return None if rec is None else rec[0]


def _h_set(ctx: _Ctx, req: Set) -> Reply:
    err = _key_error(req.key) or _value_error(len(req.value))
    if err:
        return err
    expire_at = 0
    if req.expire_mode != EXPIRE_NONE:
        at = _expire_at(ctx, req.expire_mode, req.expire_ms, "set")
        if isinstance(at, ErrorReply):
            return at
        expire_at = at
    old = ctx.live(req.key)
    reply: Reply = (None if old is None else old[0]) if req.get else OK
    if (req.nx and old is not None) or (req.xx and old is None):
        return reply if req.get else None
    if req.keepttl and old is not None:
        expire_at = old[2]
    if expire_at and expire_at <= ctx.now:
        ctx.delete(req.key)  # an expiry already in the past: Redis deletes the key at once
    else:
        ctx.put(req.key, req.value, expire_at)
    return reply


def _h_del(ctx: _Ctx, req: Del) -> Reply:
    return sum(ctx.delete(k) for k in req.keys)


def _h_exists(ctx: _Ctx, req: Exists) -> Reply:
    return sum(ctx.live(k) is not None for k in req.keys)


def _h_mget(ctx: _Ctx, req: MGet) -> Reply:
    return [None if (rec := ctx.live(k)) is None else rec[0] for k in req.keys]


def _h_mset(ctx: _Ctx, req: MSet) -> Reply:
    assert len(req.pairs) % 2 == 0, "MSet takes key, value pairs"
    for i in range(0, len(req.pairs), 2):
        err = _key_error(req.pairs[i]) or _value_error(len(req.pairs[i + 1]))
        if err:
            return err
    for i in range(0, len(req.pairs), 2):
        ctx.put(req.pairs[i], req.pairs[i + 1], 0)
    return OK


def _h_incrby(ctx: _Ctx, req: IncrBy) -> Reply:
    err = _key_error(req.key)
    if err:
        return err
    rec = ctx.live(req.key)
    current = 0
    if rec is not None:
        parsed = parse_int64(rec[0])
        if parsed is None:
            return ErrorReply(ERR_NOT_INTEGER)
        current = parsed
    value = current + req.delta
    if not INT64_MIN <= value <= INT64_MAX:
        return ErrorReply(ERR_OVERFLOW)
    ctx.put(req.key, b"%d" % value, rec[2] if rec is not None else 0)  # INCR keeps the TTL
    return value


def _h_append(ctx: _Ctx, req: Append) -> Reply:
    rec = ctx.live(req.key)
    payload = req.value if rec is None else rec[0] + req.value
    err = _key_error(req.key) or _value_error(len(payload))
    if err:
        return err
    ctx.put(req.key, payload, 0 if rec is None else rec[2])
    return len(payload)


def _h_strlen(ctx: _Ctx, req: StrLen) -> Reply:
    rec = ctx.live(req.key)
    return 0 if rec is None else len(rec[0])


def _h_getdel(ctx: _Ctx, req: GetDel) -> Reply:
    rec = ctx.live(req.key)
    if rec is None:
        return None
    ctx.delete(req.key)
    return rec[0]


def _h_getset(ctx: _Ctx, req: GetSet) -> Reply:
    err = _key_error(req.key) or _value_error(len(req.value))
    if err:
        return err
    rec = ctx.live(req.key)
    ctx.put(req.key, req.value, 0)
    return None if rec is None else rec[0]


def _h_scan(ctx: _Ctx, req: Scan) -> Reply:
    count = max(1, min(req.count, limits.kv_scan_count_max))
    rows = ctx.scan(req.cursor, count + 1)
    more = rows[count][0] if len(rows) > count else None
    keys = [k for k, _, _, exp in rows[:count] if (not exp or exp > ctx.now)
            and (req.match is None or glob_match(req.match, k))]
    return [encode_cursor(more), keys]


def _h_keys(ctx: _Ctx, req: Keys) -> Reply:
    out: list[bytes] = []
    start = b""
    while True:
        rows = ctx.scan(start, _SCAN_PAGE)
        for key, _, _, exp in rows:
            if (not exp or exp > ctx.now) and glob_match(req.pattern, key):
                out.append(key)
                if len(out) > limits.kv_keys_reply_max:
                    return ErrorReply(f"ERR KEYS would return over kv_keys_reply_max="
                                      f"{limits.kv_keys_reply_max} keys; use SCAN")
        if len(rows) < _SCAN_PAGE:
            return out
        start = rows[-1][0] + b"\x00"


def _h_dbsize(ctx: _Ctx, req: DbSize) -> Reply:
    return ctx.sm.key_count + ctx.count_delta


def _h_ttl(ctx: _Ctx, req: Ttl) -> Reply:
    rec = ctx.live(req.key)
    if rec is None:
        return -2
    if not rec[2]:
        return -1
    left = rec[2] - ctx.now
    return left if req.ms else (left + 500) // 1000


def _h_expire(ctx: _Ctx, req: Expire) -> Reply:
    at = _expire_at(ctx, req.mode, req.when_ms, req.command)
    if isinstance(at, ErrorReply):
        return at
    rec = ctx.live(req.key)
    if rec is None:
        return 0
    current = rec[2]
    if ((req.nx and current) or (req.xx and not current)
            or (req.gt and (not current or at <= current))
            or (req.lt and current and at >= current)):
        return 0
    if at <= ctx.now:
        ctx.delete(req.key)
    else:
        ctx.put(req.key, rec[0], at)
    return 1


def _h_persist(ctx: _Ctx, req: Persist) -> Reply:
    rec = ctx.live(req.key)
    if rec is None or not rec[2]:
        return 0
    ctx.put(req.key, rec[0], 0)
    return 1


def _h_watch(ctx: _Ctx, req: Watch) -> Reply:
    return [list(ctx.token(k)) for k in req.keys]


def _h_sweep(ctx: _Ctx, req: Sweep) -> Reply:
    count = max(1, min(req.count, limits.kv_sweep_keys_max))
    rows = ctx.scan(ctx.sm._sweep_cursor, count)
    removed = 0
    for key, _, _, exp in rows:
        if exp and exp <= ctx.now:
            ctx.delete(key)
            removed += 1
    ctx.sweep = rows[-1][0] + b"\x00" if len(rows) == count else b""
    return removed


def _h_txn(ctx: _Ctx, req: TxnStart | TxnStep | TxnCommit) -> Reply:
    from keeldb.node import kvtxn  # kvtxn builds on this module: import it when first used

    return kvtxn.execute(ctx, req)


_HANDLERS: dict[type, Callable[[_Ctx, Any], Reply]] = {
    Get: _h_get, Set: _h_set, Del: _h_del, Exists: _h_exists, MGet: _h_mget, MSet: _h_mset,
    IncrBy: _h_incrby, Append: _h_append, StrLen: _h_strlen, GetDel: _h_getdel,
    GetSet: _h_getset, Scan: _h_scan, Keys: _h_keys, DbSize: _h_dbsize, Ttl: _h_ttl,
    Expire: _h_expire, Persist: _h_persist, Watch: _h_watch, Sweep: _h_sweep,
    TxnStart: _h_txn, TxnStep: _h_txn, TxnCommit: _h_txn,
}
assert set(_HANDLERS) == set(REQUEST_TYPES), "every request type needs a handler"

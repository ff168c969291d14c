"""Interactive transactions over the KV state machine: optimistic, validated in the log.

The state machine keeps one version per key (no MVCC), so a transaction works like this:

    TxnStart                        read-only: S = the state machine's `version` (the snapshot)
    TxnStep(S, level, overlay, r)   read-only dry run of request r over the transaction's own
                                    writes (read-your-writes); returns r's reply, the writes r
                                    made, the tokens of the keys r read and the ranges it
                                    scanned. Nothing is written.
    TxnCommit(S, level, writes, reads, ranges)
                                    a write (one log entry): validated at apply, then the
                                    writes are stamped with the commit's version.

Versions never go back and every write, delete or eviction raises a key's version (or the
tombstone `floor`) past every earlier one, so "the key's version is <= S" means "unchanged
since the snapshot". At `snapshot` and `serializable` a step that reads a record (or the
tombstone of an absent key, or a scanned range's tombstones and `floor`) with a version > S
aborts with TXNCONFLICT: without older versions it cannot show the snapshot's value. This is
stricter than textbook snapshot isolation, never weaker: every read sees the state at S.

Validation at commit (deterministic, at apply, on every replica alike):

- `read_committed`: nothing; steps read the latest committed state.
- `snapshot`: every written key still has version <= S (first committer wins).
- `serializable`: also every read token is unchanged and no record or tombstone in a scanned
  range has a version > S (nor `floor` > S): no phantoms. Reads unchanged from S to the commit
  entry mean the transaction equals running alone at the commit entry, which lies inside its
  real-time interval: strict serializability. A read-only transaction needs no entry: every
  read equals the state at S, read linearizably after the transaction began.

`TxnSession` is the client side as a sans-IO object: the RESP `Connection` and the simulator
use it to build the requests and to absorb the replies.
"""

from __future__ import annotations

from collections.abc import Iterable

from keeldb import limits
from keeldb.codec.resp import OK, ErrorReply, Reply
from keeldb.node import kvstate as kv

READ_COMMITTED, SNAPSHOT, SERIALIZABLE = "read_committed", "snapshot", "serializable"
LEVELS = (READ_COMMITTED, SNAPSHOT, SERIALIZABLE)
CONFLICT = "TXNCONFLICT"  # retryable: the transaction was aborted, run it again
TOO_OLD = "TXNTOOOLD"  # retryable: the transaction lived too long or fell too far behind
TOO_LARGE = "TXNTOOLARGE"  # not retryable as is: the transaction is over a size limit

# Requests a transaction may run; the others read global state (DBSIZE) or are not data.
ALLOWED: tuple[type, ...] = (kv.Get, kv.Set, kv.Del, kv.Exists, kv.MGet, kv.MSet, kv.IncrBy,
                             kv.Append, kv.StrLen, kv.GetDel, kv.GetSet, kv.Scan, kv.Keys,
                             kv.Ttl, kv.Expire, kv.Persist)


class _Conflict(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _show(key: bytes) -> str:
    return repr(key[:64])[2:-1] + ("..." if len(key) > 64 else "")


def conflict_text(what: str, version: int, start: int) -> str:
    return (f"{CONFLICT} {what} changed at version {version}, after the transaction's snapshot "
            f"{start}; retry the transaction")


# --- the state machine side ----------------------------------------------------------------


class _TxnCtx(kv._Ctx):
    """A dry-run context: the transaction's overlay preloaded, store reads checked and
    recorded."""

    def __init__(self, sm: kv.KvStateMachine, now_ms: int, start: int, isolation: str,
                 overlay: Iterable[kv.TxnWrite]) -> None:
        super().__init__(sm, now_ms, sm.version + 1)
        self.start, self.isolation = start, isolation
        for key, payload, expire in overlay:
            self.overlay[key] = None if payload is None else kv.encode_value(
                payload, self.version, expire)
        self.initial = dict(self.overlay)
        self.reads: dict[bytes, tuple[int, bool]] = {}
        self.ranges: list[kv.TxnRange] = []

    def record(self, key: bytes) -> tuple[bytes, int, int] | None:
        first = key not in self.overlay and key not in self.cache
        rec = super().record(key)
        if first:
            if rec is None:
                version, live = self.sm._tomb_versions.get(key, self.sm.floor), False
            else:
                version, live = rec[1], not rec[2] or rec[2] > self.now
            if self.isolation != READ_COMMITTED and version > self.start:
                raise _Conflict(conflict_text(f"key '{_show(key)}'", version, self.start))
            if self.isolation == SERIALIZABLE:
                self.reads[key] = (version, live)
        return rec

    def scan(self, start: bytes, limit: int) -> list[tuple[bytes, bytes, int, int]]:
        rows = super().scan(start, limit)
        if self.isolation == READ_COMMITTED:
            return rows
        for key, _, version, _ in rows:
            if key not in self.overlay and version > self.start:
                raise _Conflict(conflict_text(f"key '{_show(key)}'", version, self.start))
        end = rows[-1][0] + b"\x00" if len(rows) >= limit else None
        err = _tomb_conflict(self.sm, self.start, start, end)
        if err:
            raise _Conflict(err)
        if self.isolation == SERIALIZABLE:
            self.ranges.append((start, end))
        return rows

    def changes(self) -> list[list[object]]:
        out: list[list[object]] = []
        for key, raw in self.overlay.items():
            if key in self.initial and self.initial[key] == raw:
                continue
            if raw is None:
                out.append([key, None, 0])
            else:
                payload, _, expire = kv.decode_value(raw)
                out.append([key, payload, expire])
        return out


def _in_range(key: bytes, lo: bytes, hi: bytes | None) -> bool:
    return lo <= key and (hi is None or key < hi)


def _tomb_conflict(sm: kv.KvStateMachine, start: int, lo: bytes, hi: bytes | None) -> str:
    """A conflict text when a key of [lo, hi) may have been deleted after S, else ""."""
    if sm.floor > start:
        return conflict_text("an evicted tombstone (floor)", sm.floor, start)
    order = sm._tomb_order
    for version, key in order.islice(order.bisect_left((start + 1, b""))):
        if _in_range(key, lo, hi):
            return conflict_text(f"key '{_show(key)}' (deleted)", version, start)
    return ""


def _range_conflict(sm: kv.KvStateMachine, start: int, lo: bytes, hi: bytes | None) -> str:
    err = _tomb_conflict(sm, start, lo, hi)
    if err:
        return err
    data_end = kv._DATA[:-1] + bytes([kv._DATA[-1] + 1])
    cursor = kv._DATA + lo
    end = data_end if hi is None else kv._DATA + hi
    while True:
        page = sm.store_scan(cursor, end, limit=kv._SCAN_PAGE)
        for k, raw in page:
            _, version, _ = kv.decode_value(raw)
            if version > start:
                return conflict_text(f"key '{_show(k[1:])}' in a scanned range", version, start)
        if len(page) < kv._SCAN_PAGE:
            return ""
        cursor = page[-1][0] + b"\x00"


def _age_error(ctx: kv._Ctx, start: int, started_ms: int) -> ErrorReply | None:
    age, behind = ctx.now - started_ms, ctx.sm.version - start
    if age > limits.txn_server_age_ms_max or behind > limits.txn_commits_behind_max:
        return ErrorReply(f"{TOO_OLD} transaction is {age} ms old and {behind} commits behind, "
                          f"over txn_server_age_ms_max={limits.txn_server_age_ms_max} or "
                          f"txn_commits_behind_max={limits.txn_commits_behind_max}; retry it "
                          "and keep transactions short")
    return None


def _level_error(level: str) -> ErrorReply | None:
    if level in LEVELS:
        return None
    return ErrorReply(f"ERR isolation {level!r} is not one of {', '.join(LEVELS)}")


def execute(ctx: kv._Ctx, req: kv.TxnStart | kv.TxnStep | kv.TxnCommit) -> Reply:
    """The state machine's handler of the three transaction requests."""
    if isinstance(req, kv.TxnStart):
        return [ctx.sm.version, ctx.now]
    err = _level_error(req.isolation) or _age_error(ctx, req.start, req.started_ms)
    if err:
        return err
    if isinstance(req, kv.TxnStep):
        return _step(ctx, req)
    return _commit(ctx, req)


def _step(ctx: kv._Ctx, req: kv.TxnStep) -> Reply:
    inner = req.request
    if not isinstance(inner, ALLOWED):
        return ErrorReply(f"ERR {type(inner).__name__.upper()} is not allowed inside TXN; "
                          "run it outside the transaction")
    tctx = _TxnCtx(ctx.sm, ctx.now, req.start, req.isolation, req.overlay)
    try:
        reply = kv._HANDLERS[type(inner)](tctx, inner)
    except _Conflict as exc:
        return ErrorReply(exc.text)
    reads = [[k, v, int(live)] for k, (v, live) in tctx.reads.items()]
    return [reply, tctx.changes(), reads, [[lo, hi] for lo, hi in tctx.ranges]]


def _commit(ctx: kv._Ctx, req: kv.TxnCommit) -> Reply:
    if ctx.overlay or ctx.tombs:
        return ErrorReply("ERR TxnCommit must be the only request of its batch")
    if req.isolation != READ_COMMITTED:
        for key, _, _ in req.writes:
            version = ctx.token(key)[0]
            if version > req.start:
                return ErrorReply(conflict_text(f"written key '{_show(key)}'", version,
                                                req.start))
    if req.isolation == SERIALIZABLE:
        for key, version, live in req.reads:
            now_version, now_live = ctx.token(key)
            if (now_version, now_live) != (version, live):
                return ErrorReply(conflict_text(f"read key '{_show(key)}'", now_version,
                                                req.start))
        for lo, hi in req.ranges:
            err = _range_conflict(ctx.sm, req.start, lo, hi)
            if err:
                return ErrorReply(err)
    for key, payload, expire in req.writes:
        if payload is None or (expire and expire <= ctx.now):
            ctx.delete(key)
        else:
            ctx.put(key, payload, expire)
    return OK


# --- the client side -----------------------------------------------------------------------


def request_keys(req: kv.Request) -> tuple[bytes, ...] | None:
    """The keys a request touches; None when it reads a range (SCAN, KEYS)."""
    if isinstance(req, (kv.Scan, kv.Keys)):
        return None
    if isinstance(req, (kv.Del, kv.Exists, kv.MGet)):
        return req.keys
    if isinstance(req, kv.MSet):
        return req.pairs[0::2]
    key = getattr(req, "key", None)
    return (key,) if isinstance(key, bytes) else ()


class TxnSession:
    """One transaction's client-side state (sans-IO): the snapshot, the write overlay, the
    read set. States: "starting" -> "active" -> "committing" -> "done", or "failed" (a step
    conflicted or crossed a limit: only COMMIT, which repeats the error, and ROLLBACK)."""

    def __init__(self, isolation: str = SERIALIZABLE) -> None:
        assert isolation in LEVELS, isolation
        self.isolation = isolation
        self.state = "starting"
        self.start = 0
        self.started_ms = 0
        self.writes: dict[bytes, tuple[bytes | None, int]] = {}
        self.write_bytes = 0
        self.reads: dict[bytes, tuple[int, bool]] = {}
        self.ranges: list[kv.TxnRange] = []
        self.error: ErrorReply | None = None

    def start_request(self) -> kv.TxnStart:
        return kv.TxnStart()

    def started(self, reply: Reply) -> None:
        assert self.state == "starting", self.state
        assert isinstance(reply, list) and len(reply) == 2, reply
        self.start, self.started_ms = int(reply[0]), int(reply[1])  # type: ignore[arg-type]
        self.state = "active"

    def step_request(self, req: kv.Request) -> kv.TxnStep:
        assert self.state == "active", self.state
        keys = request_keys(req)
        if keys is None:
            overlay = [(k, p, e) for k, (p, e) in self.writes.items()]
        else:
            overlay = [(k, *self.writes[k]) for k in dict.fromkeys(keys) if k in self.writes]
        return kv.TxnStep(self.start, self.started_ms, self.isolation, tuple(overlay), req)

    def absorb(self, reply: Reply) -> Reply:
        """A step's reply: merge its writes and reads; return the command's own reply. A
        conflict or a crossed limit fails the transaction and is returned as the error."""
        assert self.state == "active", self.state
        if isinstance(reply, ErrorReply):
            if reply.text.startswith((CONFLICT, TOO_OLD)):
                self.fail(reply)
            return reply
        assert isinstance(reply, list) and len(reply) == 4, reply
        inner, writes, reads, ranges = reply
        for key, payload, expire in writes:  # type: ignore[union-attr]
            old = self.writes.get(key)
            self.write_bytes += len(key) + len(payload or b"")
            if old is not None:
                self.write_bytes -= len(key) + len(old[0] or b"")
            self.writes[key] = (payload, int(expire))
        for key, version, live in reads:  # type: ignore[union-attr]
            self.reads.setdefault(key, (int(version), bool(live)))
        self.ranges.extend((lo, hi) for lo, hi in ranges)  # type: ignore[union-attr]
        err = self._limit_error()
        if err is not None:
            self.fail(err)
            return err
        return inner

    def _limit_error(self) -> ErrorReply | None:
        tracked = len(self.reads) + len(self.ranges)
        if (len(self.writes) <= limits.txn_server_writes_max
                and self.write_bytes <= limits.txn_server_bytes_max
                and tracked <= limits.txn_server_reads_max):
            return None
        return ErrorReply(
            f"{TOO_LARGE} transaction holds {len(self.writes)} writes of {self.write_bytes} "
            f"bytes and {tracked} reads, over txn_server_writes_max="
            f"{limits.txn_server_writes_max}, txn_server_bytes_max={limits.txn_server_bytes_max}"
            f" or txn_server_reads_max={limits.txn_server_reads_max}; split the work into "
            "smaller transactions")

    def fail(self, error: ErrorReply) -> None:
        self.state, self.error = "failed", error

    def commit_request(self) -> kv.TxnCommit | None:
        """The commit entry, or None when nothing was written (a read-only transaction
        commits at its snapshot without a log entry)."""
        assert self.state == "active", self.state
        self.state = "committing"
        if not self.writes:
            return None
        return kv.TxnCommit(
            self.start, self.started_ms, self.isolation,
            tuple((k, p, e) for k, (p, e) in self.writes.items()),
            tuple((k, v, lv) for k, (v, lv) in self.reads.items()), tuple(self.ranges))

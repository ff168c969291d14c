"""Workloads for the `raft-redis` system, done the Redis way, and how their histories are judged.

Each operation of the history (format: docs/history-format.md) is a *plan*: a generator that
yields `kvstate.Batch`es (what a Redis client would send: a read-only batch is a read, any
other batch is one log entry, MULTI/EXEC included), receives each batch's `kvstate.Applied`
and returns the completion `(type, value)`. The client driver (`keeldb.testing.redis_cluster`)
sends the batches, retries them, and stamps every write batch with a session so a retry
applies once.

- `register`: GET / SET, and cas as WATCH k; GET k; MULTI; SET k new; EXEC. Checked by
  `lost_writes` and linearizability (cas-register model).
- `list-append`: transactions of appends and reads. The reads (and WATCH tokens of every read
  key) come first, in one read batch; the appends follow in one MULTI/EXEC guarded by those
  tokens (APPEND of "e," to a string, so a list is a comma-separated string). An aborted
  EXEC is a `fail`. Checked by `lost_appends` and `keeldb.check.transactions` at
  strict-serializable (WATCH+EXEC validated in the log is serializable for the keys it read,
  and the EXEC takes effect inside the client's invoke/complete window).
- `rw-register`: the same with `w` (SET of a unique value) and `r` micro-ops; checked by
  `keeldb.check.transactions` (rw-register, keys linearizable, writes follow reads).
- `bank`: transfer = WATCH a b; GET a; GET b; MULTI; SET a; SET b; EXEC; read-accounts =
  MGET of every account. Checked by `bank_total` (every read sums to the initial total) and
  no negative balance.
- `write-skew`: each transaction reads both keys of a pair and writes one of them; checked
  as rw-register. It exists to show G2-item at `snapshot` (the checker sees write skew).

Transaction mode (`isolation`): `watch` is the Redis way above. A TXN level
(`read_committed`, `snapshot`, `serializable`; `keeldb.node.kvtxn`) runs each transaction
interactively instead: TxnStart, one TxnStep per command (read-only batches, so ReadIndex),
then TxnCommit as one log entry; a TXNCONFLICT is a `fail`. The histories are then checked
at the level's model (`CHECKED_AS`): serializable as strict-serializable, snapshot as
snapshot-isolation (G0, G1, lost update forbidden; G2-item allowed).
"""

from __future__ import annotations

import random
from collections.abc import Generator, Sequence
from typing import Any, Protocol

from keeldb.check.history import Op
from keeldb.codec.resp import ErrorReply, SimpleString
from keeldb.errors import UsageError
from keeldb.node import kvstate as kv
from keeldb.node import kvtxn
from keeldb.testing import checkers
from keeldb.testing.checkers import Violation
from keeldb.testing.kvstate import BANK_INITIAL
from keeldb.testing.workloads import (
    BankWorkload,
    Command,
    ListAppendWorkload,
    RegisterWorkload,
    random_txn,
)

# A plan yields batches, receives their outcomes, and returns (completion type, value).
Plan = Generator[kv.Batch, kv.Applied, tuple[str, Any]]
STRICT = "strict-serializable"
WATCH = "watch"  # the Redis way: WATCH + GET, then MULTI/EXEC
ISOLATIONS = (WATCH, *kvtxn.LEVELS)  # the others are interactive TXN transactions
# What the transaction checker holds each mode to (Elle's model names).
CHECKED_AS = {WATCH: STRICT, kvtxn.SERIALIZABLE: STRICT, kvtxn.SNAPSHOT: "snapshot-isolation",
              kvtxn.READ_COMMITTED: "read-committed"}


class RedisWorkload(Protocol):
    name: str

    def next_op(self, rng: random.Random) -> Command: ...

    def plan(self, f: str, key: Any, value: Any) -> Plan: ...

    def final_ops(self) -> list[Command]: ...

    def check(self, history: Sequence[Op]) -> list[Violation]: ...


class ReplyError(AssertionError):
    """A reply the workload never expects (an error reply): the state machine misbehaved."""


def _b(key: str) -> bytes:
    return key.encode()


def _int(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, ErrorReply) or not isinstance(raw, bytes):
        raise ReplyError(f"expected a bulk string or nil, got {raw!r}")
    return int(raw)


def _checked(applied: kv.Applied) -> kv.Applied:
    bad = [r for r in applied.replies if isinstance(r, ErrorReply)]
    if bad:
        raise ReplyError(f"error reply {bad[0]!r} in {applied!r}")
    return applied


def _tokens(keys: Sequence[str], reply: Any) -> tuple[kv.WatchToken, ...]:
    """WatchTokens from the reply of `Watch(keys)`: [[version, live], ...]."""
    assert isinstance(reply, list) and len(reply) == len(keys), reply
    return tuple(kv.WatchToken(_b(k), int(v), bool(live)) for k, (v, live) in zip(keys, reply, strict=True))


def _read_phase(keys: Sequence[str]) -> kv.Batch:
    """WATCH the keys and GET them, in one read-only batch (one consistent state)."""
    bkeys = tuple(_b(k) for k in keys)
    return kv.Batch((kv.Watch(bkeys), *(kv.Get(k) for k in bkeys)))


# --- interactive TXN steps (sub-plans for `yield from`) ---------------------------------------

Step = Generator[kv.Batch, kv.Applied, Any]


def _txn_begin(sess: kvtxn.TxnSession) -> Step:
    """TxnStart: a read-only batch (ReadIndex), its reply the snapshot version S."""
    sess.started(_checked((yield kv.Batch((sess.start_request(),)))).replies[0])


def _txn_step(sess: kvtxn.TxnSession, req: kv.Request) -> Step:
    """One request inside the transaction; None when it conflicted (the txn failed)."""
    got = yield kv.Batch((sess.step_request(req),))
    inner = sess.absorb(got.replies[0])
    if sess.state == "failed":
        return None
    if isinstance(inner, ErrorReply):
        raise ReplyError(f"error reply {inner!r} to the TXN step {req!r}")
    return inner


def _txn_commit(sess: kvtxn.TxnSession) -> Step:
    """TxnCommit as one log entry (none for a read-only txn); False when it conflicted."""
    commit = sess.commit_request()
    if commit is None:
        return True  # read-only: it committed at its snapshot
    reply = (yield kv.Batch((commit,))).replies[0]
    if isinstance(reply, ErrorReply) and reply.text.startswith((kvtxn.CONFLICT,
                                                                 kvtxn.TOO_OLD)):
        return False
    if not isinstance(reply, SimpleString):
        raise ReplyError(f"TXN commit answered {reply!r}")
    return True


class _Mode:
    """The transaction mode of a workload: `watch` (WATCH/MULTI/EXEC) or a TXN level."""

    isolation = WATCH

    def set_isolation(self, isolation: str) -> None:
        if isolation not in ISOLATIONS:
            raise UsageError(f"unknown isolation {isolation!r}; known: {', '.join(ISOLATIONS)}")
        self.isolation = isolation

    def txn(self, micro: list[list[Any]], encode: Any, decode: Any, write_request: Any) -> Plan:
        if self.isolation == WATCH:
            return _txn_plan(micro, encode, decode, write_request)
        return _interactive(self.isolation, micro, encode, decode, write_request)


class RedisRegister(_Mode, RegisterWorkload):
    """`register` on the Redis state machine (generation and checks of `RegisterWorkload`);
    cas is WATCH/GET/MULTI/SET/EXEC, or a TXN of GET then SET at a TXN level."""

    def plan(self, f: str, key: Any, value: Any) -> Plan:
        if f == "cas" and self.isolation != WATCH:
            return self._txn_cas(key, value)
        return self._plan(f, key, value)

    def _txn_cas(self, key: str, value: list[Any]) -> Plan:
        old, new = value
        sess = kvtxn.TxnSession(self.isolation)
        yield from _txn_begin(sess)
        current = yield from _txn_step(sess, kv.Get(_b(key)))
        if sess.state == "failed" or _int(current) != old:
            return "fail", value
        if (yield from _txn_step(sess, kv.Set(_b(key), b"%d" % new))) is None:
            return "fail", value
        return ("ok" if (yield from _txn_commit(sess)) else "fail"), value

    def _plan(self, f: str, key: Any, value: Any) -> Plan:
        k = _b(key)
        if f == "read":
            got = yield kv.Batch((kv.Get(k),))
            return "ok", _int(_checked(got).replies[0])
        if f == "write":
            got = yield kv.Batch((kv.Set(k, b"%d" % value),))
            _checked(got)
            return "ok", value
        assert f == "cas", f
        old, new = value
        got = yield _read_phase([key])
        tokens, current = _tokens([key], got.replies[0]), _int(got.replies[1])
        if current != old:
            return "fail", value  # nothing sent: the key held another value
        done = yield kv.Batch((kv.Set(k, b"%d" % new),), watches=tokens)
        if done.aborted:
            return "fail", value  # the key changed after the WATCH: EXEC ran nothing
        _checked(done)
        return "ok", value


def _txn_plan(micro: list[list[Any]], encode: Any, decode: Any, write_request: Any) -> Plan:
    """Read phase (WATCH + GET of every key the txn reads), then the writes in one EXEC
    guarded by the tokens. Reads inside the transaction see its own earlier writes."""
    read_keys = sorted({k for mf, k, _ in micro if mf == "r"})
    state: dict[str, Any] = {}
    tokens: tuple[kv.WatchToken, ...] = ()
    if read_keys:
        got = _checked((yield _read_phase(read_keys)))
        tokens = _tokens(read_keys, got.replies[0])
        state = {k: decode(raw) for k, raw in zip(read_keys, got.replies[1:], strict=True)}
    done: list[list[Any]] = []
    writes: list[kv.Request] = []
    for mf, k, v in micro:
        if mf == "r":
            cur = state.get(k)
            done.append([mf, k, list(cur) if isinstance(cur, list) else cur])
        else:
            state[k] = [*(state.get(k) or []), v] if mf == "append" else v
            writes.append(write_request(_b(k), encode(v)))
            done.append([mf, k, v])
    if writes:
        result = yield kv.Batch(tuple(writes), watches=tokens)
        if result.aborted:
            return "fail", micro
        _checked(result)
    return "ok", done


def _interactive(isolation: str, micro: list[list[Any]], encode: Any, decode: Any,
                 write_request: Any) -> Plan:
    """An interactive TXN: TxnStart, one TxnStep per micro-op (a read-only batch each, served
    after ReadIndex), then TxnCommit as one log entry. A TXNCONFLICT (or TXNTOOOLD) on a step
    or at commit is a `fail`."""
    sess = kvtxn.TxnSession(isolation)
    yield from _txn_begin(sess)
    done: list[list[Any]] = []
    for mf, k, v in micro:
        req = kv.Get(_b(k)) if mf == "r" else write_request(_b(k), encode(v))
        inner = yield from _txn_step(sess, req)
        if sess.state == "failed":
            return "fail", micro  # a conflict: the snapshot's value is gone
        done.append([mf, k, decode(inner)] if mf == "r" else [mf, k, v])
    return ("ok", done) if (yield from _txn_commit(sess)) else ("fail", micro)


def _decode_list(raw: Any) -> list[int] | None:
    if raw is None:
        return None
    if not isinstance(raw, bytes):
        raise ReplyError(f"expected a list string, got {raw!r}")
    return [int(x) for x in raw.split(b",") if x]


class RedisListAppend(_Mode, ListAppendWorkload):
    """`list-append` as WATCH/GET then MULTI/APPEND/EXEC (see the module docstring)."""

    def plan(self, f: str, key: Any, value: Any) -> Plan:
        assert f == "txn", f
        return self.txn(value, lambda v: b"%d," % v, _decode_list, kv.Append)

    def set_isolation(self, isolation: str) -> None:
        if isolation == kvtxn.READ_COMMITTED:
            raise UsageError("list-append needs snapshot or stronger: a TXN append is a read "
                             "and a write of the whole value, which read committed lets two "
                             "transactions overwrite (what the checker reads as G0); use "
                             "rw-register or register at read_committed")
        super().set_isolation(isolation)

    def check(self, history: Sequence[Op]) -> list[Violation]:
        found = checkers.lost_appends(history)
        return found or txn_violations(history, "list-append", CHECKED_AS[self.isolation])


class RedisRwRegister(_Mode):
    """`rw-register`: transactions of reads and writes of unique values over a few keys."""

    name = "rw-register"

    def __init__(self, keys: int = 4, ops_max: int = 4) -> None:
        assert keys > 0 and ops_max > 0, (keys, ops_max)
        self.keys = [f"r{i}" for i in range(keys)]
        self.ops_max = ops_max
        self.next_value = 0

    def next_op(self, rng: random.Random) -> Command:
        op, self.next_value = random_txn(rng, self.keys, self.ops_max, "w", self.next_value)
        return op

    def plan(self, f: str, key: Any, value: Any) -> Plan:
        assert f == "txn", f
        return self.txn(value, lambda v: b"%d" % v, _int, lambda k, raw: kv.Set(k, raw))

    def final_ops(self) -> list[Command]:
        return [("txn", None, [["r", k, None] for k in self.keys])]

    def check(self, history: Sequence[Op]) -> list[Violation]:
        return txn_violations(history, "rw-register", CHECKED_AS[self.isolation])


class RedisBank(_Mode, BankWorkload):
    """`bank`: transfers as WATCH/GET then MULTI/SET/SET/EXEC (or a TXN of two GETs and two
    SETs); reads as one MGET (or a read-only TXN of one MGET)."""

    def plan(self, f: str, key: Any, value: Any) -> Plan:
        if self.isolation != WATCH:
            return self._txn_plan(f, value)
        return self._watch_plan(f, value)

    def set_isolation(self, isolation: str) -> None:
        if isolation == kvtxn.READ_COMMITTED:
            raise UsageError("bank keeps its total only at snapshot or stronger (read "
                             "committed allows lost updates); use --isolation snapshot, "
                             "serializable or watch")
        super().set_isolation(isolation)

    def _watch_plan(self, f: str, value: Any) -> Plan:
        if f == "read-accounts":
            got = _checked((yield kv.Batch((kv.MGet(tuple(_b(a) for a in value)),))))
            return "ok", _balances(value, got.replies[0])
        assert f == "transfer", f
        src, dst, amount = value
        got = _checked((yield _read_phase([src, dst])))
        tokens = _tokens([src, dst], got.replies[0])
        have, other = (BANK_INITIAL if (x := _int(r)) is None else x for r in got.replies[1:])
        if amount <= 0 or src == dst or have < amount:
            return "fail", value
        done = yield kv.Batch((kv.Set(_b(src), b"%d" % (have - amount)),
                               kv.Set(_b(dst), b"%d" % (other + amount))), watches=tokens)
        if done.aborted:
            return "fail", value
        _checked(done)
        return "ok", value

    def _txn_plan(self, f: str, value: Any) -> Plan:
        sess = kvtxn.TxnSession(self.isolation)
        yield from _txn_begin(sess)
        if f == "read-accounts":
            raw = yield from _txn_step(sess, kv.MGet(tuple(_b(a) for a in value)))
            if raw is None or not (yield from _txn_commit(sess)):
                return "fail", value
            return "ok", _balances(value, raw)
        src, dst, amount = value
        balances = []
        for account in (src, dst):
            raw = yield from _txn_step(sess, kv.Get(_b(account)))
            if sess.state == "failed":
                return "fail", value
            balances.append(BANK_INITIAL if (x := _int(raw)) is None else x)
        have, other = balances
        if amount <= 0 or src == dst or have < amount:
            return "fail", value
        for account, balance in ((src, have - amount), (dst, other + amount)):
            if (yield from _txn_step(sess, kv.Set(_b(account), b"%d" % balance))) is None:
                return "fail", value
        return ("ok" if (yield from _txn_commit(sess)) else "fail"), value

    def check(self, history: Sequence[Op]) -> list[Violation]:
        found = checkers.bank_total(history, self.total)
        for op in history:
            if op.f == "read-accounts" and op.type == "ok":
                negative = {a: b for a, b in op.value.items() if b < 0}
                if negative:
                    found.append(Violation("bank-negative", f"read at op {op.index} shows "
                                           f"negative balances {negative}", (op.index,)))
        return found


def _balances(accounts: Sequence[str], raw: Any) -> dict[str, Any]:
    assert isinstance(raw, list) and len(raw) == len(accounts), raw
    return {a: BANK_INITIAL if r is None else _int(r) for a, r in zip(accounts, raw, strict=True)}


class RedisWriteSkew(RedisRwRegister):
    """`write-skew`: each transaction reads both keys of a pair and writes one of them (a
    unique value): at snapshot isolation two of them can both commit (G2-item), at
    serializable (and with WATCH) never."""

    name = "write-skew"

    def __init__(self, pairs: int = 2) -> None:
        super().__init__(keys=2 * pairs)

    def next_op(self, rng: random.Random) -> Command:
        i = rng.randrange(len(self.keys) // 2)
        x, y = self.keys[2 * i], self.keys[2 * i + 1]
        self.next_value += 1
        return ("txn", None, [["r", x, None], ["r", y, None],
                              ["w", rng.choice((x, y)), self.next_value]])

    def check(self, history: Sequence[Op]) -> list[Violation]:
        return txn_violations(history, "rw-register", CHECKED_AS[self.isolation])


def txn_violations(history: Sequence[Op], workload: str,
                   isolation: str = STRICT) -> list[Violation]:
    """`keeldb.check.transactions` at `isolation`; an anomaly it forbids is a violation. An
    unknown verdict (e.g. too few transactions to relate) is not."""
    from keeldb.check import transactions

    rw = workload == "rw-register"
    result = transactions(history, isolation, workload, linearizable_keys=rw, wfr_keys=rw)
    if result.valid or result.unknown:
        return []
    kinds = result.details.get("anomaly_types", [])
    return [Violation("transactions", f"{workload} at {isolation}: {', '.join(kinds)}: "
                      f"{result.explanation}", tuple(result.anomalies[0].ops)
                      if result.anomalies else ())]


REDIS_WORKLOADS: dict[str, type] = {
    "register": RedisRegister,
    "list-append": RedisListAppend,
    "rw-register": RedisRwRegister,
    "bank": RedisBank,
    "write-skew": RedisWriteSkew,
}


def make_redis_workload(name: str, isolation: str = WATCH) -> RedisWorkload:
    """Workload `name` in transaction mode `isolation` (`watch` or a TXN level)."""
    if name not in REDIS_WORKLOADS:
        raise UsageError(f"unknown raft-redis workload {name!r}; known: "
                         f"{', '.join(REDIS_WORKLOADS)}")
    workload = REDIS_WORKLOADS[name]()
    workload.set_isolation(isolation)
    result: RedisWorkload = workload
    return result

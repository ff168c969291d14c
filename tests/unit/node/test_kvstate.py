"""The KV state machine: determinism, expiry by log time, WATCH versions, sessions, snapshots."""

from __future__ import annotations

import random
from typing import Any

import pytest

from keeldb import limits
from keeldb.codec.resp import OK, ErrorReply
from keeldb.errors import LimitExceededError, StateRestoreError, StorageIOError
from keeldb.node import kvstate as kv
from keeldb.node.kvstate import (
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
    KvStateMachine,
    MGet,
    MSet,
    Persist,
    Scan,
    Set,
    StrLen,
    Sweep,
    Ttl,
    Watch,
    WatchToken,
)
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.engine import Options
from keeldb.storage.lsm import LsmEngine
from keeldb.storage.memory import MemoryEngine

T0 = 1_700_000_000_000


class Log:
    """Applies batches with increasing log indexes."""

    def __init__(self, sm: KvStateMachine | None = None) -> None:
        self.sm = sm or KvStateMachine(MemoryEngine())
        self.index = self.sm.applied_index

    def apply(self, *requests: kv.Request, now: int = T0, watches: tuple[WatchToken, ...] = (),
              session: tuple[int, int] | None = None) -> Applied:
        self.index += 1
        return self.sm.apply(Batch(tuple(requests), watches, session), index=self.index,
                             now_ms=now)

    def one(self, request: kv.Request, now: int = T0) -> Any:
        return self.apply(request, now=now).replies[0]


def test_expiry_is_decided_by_the_time_in_the_batch() -> None:
    log = Log()
    log.one(Set(b"k", b"v", expire_mode=kv.EXPIRE_IN_MS, expire_ms=1000), now=T0)
    sm = log.sm
    assert sm.read([Get(b"k"), Ttl(b"k", ms=True), Ttl(b"k")], now_ms=T0 + 400) == [
        b"v", 600, 1]
    assert sm.read([Get(b"k"), Ttl(b"k"), Exists((b"k",))], now_ms=T0 + 1000) == [None, -2, 0]
    assert sm.read([DbSize()], now_ms=T0 + 1000) == [1]  # not yet swept, as Redis counts it
    assert log.one(Sweep(100), now=T0 + 1000) == 1
    assert sm.read([DbSize()], now_ms=T0 + 1000) == [0]
    # A write at an earlier log time still sees the key (time comes from the log only).
    log.one(Set(b"e", b"1", expire_mode=kv.EXPIRE_AT_MS, expire_ms=T0 + 50), now=T0)
    assert log.one(IncrBy(b"e", 1), now=T0 + 10) == 2
    assert log.one(Ttl(b"e", ms=True), now=T0 + 10) == 40  # INCR kept the TTL
    assert log.one(IncrBy(b"e", 1), now=T0 + 50) == 1  # expired: starts again from 0


def test_string_commands() -> None:
    log = Log()
    assert log.one(Set(b"a", b"1")) == OK
    assert log.one(Set(b"a", b"2", nx=True)) is None
    assert log.one(Set(b"a", b"3", xx=True, get=True)) == b"1"
    assert log.one(Set(b"zz", b"3", xx=True, get=True)) is None
    assert log.one(GetSet(b"a", b"4")) == b"3"
    assert log.one(Append(b"a", b"56")) == 3
    assert log.one(StrLen(b"a")) == 3
    assert log.one(MSet((b"b", b"x", b"c", b"y"))) == OK
    assert log.one(MGet((b"a", b"b", b"nope", b"c"))) == [b"456", b"x", None, b"y"]
    assert log.one(GetDel(b"b")) == b"x"
    assert log.one(GetDel(b"b")) is None
    assert log.one(Del((b"a", b"b", b"c", b"c"))) == 2
    assert log.one(Exists((b"a", b"zz"))) == 0
    log.one(Set(b"n", b"abc"))
    assert log.one(IncrBy(b"n", 1)) == ErrorReply(kv.ERR_NOT_INTEGER)
    log.one(Set(b"n", b"%d" % (2**63 - 1)))
    assert log.one(IncrBy(b"n", 1)) == ErrorReply(kv.ERR_OVERFLOW)
    assert log.one(Set(b"k" * (kv.KEY_BYTES_MAX + 1), b"v")).text.startswith("ERR key of")
    assert log.one(Set(b"big", b"v" * (kv.VALUE_BYTES_MAX + 1))).text.startswith(
        "ERR string exceeds maximum allowed size")


def test_expire_options_and_persist() -> None:
    log = Log()
    log.one(Set(b"k", b"v"))
    ex = lambda ms, **kw: Expire(b"k", kv.EXPIRE_IN_MS, ms, **kw)  # noqa: E731
    assert log.one(ex(1000, gt=True)) == 0  # no TTL counts as infinite
    assert log.one(ex(1000, xx=True)) == 0
    assert log.one(ex(1000, lt=True)) == 1
    assert log.one(ex(500, nx=True)) == 0
    assert log.one(ex(2000, gt=True)) == 1
    assert log.one(Ttl(b"k", ms=True)) == 2000
    assert log.one(Persist(b"k")) == 1 and log.one(Persist(b"k")) == 0
    assert log.one(Ttl(b"k")) == -1
    assert log.one(ex(-1)) == 1  # in the past: the key goes at once
    assert log.one(Exists((b"k",))) == 0 and log.one(DbSize()) == 0
    assert log.one(Expire(b"k", kv.EXPIRE_IN_MS, 2**63 - 1)) == ErrorReply(
        "ERR invalid expire time in 'expire' command")


def test_scan_walks_every_key_once_and_keys_matches() -> None:
    log = Log()
    keys = [b"key:%03d" % i for i in range(50)]
    log.one(MSet(tuple(x for k in keys for x in (k, b"v"))))
    log.one(Set(b"gone", b"v", expire_mode=kv.EXPIRE_IN_MS, expire_ms=1))
    seen: list[bytes] = []
    cursor = b""
    for _ in range(100):
        next_cursor, batch = log.sm.read([Scan(cursor, None, 7)], now_ms=T0 + 5)[0]
        seen += batch
        if next_cursor == b"0":
            break
        decoded = kv.decode_cursor(next_cursor)
        assert decoded is not None
        cursor = decoded
    assert sorted(seen) == keys
    assert log.sm.read([Keys(b"key:0[0-1]?")], now_ms=T0)[0] == keys[:20]
    assert log.sm.read([Scan(b"", b"*:04?", 1000)], now_ms=T0)[0] == [b"0", keys[40:50]]


@pytest.mark.parametrize("pattern, key, matches", [
    (b"*", b"", True), (b"a?c", b"abc", True), (b"a?c", b"ac", False),
    (b"[abc]x", b"bx", True), (b"[^abc]x", b"bx", False), (b"[a-c]", b"b", True),
    (b"[c-a]", b"b", True), (b"a\\*", b"a*", True), (b"a\\*", b"ab", False),
    (b"h*llo", b"heeello", True), (b"[\\]]", b"]", True), (b"x.y", b"xzy", False),
])
def test_glob(pattern: bytes, key: bytes, matches: bool) -> None:
    assert kv.glob_match(pattern, key) is matches


def test_cursors_round_trip() -> None:
    for key in (b"", b"a", b"\x00\x01", b"\xff" * 100):
        text = kv.encode_cursor(key)
        assert text.isdigit()
        assert kv.decode_cursor(text) == key
    assert kv.encode_cursor(None) == b"0" and kv.decode_cursor(b"0") == b""
    for bad in (b"abc", b"-1", b"01", b"5"):
        assert kv.decode_cursor(bad) is None


def test_watch_detects_write_delete_recreate_and_expiry() -> None:
    log = Log()
    log.one(Set(b"w", b"1", expire_mode=kv.EXPIRE_IN_MS, expire_ms=100))

    def tokens(*keys: bytes, now: int = T0) -> tuple[WatchToken, ...]:
        (reply,) = log.sm.read([Watch(keys)], now_ms=now)
        return tuple(WatchToken(k, v, live) for k, (v, live) in zip(keys, reply, strict=True))

    tok = tokens(b"w", b"absent")
    assert log.apply(Get(b"w"), watches=tok).replies == (b"1",)  # nothing changed
    assert log.apply(Get(b"w"), watches=tok, now=T0 + 100).aborted  # expired in between
    tok = tokens(b"absent")
    log.one(Set(b"absent", b"x"))
    log.one(Del((b"absent",)))
    assert log.apply(Get(b"absent"), watches=tok).aborted  # created and deleted again
    tok = tokens(b"absent")
    assert not log.apply(Set(b"other", b"1"), watches=tok).aborted


def test_tombstones_are_bounded_and_eviction_only_adds_conflicts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "kv_tombstones_max", 3)
    log = Log()
    ((tok,),) = log.sm.read([Watch((b"never",))], now_ms=T0)
    for i in range(6):
        log.one(Set(b"t%d" % i, b"v"))
        log.one(Del((b"t%d" % i,)))
    assert log.sm.tombstones == 3 and log.sm.floor > 0
    assert log.apply(Get(b"never"), watches=(WatchToken(b"never", *tok),)).aborted
    reopened = KvStateMachine(log.sm.engine)
    assert (reopened.tombstones, reopened.floor) == (3, log.sm.floor)


def test_sessions_apply_a_retry_once(monkeypatch: pytest.MonkeyPatch) -> None:
    log = Log()
    first = log.apply(IncrBy(b"c", 5), session=(9, 1))
    again = log.apply(IncrBy(b"c", 5), session=(9, 1))
    assert first.replies == again.replies == (5,) and again.duplicate
    assert log.apply(IncrBy(b"c", 1), session=(9, 2)).replies == (6,)
    stale = log.apply(IncrBy(b"c", 1), session=(9, 1))
    assert stale.duplicate and stale.replies[0].text.startswith("ERR session 9 seq 1")
    assert log.sm.read([Get(b"c")], now_ms=T0) == [b"6"]
    monkeypatch.setattr(limits, "kv_sessions_max", 2)
    for cid in (10, 11, 12):
        log.apply(Get(b"c"), session=(cid, 1))
    assert log.sm.sessions == 2
    assert not log.apply(IncrBy(b"c", 1), session=(9, 2)).duplicate  # 9 was evicted (LRU)


def test_state_survives_reopen_and_snapshot_restore() -> None:
    log = Log()
    log.one(Set(b"a", b"1", expire_mode=kv.EXPIRE_IN_MS, expire_ms=5000))
    log.apply(Del((b"a",)), session=(1, 1))
    log.one(MSet((b"b", b"2", b"c", b"3")))
    reopened = KvStateMachine(log.sm.engine)
    assert (reopened.applied_index, reopened.version, reopened.key_count, reopened.sessions) == (
        3, 3, 2, 1)
    snap = log.sm.snapshot()
    other = Log(KvStateMachine(MemoryEngine()))
    other.one(Set(b"junk", b"x"))
    other.sm.restore(snap)
    other.index = other.sm.applied_index
    assert other.sm.snapshot() == snap
    assert other.sm.read([Keys(b"*")], now_ms=T0) == [[b"b", b"c"]]
    assert other.apply(Del((b"a",)), session=(1, 1)).duplicate
    for bad in (b"nope", snap[:-1] + bytes([snap[-1] ^ 1]), kv.SNAPSHOT_MAGIC):
        with pytest.raises(StateRestoreError):
            other.sm.restore(bad)


def random_batches(seed: int, n: int) -> list[tuple[Batch, int]]:
    rng = random.Random(f"{seed}:kvstate")
    keys = [b"k%d" % i for i in range(8)]
    out = []
    now = T0
    for i in range(n):
        now += rng.randrange(0, 400)
        k = rng.choice(keys)
        choices: list[kv.Request] = [
            Set(k, b"%d" % rng.randrange(100), nx=rng.random() < 0.2,
                expire_mode=rng.choice([0, 1]), expire_ms=rng.randrange(1, 2000)),
            IncrBy(k, rng.randrange(-5, 5)), Append(k, b"x"), Del((k, rng.choice(keys))),
            GetDel(k), GetSet(k, b"1"), Expire(k, kv.EXPIRE_IN_MS, rng.randrange(-10, 3000)),
            Persist(k), MSet((k, b"7", rng.choice(keys), b"8")), Sweep(3), Get(k),
        ]
        req = rng.choice(choices)
        session = (rng.randrange(3), i) if rng.random() < 0.3 else None
        out.append((Batch((req,), (), session), now))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_replicas_agree_and_snapshots_resume(seed: int) -> None:
    batches = random_batches(seed, 300)
    a = KvStateMachine(MemoryEngine())
    lsm = LsmEngine(MemoryDisk(), Options(memtable_bytes=4096))
    b = KvStateMachine(lsm)
    c = None
    for i, (batch, now) in enumerate(batches, start=1):
        ra = a.apply(batch, index=i, now_ms=now)
        assert b.apply(batch, index=i, now_ms=now) == ra
        while lsm.flush_step() or lsm.compact_step():
            pass  # the node's driver runs these steps; the state machine never does
        if c is not None:
            assert c.apply(batch, index=i, now_ms=now) == ra
        if i == 150:
            c = KvStateMachine(MemoryEngine())
            c.restore(a.snapshot())
    assert a.snapshot() == b.snapshot()
    assert c is not None and c.snapshot() == a.snapshot()
    assert a.key_count == len(a.read([Keys(b"*")], now_ms=0)[0])


def test_batches_encode_for_the_log() -> None:
    batch = Batch((Get(b"a"), Set(b"a", b"b", nx=True, expire_mode=1, expire_ms=5),
                   Del((b"a", b"b")), MSet((b"a", b"b")), Scan(b"", b"*", 3), Sweep(4),
                   Expire(b"a", 2, 7, gt=True, command="pexpireat"), DbSize()),
                  (WatchToken(b"a", 3, True),), (1, 2))
    assert kv.decode_batch(kv.encode_batch(batch)) == batch


class FailingEngine(MemoryEngine):
    fail = False

    def write(self, ops: list[tuple[int, bytes, bytes]], sync: bool = False) -> int:
        if self.fail:
            raise StorageIOError("injected write failure")
        return super().write(ops, sync)


def test_a_failed_engine_write_leaves_memory_as_the_engine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "kv_tombstones_max", 1)
    engine = FailingEngine()
    log = Log(KvStateMachine(engine))
    log.one(Set(b"a", b"1"))
    log.one(Del((b"a",)))
    before = (log.sm.version, log.sm.applied_index, log.sm.tombstones, log.sm.floor)
    engine.fail = True
    with pytest.raises(StorageIOError):
        log.apply(Set(b"b", b"1"), Del((b"b",)), session=(1, 1))
    assert (log.sm.version, log.sm.applied_index, log.sm.tombstones, log.sm.floor) == before
    assert log.sm.sessions == 0


def test_aborted_exec_reply_is_kept_for_the_session() -> None:
    log = Log()
    stale = (WatchToken(b"x", 99, True),)
    assert log.apply(Set(b"x", b"1"), watches=stale, session=(4, 1)).aborted
    again = log.apply(Set(b"x", b"1"), watches=stale, session=(4, 1))
    assert again.aborted and again.duplicate
    assert log.sm.read([Exists((b"x",))], now_ms=T0) == [0]


def test_snapshot_over_its_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    log = Log()
    log.one(Set(b"a", b"x" * 100))
    monkeypatch.setattr(limits, "raft_snapshot_bytes_max", 50)
    with pytest.raises(LimitExceededError, match="raft_snapshot_bytes_max=50"):
        log.sm.snapshot()


class CountingEngine(FailingEngine):
    writes = 0

    def write(self, ops: list[tuple[int, bytes, bytes]], sync: bool = False) -> int:
        self.writes += 1
        return super().write(ops, sync)


@pytest.mark.parametrize("seed", range(3))
def test_grouped_batches_apply_as_one_write_and_read_their_own_writes(seed: int) -> None:
    rng = random.Random(f"{seed}:groups")
    plain = KvStateMachine(MemoryEngine())
    engine = CountingEngine()
    grouped = KvStateMachine(engine)
    batches = random_batches(seed, 300)
    groups = 0
    i = 0
    while i < len(batches):
        size = rng.randrange(1, 20)
        grouped.begin_group()
        groups += 1
        for j, (batch, now) in enumerate(batches[i:i + size], start=i + 1):
            assert grouped.apply(batch, index=j, now_ms=now) == plain.apply(batch, index=j,
                                                                           now_ms=now)
            # reads and scans inside the group see its deferred writes
            scan: list[kv.Request] = [Scan(b"", None, 3), Keys(b"*"), DbSize()]
            assert grouped.read(scan, now_ms=now) == plain.read(scan, now_ms=now)
        grouped.end_group()
        i += size
    assert engine.writes == groups
    assert grouped.snapshot() == plain.snapshot()
    assert KvStateMachine(engine).snapshot() == plain.snapshot()  # all of it reached the engine


def test_a_group_over_its_bound_writes_whole_batches_early(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "kv_apply_group_ops_max", 3)  # a SET of a new key: 1 op
    engine = CountingEngine()
    log = Log(KvStateMachine(engine))
    log.sm.begin_group()
    for i in range(10):
        log.one(Set(b"k%d" % i, b"v"))
        # what reached the engine is always the state after some whole batch
        stored = KvStateMachine(engine)
        assert stored.key_count == stored.applied_index
    log.sm.end_group()
    assert 1 < engine.writes < 10
    assert KvStateMachine(engine).key_count == 10


def test_a_failed_group_write_leaves_memory_as_the_engine() -> None:
    engine = FailingEngine()
    log = Log(KvStateMachine(engine))
    log.one(Set(b"a", b"1"))
    log.sm.begin_group()
    log.one(Set(b"b", b"1"))
    log.apply(Del((b"a",)), session=(1, 1))
    assert log.sm.read([Keys(b"*")], now_ms=T0) == [[b"b"]]
    engine.fail = True
    with pytest.raises(StorageIOError):
        log.sm.end_group()
    assert log.sm.group_lost and not log.sm.grouping
    assert (log.sm.applied_index, log.sm.key_count, log.sm.sessions) == (1, 1, 0)
    assert log.sm.read([Keys(b"*")], now_ms=T0) == [[b"a"]]

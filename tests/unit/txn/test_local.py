"""txn/local.py: reads, own writes, snapshots, conflicts, limits, GC and commit batches."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from keeldb import limits
from keeldb.errors import (
    CommitUnknown,
    LimitExceededError,
    SerializationConflict,
    StorageIOError,
    TransactionClosedError,
    TransactionConflict,
    TransactionTooLargeError,
    TransactionTooOldError,
    UsageError,
)
from keeldb.storage import mvcc
from keeldb.storage.memory import MemoryEngine, MemoryState
from keeldb.txn import READ_COMMITTED, SERIALIZABLE, SNAPSHOT, TransactionManager


class Recording:
    """A memory engine that records every batch and can be told to fail writes."""

    def __init__(self) -> None:
        self.engine = MemoryEngine()
        self.batches: list[list[tuple[int, bytes, bytes]]] = []
        self.fail_next = False

    def get(self, key: bytes) -> bytes | None:
        return self.engine.get(key)

    def scan(self, start: bytes | None = None, end: bytes | None = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        return self.engine.scan(start, end, reverse, limit)

    def write(self, ops: list[tuple[int, bytes, bytes]]) -> int:
        if self.fail_next:
            self.fail_next = False
            raise StorageIOError("injected EIO")
        self.batches.append(list(ops))
        return self.engine.write(ops)


def fill(mgr: TransactionManager, pairs: dict[bytes, bytes]) -> None:
    with mgr.begin() as tx:
        for k, v in pairs.items():
            tx.put(k, v)


@pytest.fixture
def mgr() -> TransactionManager:
    m = TransactionManager(MemoryEngine())
    fill(m, {b"a": b"1", b"b": b"2", b"c": b"3"})
    return m


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("level", [READ_COMMITTED, SNAPSHOT, SERIALIZABLE])
def test_own_writes_merge_with_stored_data(seed: int, level: str) -> None:
    """Random puts/deletes inside one transaction; every read matches a dict model."""
    rng = random.Random(f"{seed}:own-writes")
    mgr = TransactionManager(MemoryEngine())
    universe = [bytes([c]) for c in b"abcdefgh"]
    model = {k: b"base-" + k for k in rng.sample(universe, 4)}
    fill(mgr, model)
    with mgr.begin(level) as tx:
        for i in range(40):
            key = rng.choice(universe)
            if rng.random() < 0.4:
                tx.delete(key)
                model.pop(key, None)
            else:
                tx.put(key, f"v{i}".encode())
                model[key] = f"v{i}".encode()
            lo, hi = sorted(rng.sample(universe, 2))
            limit = rng.choice([None, 1, 2, 5])
            want = sorted((k, v) for k, v in model.items() if lo <= k < hi)
            assert tx.scan(lo, hi, limit=limit) == want[:limit]
            assert tx.scan(lo, hi, reverse=True, limit=limit) == want[::-1][:limit]
            assert tx.scan() == sorted(model.items())
            assert tx.get(key) == model.get(key)
    with mgr.begin(level) as tx:
        assert tx.scan() == sorted(model.items())


def test_snapshot_is_taken_at_the_first_operation(mgr: TransactionManager) -> None:
    tx = mgr.begin(SNAPSHOT)
    mgr.put(b"a", b"before-first-read")
    assert tx.get(b"a") == b"before-first-read"
    mgr.put(b"a", b"after")
    mgr.delete(b"b")
    assert tx.get(b"a") == b"before-first-read" and tx.get(b"b") == b"2"
    assert tx.scan() == [(b"a", b"before-first-read"), (b"b", b"2"), (b"c", b"3")]
    tx.commit()


def test_read_committed_sees_each_new_commit(mgr: TransactionManager) -> None:
    tx = mgr.begin(READ_COMMITTED)
    assert tx.get(b"a") == b"1"
    other = mgr.begin(SNAPSHOT)
    other.put(b"a", b"uncommitted")
    assert tx.get(b"a") == b"1"  # never a dirty read
    other.commit()
    assert tx.get(b"a") == b"uncommitted"
    tx.put(b"a", b"mine")  # no conflict check: last committer wins
    tx.commit()
    assert mgr.get(b"a") == b"mine"


@pytest.mark.parametrize("level", [SNAPSHOT, SERIALIZABLE])
def test_first_committer_wins(mgr: TransactionManager, level: str) -> None:
    t1, t2 = mgr.begin(level), mgr.begin(level)
    t1.put(b"a", b"t1")
    t2.put(b"a", b"t2")
    t2.put(b"z", b"t2")
    t1.commit()
    with pytest.raises(SerializationConflict) as info:
        t2.commit()
    assert (info.value.key, info.value.other_txn, info.value.kind) == (b"a", t1.id, "write-write")
    assert t2.state == "aborted" and mgr.get(b"z") is None
    assert mgr.stats["conflicts"] == 1


def test_write_skew_passes_snapshot_and_fails_serializable(mgr: TransactionManager) -> None:
    for level, conflict in ((SNAPSHOT, False), (SERIALIZABLE, True)):
        t1, t2 = mgr.begin(level), mgr.begin(level)
        assert t1.get(b"a") and t1.get(b"b") and t2.get(b"a") and t2.get(b"b")
        t1.put(b"a", b"x")
        t2.put(b"b", b"y")
        t1.commit()
        if conflict:
            with pytest.raises(SerializationConflict, match="read-write conflict on key b'a'"):
                t2.commit()
        else:
            t2.commit()


def test_phantom_in_a_scanned_range_is_a_conflict(mgr: TransactionManager) -> None:
    t1 = mgr.begin(SERIALIZABLE)
    assert t1.scan(b"b", b"d") == [(b"b", b"2"), (b"c", b"3")]
    t1.put(b"total", b"5")
    mgr.put(b"x", b"outside the range")
    t1_ok = mgr.begin(SERIALIZABLE)
    t1_ok.scan(b"b", b"d")
    t1_ok.put(b"t", b"1")
    mgr.put(b"bb", b"phantom")
    with pytest.raises(SerializationConflict) as info:
        t1.commit()
    assert info.value.key == b"bb" and info.value.kind == "read-write"
    with pytest.raises(SerializationConflict):
        t1_ok.commit()


def test_a_limited_scan_only_covers_what_it_read(mgr: TransactionManager) -> None:
    tx = mgr.begin(SERIALIZABLE)
    assert tx.scan(limit=1) == [(b"a", b"1")]
    assert tx.scan(b"a", reverse=True, limit=1) == [(b"c", b"3")]
    tx.put(b"out", b"1")
    mgr.put(b"b", b"changed between the two bounds")
    tx.commit()  # b was never read: neither scan reached it


def test_read_only_transactions_never_conflict(mgr: TransactionManager) -> None:
    tx = mgr.begin(SERIALIZABLE)
    assert tx.get(b"a") == b"1"
    mgr.put(b"a", b"new")
    assert tx.commit() == 1  # serializes at its snapshot


def test_commit_is_one_batch_and_timestamps_increase() -> None:
    rec = Recording()
    mgr = TransactionManager(rec)
    seen: list[int] = []
    for i in range(5):
        with mgr.begin() as tx:
            for k in (b"x", b"y", b"z"):
                tx.put(k, str(i).encode())
            tx.delete(b"gone")
        assert tx.commit_ts is not None
        seen.append(tx.commit_ts)
    assert seen == [1, 2, 3, 4, 5]
    assert len(rec.batches) == 5
    for ts, batch in zip(seen, rec.batches, strict=True):
        stored = [mvcc.decode_version(k, v) for _, k, v in batch if k != mvcc.META_LAST_TS]
        assert {v.ts for v in stored} == {ts} and len(stored) == 4
        assert batch[-1] == mvcc.meta_op(ts)


def test_a_reopened_manager_continues_the_clock() -> None:
    state = MemoryState()
    mgr = TransactionManager(MemoryEngine(state))
    mgr.put(b"k", b"1")
    mgr.put(b"k", b"2")
    again = TransactionManager(MemoryEngine(state))
    assert again.visible_ts == 2 and again.get(b"k") == b"2"
    assert again.put(b"k", b"3") == 3


def test_failed_engine_write_is_commit_unknown_and_stops_the_manager() -> None:
    rec = Recording()
    mgr = TransactionManager(rec)
    tx = mgr.begin()
    tx.put(b"k", b"v")
    rec.fail_next = True
    with pytest.raises(CommitUnknown, match="outcome is unknown"):
        tx.commit()
    with pytest.raises(CommitUnknown, match="reopen"):
        mgr.begin().get(b"k")


def test_closed_transactions_refuse_use(mgr: TransactionManager) -> None:
    with mgr.begin() as tx:
        tx.get(b"a")
    with pytest.raises(TransactionClosedError):
        tx.put(b"a", b"x")
    with pytest.raises(ValueError, match="boom"), mgr.begin() as tx2:
        tx2.put(b"a", b"never")
        raise ValueError("boom")
    assert tx2.state == "aborted" and mgr.get(b"a") == b"1"
    tx2.rollback()  # idempotent
    assert mgr.active_count() == 0


def test_unknown_level_and_bad_arguments() -> None:
    mgr = TransactionManager(MemoryEngine())
    with pytest.raises(UsageError, match="read_committed, snapshot, serializable"):
        mgr.begin("chaos")
    assert mgr.begin("repeatable-read").isolation == SNAPSHOT
    with pytest.raises(UsageError):
        mgr.begin().scan(limit=-1)
    with pytest.raises(UsageError, match="gc_every_commits=0"):
        TransactionManager(MemoryEngine(), gc_every_commits=0)


def test_size_limits(monkeypatch: pytest.MonkeyPatch, mgr: TransactionManager) -> None:
    monkeypatch.setattr(limits, "txn_ops_max", 3)
    tx = mgr.begin()
    for k in (b"1", b"2", b"3"):
        tx.put(k, b"v")
    tx.put(b"3", b"overwrite is not a new op")
    with pytest.raises(TransactionTooLargeError, match="txn_ops_max=3"):
        tx.put(b"4", b"v")
    monkeypatch.setattr(limits, "txn_bytes_max", 10)
    with pytest.raises(TransactionTooLargeError, match="txn_bytes_max=10"):
        mgr.begin().put(b"k", b"x" * 10)
    monkeypatch.setattr(limits, "txn_read_set_entries_max", 2)
    reader = mgr.begin(SERIALIZABLE)
    reader.get(b"a")
    reader.get(b"b")
    with pytest.raises(TransactionTooLargeError, match="txn_read_set_entries_max=2"):
        reader.scan()


def test_age_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    mgr = TransactionManager(MemoryEngine(), clock=lambda: now[0])
    tx = mgr.begin()
    tx.put(b"k", b"v")
    now[0] += limits.txn_age_seconds_max + 1
    with pytest.raises(TransactionTooOldError) as info:
        tx.commit()
    assert info.value.retryable and tx.state == "aborted"
    monkeypatch.setattr(limits, "txn_commits_behind_max", 3)
    old = mgr.begin(SNAPSHOT)
    old.get(b"k")
    for i in range(4):
        mgr.put(b"other", str(i).encode())
    with pytest.raises(TransactionTooOldError, match="4 commits behind"):
        old.get(b"k")


def test_commit_log_forgets_what_no_one_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = TransactionManager(MemoryEngine())
    for i in range(20):
        mgr.put(b"k", str(i).encode())
    assert len(mgr._log) == 0  # no transaction open: nothing to validate against
    monkeypatch.setattr(limits, "txn_commits_behind_max", 5)
    slow = mgr.begin(SNAPSHOT)
    slow.get(b"k")
    slow.put(b"mine", b"1")
    for i in range(5):
        mgr.put(b"k", str(i).encode())
    mgr.put(b"unrelated", b"x")  # trims the log below slow's snapshot
    assert len(mgr._log) == 5
    with pytest.raises(TransactionTooOldError):
        slow.commit()


def test_active_transactions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "txn_active_max", 2)
    mgr = TransactionManager(MemoryEngine())
    mgr.begin()
    mgr.begin()
    with pytest.raises(LimitExceededError, match="txn_active_max=2"):
        mgr.begin()


def test_gc_spares_versions_a_live_transaction_reads() -> None:
    engine = MemoryEngine()
    mgr = TransactionManager(engine, gc_every_commits=4)
    mgr.put(b"k", b"v0")
    reader = mgr.begin(SNAPSHOT)
    assert reader.get(b"k") == b"v0"
    for i in range(1, 10):
        mgr.put(b"k", f"v{i}".encode())
    mgr.gc_full()
    assert reader.get(b"k") == b"v0"  # its version survived
    assert [v.ts for v in mvcc.versions(engine, b"k")][-1] == 1
    reader.commit()
    assert mgr.gc_horizon() == mgr.visible_ts == 10
    mgr.delete(b"k")
    assert mgr.gc_full() == 11  # ten values and the tombstone
    assert mvcc.versions(engine, b"k") == []
    assert mgr.stats["gc_deleted"] >= 10


def test_gc_runs_automatically_every_n_commits() -> None:
    engine = MemoryEngine()
    mgr = TransactionManager(engine, gc_every_commits=5)
    for i in range(4):
        mgr.put(b"k", str(i).encode())
    assert len(mvcc.versions(engine, b"k")) == 4
    mgr.put(b"k", b"4")
    assert [v.ts for v in mvcc.versions(engine, b"k")] == [5]


def test_conflict_is_retryable_transaction_conflict() -> None:
    assert issubclass(SerializationConflict, TransactionConflict)
    err: Any = SerializationConflict("x", key=b"k", other_txn=3)
    assert err.retryable and err.key == b"k" and err.other_txn == 3


def test_without_a_lock_overlapping_use_is_caught() -> None:
    mgr = TransactionManager(MemoryEngine())
    with mgr._lock, pytest.raises(AssertionError, match=r"lock=threading.Lock\(\)"):
        mgr.begin()  # as if another thread were inside the critical section
    mgr.begin().commit()  # released again: usable

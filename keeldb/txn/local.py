"""Interactive MVCC transactions over one engine: the local transaction manager.

    mgr = TransactionManager(engine, lock=threading.Lock())
    with mgr.begin(isolation="serializable") as tx:
        balance = tx.get(b"alice")
        tx.put(b"alice", b"90")
    # committed on a clean exit, rolled back on an exception

A transaction buffers its writes and reads through `storage.mvcc` at a timestamp (its
snapshot, or the newest commit per operation under `read_committed`). Commit validates it
against the commits that happened since its snapshot (`txn.conflicts`), takes the next commit
timestamp and writes all its versions plus the clock record in ONE engine batch. Only the
validation, the timestamp and that batch run under the manager's lock; reads never hold it.

Transactional keys live in their own keyspace (`storage.mvcc.NAMESPACE`) of the engine:
plain `db.get/put` do not see them and they do not see plain keys. `TransactionManager.get`,
`.put` and `.delete` are single-operation transactions for non-transactional use of the
transactional keyspace.

The manager is thread-safe when given a real lock (`threading.Lock()`); this module is
sans-IO, so time (`clock`) and waiting (`sleep`, used by `transactional`) are ports too.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Protocol, Self

from keeldb import limits
from keeldb.errors import (
    CommitUnknown,
    LimitExceededError,
    TransactionClosedError,
    TransactionTooLargeError,
    TransactionTooOldError,
    UsageError,
)
from keeldb.storage import mvcc
from keeldb.storage.engine import check_scan_args, check_value
from keeldb.txn.conflicts import CommitLog, Committed, ReadSet, validate
from keeldb.txn.isolation import checks_reads, checks_writes, parse_level, uses_snapshot

_TOMBSTONE = None  # a buffered delete


class Store(Protocol):
    """What the manager needs of an engine or an embedded `DB`."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes | None = None, end: bytes | None = None,
             reverse: bool = False, limit: int | None = None
             ) -> Iterator[tuple[bytes, bytes]]: ...

    def write(self, ops: list[tuple[int, bytes, bytes]]) -> int: ...


class _SingleThread:
    """The default lock, for one thread: no locking, but overlapping use is caught.

    Several threads need a real lock: pass `lock=threading.Lock()` to the manager.
    """

    def __init__(self) -> None:
        self._held = False

    def __enter__(self) -> None:
        assert not self._held, (
            "TransactionManager used from several threads without a lock; "
            "create it with lock=threading.Lock()"
        )
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self._held = False


def _no_sleep(seconds: float) -> None:
    return None


class TransactionManager:
    """Begins, validates and commits transactions on one engine (one manager per engine)."""

    def __init__(self, store: Store, *, lock: AbstractContextManager[Any] | None = None,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] = _no_sleep,
                 gc_every_commits: int = limits.mvcc_gc_every_commits) -> None:
        if not 1 <= gc_every_commits <= limits.txn_commits_behind_max:
            raise UsageError(
                f"gc_every_commits={gc_every_commits!r} must be between 1 and "
                f"{limits.txn_commits_behind_max} (txn_commits_behind_max)"
            )
        # An embedded DB hides the transactional keyspace from plain reads and offers the
        # unfiltered view as `txn_store`; engines are used as they are.
        self.store = getattr(store, "txn_store", store)
        self.clock = clock  # monotonic seconds; None: age is measured in commits only
        self.sleep = sleep  # how `transactional` waits between retries
        self._lock: AbstractContextManager[Any] = lock if lock is not None else _SingleThread()
        self._visible = mvcc.last_ts(store)  # newest commit every new reader sees
        self._log = CommitLog(floor=self._visible)
        self._active: dict[int, int | None] = {}  # txn id -> read ts in use (None: none yet)
        self._next_id = 1
        self._gc_every = gc_every_commits
        self._commits_since_gc = 0
        self._gc_cursor: bytes | None = None
        self._failed: BaseException | None = None
        self.stats = {"commits": 0, "aborts": 0, "conflicts": 0, "gc_deleted": 0}

    # --- transactions ----------------------------------------------------------------
    def begin(self, isolation: str = "serializable") -> Transaction:
        level = parse_level(isolation)
        with self._lock:
            self._check_usable()
            if len(self._active) >= limits.txn_active_max:
                raise LimitExceededError(
                    f"{len(self._active)} transactions are open (txn_active_max="
                    f"{limits.txn_active_max}); commit or roll back some first"
                )
            txn_id = self._next_id
            self._next_id += 1
            self._active[txn_id] = None
        started = self.clock() if self.clock is not None else 0.0
        return Transaction(self, txn_id, level, started)

    transaction = begin  # so a manager can stand where a DB is expected

    @property
    def visible_ts(self) -> int:
        """The newest commit timestamp (what a transaction beginning now reads at)."""
        return self._visible

    def active_count(self) -> int:
        return len(self._active)

    # --- single-operation use of the transactional keyspace ---------------------------
    def get(self, key: bytes) -> bytes | None:
        """Read the newest committed value of `key` (a one-read transaction)."""
        with self.begin("read_committed") as tx:
            return tx.get(key)

    def put(self, key: bytes, value: bytes) -> int:
        """Write `key` outside any transaction (never conflicts); return its commit ts."""
        tx = self.begin("read_committed")
        tx.put(key, value)
        return tx.commit()

    def delete(self, key: bytes) -> int:
        tx = self.begin("read_committed")
        tx.delete(key)
        return tx.commit()

    # --- garbage collection -----------------------------------------------------------
    def gc_horizon(self) -> int:
        """The oldest timestamp a live transaction may still read at."""
        with self._lock:
            in_use = [ts for ts in self._active.values() if ts is not None]
            return min(in_use, default=self._visible)

    def gc_step(self, entries_max: int = limits.mvcc_gc_step_entries) -> int:
        """Run one bounded garbage-collection step; return how many versions it deleted.

        Resumes where the previous step stopped and wraps around at the end of the keyspace.
        """
        horizon = self.gc_horizon()
        step = mvcc.gc_step(self.store, horizon, self._gc_cursor, entries_max)
        if step.ops:
            self.store.write(step.ops)
        with self._lock:
            self._gc_cursor = step.next_start
            self.stats["gc_deleted"] += len(step.ops)
        return len(step.ops)

    def gc_full(self) -> int:
        """Collect everything collectable now (a whole pass over the keyspace)."""
        self._gc_cursor = None
        deleted = self.gc_step()
        while self._gc_cursor is not None:
            deleted += self.gc_step()
        return deleted

    # --- used by Transaction ----------------------------------------------------------
    def _read_ts(self, txn_id: int, refresh: bool) -> int:
        """Register and return the timestamp a transaction reads at."""
        with self._lock:
            self._check_usable()
            ts = self._active[txn_id]
            if ts is None or refresh:
                ts = self._visible
                self._active[txn_id] = ts
            return ts

    def _commit(self, tx: Transaction, items: list[tuple[bytes, bytes | None]]) -> int:
        """Validate `tx` and write its (key, value or None) writes atomically at a new ts."""
        writes = frozenset(key for key, _ in items)
        level = tx.isolation
        reads = tx._reads if checks_reads(level) else None
        with self._lock:
            self._check_usable()
            if checks_writes(level):
                assert tx._read_ts is not None
                try:
                    validate(txn_id=tx.id, read_ts=tx._read_ts, writes=writes, reads=reads,
                             log=self._log)
                except Exception:
                    self.stats["conflicts"] += 1
                    raise
            ts = self._visible + 1
            batch = [mvcc.put_op(key, ts, value) for key, value in items]
            batch.append(mvcc.meta_op(ts))
            try:
                self.store.write(batch)
            except UsageError:
                raise  # refused before anything was applied
            except Exception as exc:
                # The batch may or may not be stored: never guess. The clock cannot move
                # past an unknown commit, so this manager stops; reopen the store.
                self._failed = exc
                raise CommitUnknown(
                    f"commit of transaction {tx.id} at timestamp {ts} failed with {exc!r}; "
                    "its outcome is unknown: reopen the store and read the keys to find out"
                ) from exc
            assert ts > self._visible, "commit timestamps must increase"
            self._visible = ts
            self._log.append(Committed(tx.id, ts, writes))
            self._finish_locked(tx.id)
            self.stats["commits"] += 1
            self._commits_since_gc += 1
            gc_due = self._commits_since_gc >= self._gc_every
            if gc_due:
                self._commits_since_gc = 0
        if gc_due:
            self.gc_step()
        return ts

    def _end(self, txn_id: int, aborted: bool) -> None:
        with self._lock:
            if txn_id in self._active:
                self._finish_locked(txn_id)
                if aborted:
                    self.stats["aborts"] += 1

    def _finish_locked(self, txn_id: int) -> None:
        del self._active[txn_id]
        in_use = [ts for ts in self._active.values() if ts is not None]
        self._log.prune(min(in_use, default=self._visible))
        self._log.trim(limits.txn_commits_behind_max)

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise CommitUnknown(
                f"an earlier commit failed with {self._failed!r} and its outcome is unknown; "
                "reopen the store before running more transactions"
            )


class TransactionScope(ABC):
    """The `with` block every transaction handle shares (this module's `Transaction` and the
    client's `ClientTransaction`): it commits when the block ends normally, rolls back when
    the block raises, and leaves an already ended transaction alone. `abort` is `rollback`."""

    state: str  # "active" while the transaction may still commit

    @abstractmethod
    def commit(self) -> object:
        """Make the writes visible (or raise); the result is the subclass's."""

    @abstractmethod
    def rollback(self) -> None:
        """Discard the transaction; safe to call more than once."""

    def abort(self) -> None:
        self.rollback()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.rollback()
        elif self.state == "active":
            self.commit()


class Transaction(TransactionScope):
    """One interactive transaction; use it from one thread at a time."""

    def __init__(self, mgr: TransactionManager, txn_id: int, isolation: str,
                 started: float) -> None:
        self.mgr = mgr
        self.id = txn_id
        self.isolation = isolation
        self._started = started
        self._read_ts: int | None = None  # snapshot (or the latest read ts under RC)
        self._writes: dict[bytes, bytes | None] = {}
        self._bytes = 0
        self._reads = ReadSet()
        self.state = "active"  # -> "committed" | "aborted"
        self.commit_ts: int | None = None

    # --- reads ------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The value of `key` as this transaction sees it (own writes first)."""
        key = mvcc.check_user_key(key)
        self._check_active()
        if key in self._writes:
            return self._writes[key]
        ts = self._begin_op()
        if checks_reads(self.isolation):
            self._reads.add_key(key)
        return mvcc.get_at(self.mgr.store, key, ts)

    def scan(self, start: bytes | None = None, end: bytes | None = None, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Pairs with start <= key < end as this transaction sees them, own writes merged."""
        count_max = check_scan_args(start, end, limit)
        if start is not None:
            mvcc.check_user_key(start)
        if end is not None:
            mvcc.check_user_key(end)
        self._check_active()
        ts = self._begin_op()
        out = list(self._merged(ts, start, end, reverse, count_max))
        if checks_reads(self.isolation):
            lo, hi = start, end
            if len(out) == count_max and out:  # stopped early: only the part read counts
                if reverse:
                    lo = out[-1][0]
                else:
                    hi = out[-1][0] + b"\x00"
            self._reads.add_range(lo, hi)
        return out

    def _merged(self, ts: int, start: bytes | None, end: bytes | None, reverse: bool,
                count_max: int) -> Iterator[tuple[bytes, bytes]]:
        own = sorted(
            (k, v) for k, v in self._writes.items()
            if (start is None or k >= start) and (end is None or k < end)
        )
        if reverse:
            own.reverse()
        # Own writes sort before stored pairs of the same key (tag 0) so they win.
        tagged_own = ((k, 0, v) for k, v in own)
        tagged_base = ((k, 1, v) for k, v in mvcc.scan_at(self.mgr.store, ts, start, end,
                                                          reverse))
        merged = heapq.merge(tagged_own, tagged_base,
                             key=(lambda e: (_Desc(e[0]), e[1])) if reverse else None)
        produced = 0
        last: bytes | None = None
        for key, _, value in merged:
            if key == last:
                continue  # the stored pair shadowed by an own write
            last = key
            if produced >= count_max:
                return
            if value is None:
                continue  # deleted by this transaction
            produced += 1
            yield key, value

    # --- writes -----------------------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> None:
        key = mvcc.check_user_key(key)
        value = check_value(value)
        self._buffer(key, value)

    def delete(self, key: bytes) -> None:
        key = mvcc.check_user_key(key)
        self._buffer(key, _TOMBSTONE)

    def _buffer(self, key: bytes, value: bytes | None) -> None:
        self._check_active()
        self._begin_op()
        size = len(key) + (0 if value is None else len(value))
        old = self._writes.get(key, _TOMBSTONE)
        old_size = len(key) + (0 if old is None else len(old)) if key in self._writes else 0
        ops = len(self._writes) + (0 if key in self._writes else 1)
        total = self._bytes - old_size + size
        if ops > limits.txn_ops_max or total > limits.txn_bytes_max:
            raise TransactionTooLargeError(
                f"transaction {self.id} would hold {ops} writes and {total} bytes, over "
                f"txn_ops_max={limits.txn_ops_max} or txn_bytes_max={limits.txn_bytes_max}; "
                "split the work into several transactions"
            )
        self._writes[key] = value
        self._bytes = total

    # --- end --------------------------------------------------------------------------
    def commit(self) -> int:
        """Make every write visible at once; return the commit timestamp.

        A read-only transaction commits at its snapshot without validation (it serializes
        there). Raises `TransactionConflict` (retryable) when the level forbids the commit.
        """
        self._check_active()
        self._check_age()
        if not self._writes:
            self.state = "committed"
            self.commit_ts = self._read_ts if self._read_ts is not None else 0
            self.mgr._end(self.id, aborted=False)
            return self.commit_ts
        try:
            ts = self.mgr._commit(self, list(self._writes.items()))
        except BaseException:
            self.state = "aborted"
            self.mgr._end(self.id, aborted=True)
            raise
        self.state = "committed"
        self.commit_ts = ts
        return ts

    def rollback(self) -> None:
        """Discard every write; safe to call more than once."""
        if self.state == "active":
            self.state = "aborted"
            self._writes.clear()
            self.mgr._end(self.id, aborted=True)

    def __repr__(self) -> str:
        return f"<Transaction {self.id} {self.isolation} {self.state}>"

    # --- helpers ----------------------------------------------------------------------
    def _begin_op(self) -> int:
        """Take (or, under read committed, refresh) the read timestamp for one operation."""
        self._check_age()
        refresh = not uses_snapshot(self.isolation)
        ts = self.mgr._read_ts(self.id, refresh)
        self._read_ts = ts
        return ts

    def _check_active(self) -> None:
        if self.state != "active":
            raise TransactionClosedError(
                f"transaction {self.id} is {self.state}; begin a new transaction"
            )

    def _check_age(self) -> None:
        behind = self.mgr.visible_ts - self._read_ts if self._read_ts is not None else 0
        age = self.mgr.clock() - self._started if self.mgr.clock is not None else 0.0
        if age > limits.txn_age_seconds_max or behind > limits.txn_commits_behind_max:
            self.rollback()
            raise TransactionTooOldError(
                f"transaction {self.id} is {age:.1f} s old and {behind} commits behind, over "
                f"txn_age_seconds_max={limits.txn_age_seconds_max} or txn_commits_behind_max="
                f"{limits.txn_commits_behind_max}; retry it and keep transactions short"
            )


class _Desc:
    """Inverts byte-string order so `heapq.merge` can merge descending streams."""

    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return self.key > other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.key == other.key

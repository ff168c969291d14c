"""The embedded database: `keeldb.open(path)`.

It wraps the sans-IO `LsmEngine` with real files (`RealDisk`), a process lock, thread safety,
group commit and two background threads that drive the engine's bounded flush and
compaction steps. The same engine steps run inline in tests and in the simulator.

    >>> import keeldb
    >>> with keeldb.open(str(tmp_path / "db")) as db:          # doctest: +SKIP
    ...     db.put(b"k", b"v")
    ...     db.get(b"k")
    b'v'

Threads: readers never wait for writers or compaction (they read an immutable version;
a point read that hits the block cache takes no lock, a block miss or a scan page takes one
short lock around the caches). Writers queue; the writer at the head
of the queue (the leader) merges the batches queued behind it into one WAL record and at most
one fsync (group commit, as in LevelDB/RocksDB), then wakes the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from keeldb import limits
from keeldb.errors import (
    BackgroundJobCancelledError,
    ClosedError,
    ConfigError,
    InvalidKeyError,
    KeeldbError,
    LimitExceededError,
    LockedError,
    StorageIOError,
    WriteStallError,
)
from keeldb.runtime.real.compactor import ProcessRunner
from keeldb.runtime.real.disk import RealDisk
from keeldb.storage.engine import (
    KIND_DELETE,
    KIND_PUT,
    STALL_SLOWDOWN,
    STALL_STOP,
    Options,
    Stats,
    VerifyReport,
    check_key,
    check_ops,
    check_scan_args,
    check_value,
)
from keeldb.storage.lsm import LsmEngine
from keeldb.storage.memory import MemoryEngine
from keeldb.storage.mvcc import NAMESPACE as MVCC_NAMESPACE
from keeldb.txn.local import Transaction, TransactionManager
from keeldb.types import SYNC_POLICIES

LOCK_FILE = "LOCK"
ENGINES = ("lsm", "memory")
_KEY_MAX = limits.key_bytes_max
_VALUE_MAX = limits.value_bytes_max
_BATCH_OPS_MAX = limits.batch_ops_max
_BATCH_BYTES_MAX = limits.batch_bytes_max
# Where flushes and compactions run: a worker process (the writers keep the GIL) or threads.
BACKGROUNDS = ("process", "thread")

Op = tuple[int, bytes, bytes]


class _Writer:
    """One queued batch. A writer that finds the queue busy blocks on its own `wake` lock
    until the leader releases it: either done (with `seq` or `error`) or made the leader."""

    __slots__ = ("ops", "user_bytes", "done", "error", "seq", "wake")

    def __init__(self, ops: list[Op], user_bytes: int) -> None:
        self.ops = ops
        self.user_bytes = user_bytes
        self.done = False
        self.error: BaseException | None = None
        self.seq = 0
        self.wake: Any = None


def _holder_dead(holder: str) -> bool:
    """Whether the LOCK's content names a process of this host that no longer runs: then the
    lock is held only by its orphaned worker process, which exits within moments."""
    fields = dict(f.partition("=")[::2] for f in holder.split())
    if fields.get("host") != socket.gethostname() or not fields.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(fields["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _flock(fd: int, holder_dead: bool) -> bool:
    """Try the lock; when its holder is dead, keep trying while its orphan worker exits."""
    deadline = time.monotonic() + (limits.orphan_lock_wait_ms / 1000 if holder_dead else 0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(limits.background_tick_ms / 1000)


def _acquire_lock(path: str) -> int:
    """flock the LOCK file; its content names the holder for the error of the next one."""
    lock_path = os.path.join(path, LOCK_FILE)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    holder = ""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = True
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown holder"
        locked = _flock(fd, _holder_dead(holder))
    if not locked:
        os.close(fd)
        raise LockedError(
            f"{path!r} is open in another process ({holder}); close it there first, or open "
            "a different directory"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
    return fd


class Snapshot:
    """A consistent read-only view; close it (or use `with`) to let compaction reclaim space."""

    def __init__(self, db: DB, snap: Any) -> None:
        self._db = db
        self._snap = snap
        self.seq: int = snap.seq

    def get(self, key: bytes) -> bytes | None:
        self._db._check_open()
        return self._snap.get(key)  # type: ignore[no-any-return]

    def scan(self, start: bytes | None = None, end: bytes | None = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self._db._check_open()
        return _user_scan(self._snap.scan, start, end, reverse, limit)

    def close(self) -> None:
        if not self._db._closed:
            self._snap.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The transaction layer's keyspace: hidden from plain scans, refused by plain writes.
_RESERVED = MVCC_NAMESPACE
assert _RESERVED[:1] == b"\0", "put()'s fast reserved-key check tests the first byte only"
_RESERVED_END = MVCC_NAMESPACE[:-1] + bytes([MVCC_NAMESPACE[-1] + 1])


def _refuse_reserved(key: bytes) -> None:
    raise InvalidKeyError(
        f"keys beginning with {_RESERVED!r} are reserved for transactions; "
        "use db.transaction() to write transactional data, or pick another prefix")


def _user_scan(scan: Any, start: bytes | None, end: bytes | None, reverse: bool,
               limit: int | None) -> Iterator[tuple[bytes, bytes]]:
    """`scan` over [start, end) with the reserved keyspace cut out."""
    check_scan_args(start, end, limit)  # fail now, not when the chained scan is first read
    overlaps = (start is None or start < _RESERVED_END) and (end is None or end > _RESERVED)
    if not overlaps:
        return scan(start, end, reverse, limit)  # type: ignore[no-any-return]
    below = (start, min(end, _RESERVED) if end is not None else _RESERVED)
    above = (max(start, _RESERVED_END) if start is not None else _RESERVED_END, end)
    parts = [r for r in (below, above) if r[1] is None or r[0] is None or r[0] < r[1]]
    if reverse:
        parts.reverse()
    chained = itertools.chain.from_iterable(scan(lo, hi, reverse, limit) for lo, hi in parts)
    return itertools.islice(chained, limit) if limit is not None else chained


class _TxnStore:
    """The transaction layer's view of a DB: its raw write and unfiltered reads."""

    def __init__(self, db: DB) -> None:
        self._db = db

    def get(self, key: bytes) -> bytes | None:
        self._db._check_open()
        return self._db.engine.get(key)  # type: ignore[no-any-return]

    def scan(self, start: bytes | None = None, end: bytes | None = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self._db._check_open()
        return self._db.engine.scan(start, end, reverse, limit)  # type: ignore[no-any-return]

    def write(self, ops: list[tuple[int, bytes, bytes]]) -> int:
        return self._db.write(ops)


class WriteBatch:
    """Ops applied atomically when the `with` block exits normally; discarded on exception."""

    def __init__(self, db: DB) -> None:
        self._db = db
        self._ops: list[Op] = []
        self._bytes = 0
        self._done = False

    def put(self, key: bytes, value: bytes) -> None:
        # Inline fast checks (module constants, no attribute lookups): this runs once per
        # key of every batch; anything unusual takes the checked path with its typed errors.
        if type(key) is not bytes or not 0 < len(key) <= _KEY_MAX:
            key = check_key(key)
        if type(value) is not bytes or len(value) > _VALUE_MAX:
            value = check_value(value)
        if not key[0] and key.startswith(_RESERVED):
            _refuse_reserved(key)
        ops = self._ops
        size = self._bytes + len(key) + len(value)
        if size > _BATCH_BYTES_MAX or len(ops) >= _BATCH_OPS_MAX or self._done:
            self._add(KIND_PUT, key, value)
            return
        self._bytes = size
        ops.append((KIND_PUT, key, value))

    def delete(self, key: bytes) -> None:
        key = check_key(key)
        if key.startswith(_RESERVED):
            _refuse_reserved(key)
        self._add(KIND_DELETE, key, b"")

    def _add(self, kind: int, key: bytes, value: bytes) -> None:
        if self._done:
            raise ClosedError("this write batch was already committed or discarded; start a "
                              "new one with db.write_batch()")
        if len(self._ops) >= limits.batch_ops_max:
            raise LimitExceededError(f"batch already holds batch_ops_max={limits.batch_ops_max} "
                                     "ops; commit it and start another")
        self._bytes += len(key) + len(value)
        if self._bytes > limits.batch_bytes_max:
            raise LimitExceededError(f"batch would hold {self._bytes} bytes, over "
                                     f"batch_bytes_max={limits.batch_bytes_max}; commit it and "
                                     "start another")
        self._ops.append((kind, key, value))

    def __len__(self) -> int:
        return len(self._ops)

    def commit(self) -> int:
        """Apply the batch now; returns its sequence number (0 for an empty batch)."""
        if self._done:
            raise ClosedError("this write batch was already committed or discarded")
        self._done = True
        if not self._ops:
            return 0
        return self._db._write(self._ops, self._bytes)

    def discard(self) -> None:
        self._done = True
        self._ops = []

    def __enter__(self) -> WriteBatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None and not self._done:
            self.commit()
        else:
            self.discard()


class DB:
    """An open keeldb store. Thread-safe; one per directory per process (a file lock)."""

    def __init__(self, path: str, *, sync: str = "batch",
                 sync_interval_ms: int = limits.sync_batch_interval_ms_default,
                 sync_bytes: int = limits.sync_batch_bytes_default, engine: str = "lsm",
                 create: bool = True, background: str = "process", **options: Any) -> None:
        if background not in BACKGROUNDS:
            raise ConfigError(f"background={background!r} is not one of {BACKGROUNDS}")
        if sync not in SYNC_POLICIES:
            raise ConfigError(f"sync={sync!r} is not one of {SYNC_POLICIES}")
        if engine not in ENGINES:
            raise ConfigError(f"engine={engine!r} is not one of {ENGINES}")
        if sync_interval_ms < 1 or sync_bytes < 1:
            raise ConfigError(f"sync_interval_ms ({sync_interval_ms}) and sync_bytes "
                              f"({sync_bytes}) must be >= 1")
        try:
            opts = Options(**options)
        except TypeError as exc:
            raise ConfigError(f"unknown option ({exc}); options are the fields of "
                              "keeldb.storage.engine.Options") from exc
        self.path = str(path)
        self.sync_policy = sync
        self._sync_always = sync == "always"
        self._sync_batch = sync == "batch"
        self._sync_interval = sync_interval_ms / 1000
        self._sync_bytes = sync_bytes
        self._closed = False
        if not create and not os.path.isdir(self.path):
            raise ConfigError(f"no store at {self.path!r}; pass create=True to make one")
        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = _acquire_lock(self.path)
        self._txns: TransactionManager | None = None  # created by the first transaction()
        # The unfiltered view a TransactionManager works on (plain scans hide its keyspace).
        self.txn_store = _TxnStore(self)
        self._txn_init_lock = threading.Lock()
        self._mu = threading.RLock()  # engine state (versions, snapshots)
        self._read_mu = threading.Lock()  # shared table/block caches
        self._flush_lock = threading.Lock()  # one flush step at a time
        self._compact_lock = threading.Lock()  # one compaction step at a time
        self._wal_lock = threading.Lock()  # WAL append, fsync and rotation
        self._qlock = threading.Lock()  # the group commit queue
        self._queue: deque[_Writer] = deque()
        self._bg_cv = threading.Condition(threading.Lock())  # background wake-ups, stalls
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._bg_error: BaseException | None = None
        self.engine: Any
        try:
            if engine == "lsm":
                self.engine = LsmEngine(RealDisk(self.path), opts, create=create,
                                        mutex=self._mu, read_mutex=self._read_mu)
            else:
                self.engine = MemoryEngine()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._seen_version: Any = getattr(self.engine, "version", None)
        self._lsm = isinstance(self.engine, LsmEngine)
        self.background = background if self._lsm else "thread"
        self._runner: ProcessRunner | None = None
        if self._lsm and background == "process":
            self._runner = ProcessRunner(self.path, self._lock_fd, self.engine.runner.spec,
                                         self.engine.runner, opts.memtable_bytes)
            self.engine.runner = self._runner
        self._slowdown_files = opts.l0_slowdown_files
        # The engine's single-op write (None: the engine has none, puts go as batches of one).
        self._write_one_fast: Any = self.engine.write_one if self._lsm else None
        self.get = self.engine.get  # type: ignore[method-assign]
        self._stop = False
        self._idle_seq = -1  # last_seq seen by the idle check, and since when
        self._idle_since = 0.0
        # Two workers: a long compaction step must not hold up flushes (writers would stall
        # on full memtables meanwhile); the engine installs their results one at a time.
        self._workers = [
            threading.Thread(target=self._background, args=(role,), daemon=True,
                             name=f"keeldb-{role}:{self.path}")
            for role in ("flush", "compact")
        ]
        for worker in self._workers:
            worker.start()

    # --- writes ------------------------------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> None:
        if type(key) is not bytes or not 0 < len(key) <= _KEY_MAX:
            key = check_key(key)
        if type(value) is not bytes or len(value) > _VALUE_MAX:
            value = check_value(value)
        if not key[0] and key.startswith(_RESERVED):
            _refuse_reserved(key)
        self._write_one(KIND_PUT, key, value, len(key) + len(value))

    def delete(self, key: bytes) -> None:
        if type(key) is not bytes or not 0 < len(key) <= limits.key_bytes_max:
            key = check_key(key)
        if key.startswith(_RESERVED):
            _refuse_reserved(key)
        self._write_one(KIND_DELETE, key, b"", len(key))

    def write(self, ops: list[tuple[int, bytes, bytes]]) -> int:
        """Apply raw `(kind, key, value)` ops atomically; returns the batch's seq.

        The raw path the transaction layer commits through: it does not refuse the reserved
        transactional keyspace, so do not write keys beginning with it here.
        """
        ops = list(ops)
        return self._write(ops, check_ops(ops))

    def write_batch(self) -> WriteBatch:
        self._check_open()
        return WriteBatch(self)

    def _write_one(self, kind: int, key: bytes, value: bytes, user_bytes: int) -> int:
        """One checked op (`put`, `delete`): when nobody else is writing and no stall is
        near, straight into the engine's single-op path; otherwise a batch of one."""
        if not self._queue and self._write_one_fast is not None and \
                self._wal_lock.acquire(False):
            try:
                version = self.engine._version  # (the attribute: no property call per write)
                if not version.imms and len(version.l0) < self._slowdown_files:
                    seq: int = self._write_one_fast(kind, key, value, user_bytes,
                                                    self._sync_always)
                    if self._sync_batch:
                        self._unsynced += user_bytes
                        if self._unsynced >= self._sync_bytes:
                            self._sync_locked()
                    if self.engine._version is not self._seen_version:
                        self._kick_background()
                    return seq
            finally:
                self._wal_lock.release()
        return self._write([(kind, key, value)], user_bytes)

    def _write(self, ops: list[Op], user_bytes: int) -> int:
        """Group commit: join the queue; the writer at its head leads a group."""
        if self._closed:
            self._check_open()
        if not self._queue and self._lsm and self._wal_lock.acquire(False):
            # Fast path, nobody else writing: no queue. A writer arriving now queues up and
            # its leader waits for the WAL lock, so the order stays one at a time.
            try:
                version = self.engine._version  # (the attribute: no property call per write)
                if version.imms or len(version.l0) >= self._slowdown_files:
                    self._wal_lock.release()
                    try:
                        self._wait_for_room()
                    finally:
                        self._wal_lock.acquire()
                seq = self.engine.write_checked(ops, user_bytes, self._sync_always)
                if self._sync_batch:
                    self._unsynced += user_bytes
                    if self._unsynced >= self._sync_bytes:
                        self._sync_locked()
            finally:
                self._wal_lock.release()
            if self.engine._version is not self._seen_version:
                self._kick_background()
            return seq  # type: ignore[no-any-return]
        me = _Writer(ops, user_bytes)
        with self._qlock:
            queue = self._queue
            queue.append(me)
            if len(queue) > 1:  # somebody is writing: wait to be woken
                me.wake = threading.Lock()
                me.wake.acquire()
        if me.wake is not None:
            me.wake.acquire()
            if me.done:
                if me.error is not None:
                    raise me.error
                return me.seq
        return self._lead(me)

    def _lead(self, me: _Writer) -> int:
        """Write `me` and the writers queued behind it as one WAL record (and one fsync)."""
        with self._qlock:
            queue = self._queue
            assert queue[0] is me, "only the head of the queue leads"
            group = [me]
            total = me.user_bytes
            count = len(me.ops)
            for i in range(1, len(queue)):
                other = queue[i]
                if total + other.user_bytes > limits.group_commit_bytes_max or \
                        count + len(other.ops) > limits.batch_ops_max:
                    break
                group.append(other)
                total += other.user_bytes
                count += len(other.ops)
        error: BaseException | None = None
        seq = 0
        try:
            self._wait_for_room()
            ops = me.ops if len(group) == 1 else [op for w in group for op in w.ops]
            with self._wal_lock:
                seq = self.engine.write_checked(ops, total, self._sync_always)
                if self._sync_batch:
                    self._unsynced += total
                    if self._unsynced >= self._sync_bytes:
                        self._sync_locked()
            if self._lsm and self.engine.version is not self._seen_version:
                self._kick_background()
        except BaseException as exc:  # the whole group shares one outcome
            error = exc
        with self._qlock:
            for w in group:
                popped = queue.popleft()
                assert popped is w, "group commit queue out of order"
            successor = queue[0] if queue else None
        for w in group[1:]:
            w.seq = seq
            w.error = error
            w.done = True
            w.wake.release()
        if successor is not None:
            successor.wake.release()  # not done: it wakes up as the next leader
        if error is not None:
            raise error
        return seq

    def _wait_for_room(self) -> None:
        """Write stall: wait (bounded) while the engine says writes must stop; pause briefly
        while it says slow down."""
        state = self.engine.write_stall()
        if state == 0:
            return
        started = time.monotonic()
        counters = getattr(self.engine, "counters", None)
        if counters is not None:
            counters["write_stalls"] += 1
        if state == STALL_SLOWDOWN:
            time.sleep(limits.write_slowdown_ms / 1000)
        deadline = started + limits.write_stall_wait_ms_max / 1000
        with self._bg_cv:
            self._bg_cv.notify_all()
            while self.engine.write_stall() == STALL_STOP and not self._closed:
                if self._bg_error is not None:
                    raise StorageIOError(f"background work failed ({self._bg_error}); writes "
                                         "cannot proceed: reopen the store")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WriteStallError(
                        f"writes stalled for {limits.write_stall_wait_ms_max} ms waiting for "
                        "flush/compaction; the disk may be too slow, retry later")
                self._bg_cv.wait(min(remaining, limits.background_tick_ms / 1000))
        if hasattr(self.engine, "stall_seconds"):
            self.engine.stall_seconds += time.monotonic() - started

    def _sync_locked(self) -> None:
        """fsync the WAL; the caller holds `_wal_lock` (no append or rotation meanwhile)."""
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.engine.sync()

    def _kick_background(self) -> None:
        engine = self.engine
        if isinstance(engine, LsmEngine):
            version = self._seen_version = engine.version
            if version.imms or len(version.levels[0]) >= engine.options.l0_compaction_trigger:
                with self._bg_cv:
                    self._bg_cv.notify_all()

    # --- background --------------------------------------------------------------------------
    def _background(self, role: str) -> None:
        """Drive flush steps and the 'batch' sync timer (role "flush"), or compaction steps
        (role "compact"), until closed."""
        # Only the 'batch' sync timer needs the short tick; work is otherwise kicked by a
        # notify, so poll rarely (each poll takes the GIL from the serving thread).
        if role == "flush" and self.sync_policy == "batch":
            tick = min(limits.background_tick_ms / 1000, self._sync_interval)
        else:
            tick = limits.background_idle_tick_ms / 1000
        step = self._flush_one if role == "flush" else self._compact_one
        while True:
            with self._bg_cv:
                if self._stop:
                    return
                self._bg_cv.wait(tick)
                if self._stop:
                    return
            try:
                if role == "flush":
                    self._periodic_sync()
                while not self._stop and step():
                    with self._bg_cv:
                        self._bg_cv.notify_all()
                if role == "compact" and not self._stop:
                    self._idle_compact()
                if self._runner is not None and not self._stop:
                    # Idle worker processes give their memory back; from both threads, so a
                    # long compaction does not keep an idle flush worker's memory.
                    self._runner.recycle_idle()
            except BackgroundJobCancelledError:
                return  # close() cancelled the job: nothing was installed
            except BaseException as exc:  # keep reads working; writers see the error
                self._bg_error = exc
                with self._bg_cv:
                    self._bg_cv.notify_all()
                return

    def _periodic_sync(self) -> None:
        if self.sync_policy != "batch" or not self._unsynced:
            return
        if time.monotonic() - self._last_sync < self._sync_interval:
            return
        with self._wal_lock:
            if self._unsynced and not self._closed:
                with contextlib.suppress(KeeldbError):  # marks the engine read-only on failure
                    self._sync_locked()

    def _idle_compact(self) -> None:
        """Reads probe every L0 table, so once writes have paused for
        `limits.l0_idle_compaction_ms`, merge L0 into L1 even below the trigger (read-path
        proposal). Writers never wait for it: it runs like any compaction step, and only
        while nothing is being written."""
        engine = self.engine
        if not self._lsm:
            return
        seq = engine.last_seq
        now = time.monotonic()
        if seq != self._idle_seq:
            self._idle_seq, self._idle_since = seq, now
            return
        version = engine.version
        if now - self._idle_since < limits.l0_idle_compaction_ms / 1000 or version.imms or \
                len(version.levels[0]) < limits.l0_idle_compaction_files:
            return
        with self._compact_lock:
            if not self._closed:
                engine.compact_step(True)  # with L0 non-empty, force picks L0 first

    def _flush_one(self) -> bool:
        with self._flush_lock:
            return not self._closed and bool(self.engine.flush_step())

    def _compact_one(self) -> bool:
        with self._compact_lock:
            return not self._closed and bool(self.engine.compact_step())

    # --- reads -------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None. (Replaced per instance by the engine's own `get`,
        which raises ClosedError after close, to save a Python call per read.)"""
        if self._closed:
            self._check_open()
        return self.engine.get(key)  # type: ignore[no-any-return]

    def scan(self, start: bytes | None = None, end: bytes | None = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self._check_open()
        return _user_scan(self.engine.scan, start, end, reverse, limit)

    def snapshot(self) -> Snapshot:
        self._check_open()
        return Snapshot(self, self.engine.snapshot())

    def transaction(self, isolation: str = "serializable") -> Transaction:
        """Begin an MVCC transaction (`read_committed`, `snapshot` or `serializable`).

        Use it as a context manager: it commits on a clean exit and rolls back on an
        exception. Transactional keys live in their own keyspace; see docs/transactions.md.
        """
        self._check_open()
        with self._txn_init_lock:
            if self._txns is None:
                self._txns = TransactionManager(self.txn_store, lock=threading.Lock(),
                                                clock=time.monotonic, sleep=time.sleep)
        return self._txns.begin(isolation)

    def sleep(self, seconds: float) -> None:
        """How `keeldb.transactional(db)` waits between retries (a port tests can replace)."""
        time.sleep(seconds)

    # --- maintenance -------------------------------------------------------------------------
    def stats(self) -> Stats:
        self._check_open()
        return self.engine.stats()  # type: ignore[no-any-return]

    def flush(self) -> None:
        """Write the memtable to a table now (and wait for every pending flush)."""
        self._check_open()
        self._check_background()
        with self._flush_lock:
            with self._wal_lock:
                self.engine.rotate()
            while self.engine.flush_step():
                pass
        with self._bg_cv:
            self._bg_cv.notify_all()

    def compact(self) -> None:
        """Flush, then compact until no level has work left."""
        self.flush()
        with self._compact_lock:
            while self.engine.compact_step(True):
                pass
        with self._bg_cv:
            self._bg_cv.notify_all()

    def sync(self) -> None:
        """Make every write acknowledged so far durable (fsync the WAL)."""
        self._check_open()
        with self._wal_lock:
            self._sync_locked()

    def verify(self) -> VerifyReport:
        self._check_open()
        return self.engine.verify()  # type: ignore[no-any-return]

    def _check_background(self) -> None:
        if self._bg_error is not None:
            raise StorageIOError(f"background flush/compaction failed ({self._bg_error}); "
                                 "the store is read-only until reopened")

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the store {self.path!r} is closed; open it again with "
                              "keeldb.open(path)")

    def close(self) -> None:
        """Stop background work, sync the WAL (every policy but a failed store) and unlock."""
        if self._closed:
            return
        while self._queue:  # let queued writers finish
            time.sleep(limits.background_tick_ms / 1000)
        with self._bg_cv:
            self._stop = True
            self._bg_cv.notify_all()
        if self._runner is not None:
            self._runner.cancel()  # a running job is dropped: its inputs are still live
        for worker in self._workers:
            worker.join()
        with self._flush_lock, self._compact_lock, self._wal_lock:
            self._closed = True
            with contextlib.suppress(KeeldbError):
                if self.sync_policy != "never":
                    self.engine.sync()
            self.engine.close()
        if self._runner is not None:
            self._runner.close()  # the workers hold the lock fd too: gone before unlocking
        os.close(self._lock_fd)

    def __enter__(self) -> DB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<keeldb.DB {self.path!r} {state} sync={self.sync_policy}>"


def open(path: str | os.PathLike[str], *, sync: str = "batch",  # noqa: A001 - public API name
         sync_interval_ms: int = limits.sync_batch_interval_ms_default,
         sync_bytes: int = limits.sync_batch_bytes_default, engine: str = "lsm",
         create: bool = True, background: str = "process", **options: Any) -> DB:
    """Open (or create) the store in directory `path`.

    `sync`: "always" (each write is fsynced before it returns; concurrent writers share
    fsyncs), "batch" (fsync at most every `sync_interval_ms` or `sync_bytes`), "never" (the
    OS decides). `background`: "process" runs flushes and compactions in a worker process,
    so they do not compete with the writers for the GIL (falls back to in-process if the
    worker fails); "thread" runs them in background threads of this process.
    `options` are fields of `keeldb.storage.engine.Options`, e.g. `block_cache_bytes`: raw
    table blocks kept in memory (they cost about their file bytes; default 128 MiB).
    """
    return DB(os.fspath(path), sync=sync, sync_interval_ms=sync_interval_ms,
              sync_bytes=sync_bytes, engine=engine, create=create, background=background,
              **options)

"""The LSM engine: WAL + memtables + leveled tables, sans-IO over the `Disk` port.

Concurrency model (the embedded layer adds threads; the simulator calls everything inline):
- Writers are serialised by the caller (one `write` at a time).
- Readers never lock: they read `self._version`, an immutable `Version` (memtables + level
  lists) swapped atomically. The active memtable inside it takes writes in place; entries
  carry seqs so a snapshot ignores what is newer than itself.
- Background work runs as bounded steps (`flush_step`, `compact_step`). At most one flush
  and one compaction run at a time (the caller serialises each kind), possibly concurrently:
  a step does its heavy I/O without the state lock and takes it only to install its result
  (manifest write + version swap), applied as an edit on top of whatever the other installed.
- `mutex` (any re-entrant context manager, e.g. a `threading.RLock`) guards the short
  critical sections: memtable rotation, version swaps, snapshot and pin registration.
  `read_mutex` guards the shared table and block caches during table reads (scans take it
  per chunk of `limits.scan_chunk_entries` pairs, never across a yield). Compaction reads its
  inputs through private readers, so it never holds `read_mutex`. Default: no locking.

Durability: every batch is one WAL record; `write(ops, sync=True)` fsyncs it before
returning. A memtable's WAL is deleted only after the table it became is in the manifest.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from xxhash import xxh3_64_intdigest

from keeldb import limits
from keeldb.errors import (
    ClosedError,
    ConfigError,
    CorruptionError,
    KeeldbError,
    LimitExceededError,
    StorageIOError,
    WriteStallError,
)
from keeldb.ports import Disk
from keeldb.storage import compaction as cp
from keeldb.storage import jobs
from keeldb.storage.cache import BlockCache, TableCache
from keeldb.storage.engine import (
    KIND_DELETE,
    KIND_PUT,
    STALL_NONE,
    STALL_SLOWDOWN,
    STALL_STOP,
    LevelStats,
    Options,
    SeqSnapshot,
    Stats,
    VerifyReport,
    check_key,
    check_ops,
    check_value,
)
from keeldb.storage.lsm_scan import LsmScan
from keeldb.storage.manifest import (
    MANIFEST_TMP,
    ManifestState,
    TableMeta,
    read_manifest,
    table_name,
    verify_store,
    write_manifest,
)
from keeldb.storage.manifest import (
    file_number as _file_number,
)
from keeldb.storage.memtable import Memtable
from keeldb.storage.sstable import DELETED, MISS, ReadStats, TableReader
from keeldb.storage.wal import create_wal, encode_one, encode_record, read_wal, wal_name

SEQ_MAX = (1 << 63) - 1
_KEY_MAX = limits.key_bytes_max
_ABOVE_KEYS = b"\xff" * (_KEY_MAX + 1)  # sorts after every valid key
_IMMS_MAX = limits.memtable_immutable_count_max


class Version:
    """What a reader needs, swapped as one object: memtables (newest first) and levels."""

    __slots__ = ("mem", "imms", "levels", "l0", "sorted_levels", "deep", "readers")

    def __init__(self, mem: Memtable, imms: tuple[Memtable, ...], levels: cp.Levels) -> None:
        self.mem = mem
        self.imms = imms
        self.levels = levels
        # Flat lookup structures for point reads (few attribute loads per table probed):
        # L0 as (smallest, largest, id, name) newest first; each non-empty sorted level as
        # (largest keys, smallest keys + a sentinel above every key, open readers or None,
        # ids, names) for one bisect: `smallests[i] <= key` is then false past the last table.
        self.l0 = tuple((t.smallest, t.largest, t.id, t.name) for t in levels[0])
        self.sorted_levels: tuple[tuple[list[bytes], list[bytes], list[TableReader | None],
                                        list[int], list[str]], ...] = tuple(
            ([t.largest for t in tables], [t.smallest for t in tables] + [_ABOVE_KEYS],
             [None] * len(tables), [t.id for t in tables], [t.name for t in tables])
            for tables in levels[1:] if tables)
        # Each non-empty level below L0 as (tables, largest keys, entries), for scans.
        self.deep = tuple((tables, [t.largest for t in tables], sum(t.entries for t in tables))
                          for tables in levels[1:] if tables)
        # Open readers of this version's tables by id, filled as reads reach them: saves
        # the table cache's LRU bookkeeping on every probe.
        self.readers: dict[int, TableReader] = {}


class LsmSnapshot(SeqSnapshot):
    """A registered sequence number of the LSM engine: reads see the store as of `seq`."""


class LsmEngine(LsmScan):
    """An ordered, durable key-value engine; see the module docstring. Range scans
    (`scan` and the page/chunk machinery) are inherited from `LsmScan` (lsm_scan.py)."""

    def __init__(self, disk: Disk, options: Options | None = None, *, create: bool = True,
                 mutex: AbstractContextManager[Any] | None = None,
                 read_mutex: AbstractContextManager[Any] | None = None) -> None:
        self.disk = disk
        self.options = options = options or Options()
        self._check_options(options)
        null = contextlib.nullcontext()
        self._mu: AbstractContextManager[Any] = mutex if mutex is not None else null
        self._rmu: AbstractContextManager[Any] = read_mutex if read_mutex is not None else null
        self._hook: Callable[[str], None] | None = options.crash_hook
        self.read_stats = ReadStats()
        self.block_cache = BlockCache(options.block_cache_bytes)
        self.table_cache = TableCache(disk, options.table_cache_files, self.block_cache,
                                      self.read_stats)
        self._closed = False
        self._failed: str | None = None
        self._snapshots: dict[int, int] = {}
        self._snapshot_count = 0
        self._snap_max = -1
        self._pins: dict[int, list[Any]] = {}  # id(version) -> [version, count]
        self._obsolete: list[TableMeta] = []
        self._cursors: dict[int, bytes] = {}
        # Pages the column read skips after failures in a row (lsm_scan.PAGE_SKIPS_MAX): the
        # current run length and what is left of it. Racy counters: a hint only.
        self._page_skips = self._page_skipped = 0
        self._spec = jobs.TableSpec.of(options)
        # Runs flush and compaction jobs; the embedded DB swaps in a worker-process runner.
        self.runner: jobs.JobRunner = jobs.InlineRunner(disk, self._spec)
        self.reads = 0
        self._memtable_bytes = options.memtable_bytes
        # At this memtable size the runner may get ready for its first job (start a worker
        # while the process is small: see ProcessRunner.warm); once per engine.
        self._warm_bytes = options.memtable_bytes // limits.worker_job_min_memtable_divisor
        self.stall_seconds = 0.0  # the embedded layer adds the time writers waited
        self._user_bytes = self._wal_bytes = 0  # counters kept out of the dict (per write)
        self._l0_stop = options.l0_stop_files
        self._counters = dict(user_bytes=0, wal_bytes=0, flush_bytes=0, compaction_bytes=0,
                             manifest_bytes=0, flushes=0, compactions=0,
                             write_stalls=0, trivial_moves=0, wal_tail_truncated=0)
        self._recover(create)

    @staticmethod
    def _check_options(o: Options) -> None:
        if o.memtable_bytes < 1024:
            raise ConfigError(f"memtable_bytes={o.memtable_bytes} is below 1024; use a larger "
                              f"memtable (default {limits.memtable_bytes_default})")
        if not 1 <= o.l0_compaction_trigger <= o.l0_slowdown_files <= o.l0_stop_files:
            raise ConfigError(f"need 1 <= l0_compaction_trigger ({o.l0_compaction_trigger}) <= "
                              f"l0_slowdown_files ({o.l0_slowdown_files}) <= l0_stop_files "
                              f"({o.l0_stop_files}); fix the options")
        if o.level_size_ratio < 2 or o.level1_bytes < 1 or o.table_bytes < 1:
            raise ConfigError("level_size_ratio must be >= 2 and level1_bytes, table_bytes "
                              f">= 1 (got {o.level_size_ratio}, {o.level1_bytes}, "
                              f"{o.table_bytes})")

    # --- opening and recovery ---------------------------------------------------------------
    def _recover(self, create: bool) -> None:
        disk = self.disk
        state = read_manifest(disk)
        if state is None:
            if any(_file_number(n) is not None for n in disk.list()):
                raise CorruptionError("the directory holds tables or logs but no MANIFEST; "
                                      "restore MANIFEST from a backup", path="MANIFEST")
            if not create:
                raise ConfigError("no keeldb store in this directory; pass create=True to "
                                  "make one")
            state = ManifestState(next_file=2, last_seq=0, log_number=1)
            # A brand-new store gets its manifest before any other file, so a crash during
            # creation never leaves logs without a manifest.
            write_manifest(disk, state, self._hook)
        numbers = [n for n in map(_file_number, disk.list()) if n is not None]
        next_file = max([state.next_file] + [n + 1 for n in numbers])
        live = state.table_ids()
        for name in disk.list():  # orphans of interrupted flushes, compactions, updates
            number = _file_number(name)
            if name == MANIFEST_TMP or (name.endswith(".sst") and number not in live) or (
                    name.endswith(".log") and number is not None and number < state.log_number):
                disk.remove(name)
        for t in sorted(live):
            assert disk.exists(table_name(t)), f"manifest lists missing table {t}"
        last_seq = state.last_seq
        replay = Memtable(wal_number=0)
        old_logs = sorted(n for n in disk.list()
                          if n.endswith(".log") and (_file_number(n) or 0) >= state.log_number)
        for name in old_logs:
            for seq, ops in read_wal(disk, name, on_truncate=self._note_truncate):
                assert seq > last_seq, f"{name}: seq {seq} is not above {last_seq}"
                replay.apply(seq, ops, sum(len(k) + len(v) for _, k, v in ops), -1)
                last_seq = seq
        self._last_seq = self._visible_seq = last_seq
        self._next_file = next_file
        levels = state.levels
        if len(replay):
            replay.freeze()
            meta = self._write_table(replay.flush_entries(), self._alloc(), "flush-mid-table")
            levels = cp.add_l0(levels, meta)
            self.counters["flushes"] += 1
        wal = create_wal(disk, self._alloc())
        self._wal = wal
        self._wal_append = wal.file.append
        new_state = ManifestState(next_file=self._next_file, last_seq=last_seq,
                                  log_number=wal.number, levels=levels)
        self.counters["manifest_bytes"] += write_manifest(disk, new_state, self._hook)
        self._state = new_state
        for name in old_logs:
            disk.remove(name)
        self._version = Version(Memtable(wal.number), (), levels)

    def _note_truncate(self, dropped: int) -> None:
        self.counters["wal_tail_truncated"] += dropped

    def _alloc(self) -> int:
        with self._mu:
            number = self._next_file
            self._next_file += 1
            return number

    # --- writes ------------------------------------------------------------------------------
    def write(self, ops: list[tuple[int, bytes, bytes]], sync: bool = False) -> int:
        """Apply a batch atomically; durable before return when `sync`. Returns its seq."""
        self._check_writable()
        return self.write_checked(ops, check_ops(ops), sync)

    def write_checked(self, ops: list[tuple[int, bytes, bytes]], user_bytes: int,
                      sync: bool = False) -> int:
        """`write` for ops already validated by `check_ops` (the embedded group commit)."""
        if self._failed is not None or self._closed:
            self._check_writable()
        version = self._version
        if version.imms or len(version.l0) >= self._l0_stop:
            self._refuse_if_stopped()
        seq = self._last_seq + 1
        record = encode_record(seq, ops)
        self._log(record, sync)
        self._last_seq = seq
        self._user_bytes += user_bytes
        self._wal_bytes += len(record)
        with self._mu:
            mem = self._version.mem
            mem.apply(seq, ops, user_bytes, self._snap_max)
            self._visible_seq = seq
            if mem.bytes >= self._memtable_bytes and len(self._version.imms) < _IMMS_MAX:
                self._rotate()
        if mem.bytes >= self._warm_bytes:
            self._warm()
        return seq

    def write_one(self, kind: int, key: bytes, value: bytes, user_bytes: int,
                  sync: bool = False) -> int:
        """`write_checked([(kind, key, value)], ...)` for one checked op: a single put or
        delete costs no batch list, a cheaper WAL encoding and a cheaper memtable insert.
        The same steps in the same order, so the same crash and durability guarantees."""
        if self._failed is not None or self._closed:
            self._check_writable()
        version = self._version
        if version.imms or len(version.l0) >= self._l0_stop:
            self._refuse_if_stopped()
        seq = self._last_seq + 1
        record = encode_one(seq, kind, key, value)
        self._log(record, sync)
        self._last_seq = seq
        self._user_bytes += user_bytes
        self._wal_bytes += len(record)
        with self._mu:
            mem = self._version.mem
            mem.apply_one(seq, kind, key, value, user_bytes, self._snap_max)
            self._visible_seq = seq
            if mem.bytes >= self._memtable_bytes and len(self._version.imms) < _IMMS_MAX:
                self._rotate()
        if mem.bytes >= self._warm_bytes:
            self._warm()
        return seq

    def _log(self, record: bytes, sync: bool) -> None:
        """Append one record to the WAL (and fsync it when `sync`)."""
        try:
            self._wal_append(record)
            if self._hook is not None:
                self._hook("wal-after-write-before-sync")
            if sync:
                self._wal.sync()
        except StorageIOError as exc:
            self._fail(exc)
            raise

    def _refuse_if_stopped(self) -> None:
        if self.write_stall() == STALL_STOP:
            self._counters["write_stalls"] += 1
            raise WriteStallError(
                f"writes are stopped: {len(self._version.levels[0])} L0 tables (stop at "
                f"{self.options.l0_stop_files}) or {len(self._version.imms)} memtables waiting "
                "for flush; run flush_step/compact_step (the embedded DB does) and retry")

    def _warm(self) -> None:
        self._warm_bytes = SEQ_MAX  # never again
        self.runner.warm()

    @property
    def counters(self) -> dict[str, int]:
        """Event and byte counters since open (the write path keeps two as attributes)."""
        c = self._counters
        c["user_bytes"] = self._user_bytes
        c["wal_bytes"] = self._wal_bytes
        return c

    def put(self, key: bytes, value: bytes, sync: bool = False) -> int:
        self._check_writable()
        key, value = check_key(key), check_value(value)
        return self.write_one(KIND_PUT, key, value, len(key) + len(value), sync)

    def delete(self, key: bytes, sync: bool = False) -> int:
        self._check_writable()
        key = check_key(key)
        return self.write_one(KIND_DELETE, key, b"", len(key), sync)

    def sync(self) -> None:
        """fsync the WAL: every write acknowledged so far becomes durable."""
        self._check_writable()
        try:
            self._wal.sync()
        except StorageIOError as exc:
            self._fail(exc)
            raise

    def _rotate(self) -> None:
        """Freeze the active memtable and start a new one with a new WAL (under mu)."""
        version = self._version
        old_wal = self._wal
        try:
            old_wal.sync()  # older logs are complete: only the newest can have a torn tail
            number = self._next_file
            self._next_file += 1
            wal = create_wal(self.disk, number)
        except StorageIOError as exc:
            self._fail(exc)
            raise
        old_wal.close()
        self._wal = wal
        self._wal_append = wal.file.append
        version.mem.freeze()
        self._version = Version(Memtable(wal.number), (version.mem,) + version.imms,
                                version.levels)

    def rotate(self) -> None:
        """Make the active memtable immutable now (db.flush() uses it)."""
        self._check_writable()
        with self._mu:
            if len(self._version.mem) and \
                    len(self._version.imms) < limits.memtable_immutable_count_max:
                self._rotate()

    def write_stall(self) -> int:
        version = self._version
        l0 = len(version.levels[0])
        if l0 >= self.options.l0_stop_files:
            return STALL_STOP
        if version.mem.bytes >= self.options.memtable_bytes and \
                len(version.imms) >= limits.memtable_immutable_count_max:
            return STALL_STOP
        if l0 >= self.options.l0_slowdown_files:
            return STALL_SLOWDOWN
        return STALL_NONE

    def _fail(self, exc: BaseException) -> None:
        """After an I/O error (ENOSPC, failed fsync) the store only reads until reopened.

        A failed fsync may have dropped dirty pages: retrying it and trusting success would
        acknowledge lost data (the "fsyncgate" lesson), so nothing is written again.
        """
        if self._failed is None:
            self._failed = str(exc)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the store is closed; open it again with keeldb.open(path)")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failed is not None:
            raise StorageIOError(f"the store is read-only after an I/O error ({self._failed}); "
                                 "fix the cause (free space, check the disk), then reopen it")

    # --- reads -------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        if type(key) is not bytes or not 0 < len(key) <= _KEY_MAX:
            key = check_key(key)
        if self._closed:
            self._check_open()
        self.reads += 1
        version = self._version
        entry = version.mem.table.get(key)
        if entry is not None:
            return entry[3] if entry[2] else None
        for imm in version.imms:
            entry = imm.table.get(key)
            if entry is not None:
                return entry[3] if entry[2] else None
        # The table search of _get_tables, inlined for the newest version (the hottest read
        # path): `find_value` reads no seq and builds no tuple. No lock unless a block must
        # be read (MISS): cache hits are lock-free.
        h = xxh3_64_intdigest(key)
        try:
            for smallest, largest, tid, name in version.l0:
                if smallest <= key <= largest:
                    r = version.readers.get(tid) or self._reader(version, tid, name)
                    value = r.find_value(key, h)
                    if value is MISS:
                        with self._rmu:
                            value = r.find_value_uncached(key)
                    if value is not None:
                        return None if value is DELETED else value  # type: ignore[no-any-return]
            for largests, smallests, readers, ids, names in version.sorted_levels:
                i = bisect_left(largests, key)
                if smallests[i] <= key:  # the sentinel past the last table never is
                    lr = readers[i]
                    if lr is None:
                        lr = readers[i] = self._reader(version, ids[i], names[i])
                    value = lr.find_value(key, h)
                    if value is MISS:
                        with self._rmu:
                            value = lr.find_value_uncached(key)
                    if value is not None:
                        return None if value is DELETED else value  # type: ignore[no-any-return]
            return None
        except KeeldbError:
            if self._version is version or self._closed:
                raise
        found = self._get_tables(self._version, key, SEQ_MAX)  # a table was deleted
        return found[2] if found is not None and found[1] else None

    def _reader(self, version: Version, table_id: int, name: str) -> TableReader:
        """The open reader of a table of `version`, remembered there for later reads."""
        with self._rmu:
            reader = self.table_cache.get(table_id, name)
        version.readers[table_id] = reader
        return reader

    def _get_at(self, key: bytes, seq: int) -> bytes | None:
        self.reads += 1
        version = self._version
        for mem in (version.mem,) + version.imms:
            entry = mem.get_at(key, seq)
            if entry is not None:
                return entry[3] if entry[2] else None
        found = self._get_tables(version, key, seq)
        return found[2] if found is not None and found[1] else None

    def _get_tables(self, version: Version, key: bytes, seq: int) -> tuple[int, int, bytes] | None:
        """Newest version <= seq in the tables: L0 newest first, then one table per level."""
        h = xxh3_64_intdigest(key)
        try:
            for smallest, largest, tid, name in version.l0:
                if smallest <= key <= largest:
                    found = self._find(version, tid, name, key, seq, h)
                    if found is not None:
                        return found
            for largests, smallests, _, ids, names in version.sorted_levels:
                i = bisect_left(largests, key)
                if smallests[i] <= key:
                    found = self._find(version, ids[i], names[i], key, seq, h)
                    if found is not None:
                        return found
            return None
        except KeeldbError:
            if self._version is version or self._closed:
                raise
        # A compaction deleted a table this read was about to open: read the new version.
        return self._get_tables(self._version, key, seq)

    def _find(self, version: Version, table_id: int, name: str, key: bytes, seq: int,
              h: int) -> tuple[int, int, bytes] | None:
        reader = version.readers.get(table_id) or self._reader(version, table_id, name)
        found = reader.find(key, seq, h)
        if found is MISS:
            with self._rmu:
                found = reader.find_uncached(key, seq)
        return found  # type: ignore[no-any-return]

    # --- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> LsmSnapshot:
        self._check_open()
        with self._mu:
            if self._snapshot_count >= limits.snapshots_open_max:
                raise LimitExceededError(
                    f"{self._snapshot_count} snapshots are open (snapshots_open_max="
                    f"{limits.snapshots_open_max}); close snapshots you no longer need")
            seq = self._visible_seq
            self._register(seq)
        return LsmSnapshot(self, seq)

    def _register(self, seq: int) -> None:
        self._snapshots[seq] = self._snapshots.get(seq, 0) + 1
        self._snapshot_count += 1
        self._snap_max = max(self._snap_max, seq)

    def _release(self, seq: int) -> None:
        with self._mu:
            self._release_locked(seq)

    def _release_locked(self, seq: int) -> None:
        count = self._snapshots[seq] - 1
        self._snapshot_count -= 1
        if count:
            self._snapshots[seq] = count
        else:
            del self._snapshots[seq]
            if seq == self._snap_max:
                self._snap_max = max(self._snapshots, default=-1)

    def live_snapshots(self) -> list[int]:
        with self._mu:
            return sorted(self._snapshots)

    # --- flush ---------------------------------------------------------------------------------
    def flush_step(self) -> bool:
        """Write the oldest immutable memtable to an L0 table and install it."""
        if self._failed is not None or self._closed:
            return False
        version = self._version
        if not version.imms:
            return False
        imm = version.imms[-1]
        try:
            meta = self.runner.flush(imm, self._alloc(), self._hook)
            if self._hook is not None:
                self._hook("flush-before-manifest")
            self._install(lambda levels: cp.add_l0(levels, meta), last_seq=imm.seq_max,
                          drop_imm=imm)
        except StorageIOError as exc:
            self._fail(exc)
            raise
        self.disk.remove(wal_name(imm.wal_number))
        self.counters["flushes"] += 1
        self.counters["flush_bytes"] += meta.file_bytes
        return True

    def _write_table(self, entries: list[Any], number: int, crash_point: str) -> TableMeta:
        return jobs.build_table(self.disk, self._spec, entries, number, self._hook, crash_point)

    @staticmethod
    def _meta(number: int, props: Any) -> TableMeta:
        return jobs.meta_of(number, props)

    def _install(self, edit: Callable[[cp.Levels], cp.Levels], *, last_seq: int = 0,
                 drop_imm: Memtable | None = None) -> None:
        """Apply `edit` to the current levels, make the result durable in the manifest, then
        visible to readers. All under `mu`, so a flush and a compaction running at the same
        time (the embedded DB runs them on two threads) install one after the other, each on
        top of the other's result."""
        with self._mu:
            current = self._version
            levels = edit(current.levels)
            imms = tuple(m for m in current.imms if m is not drop_imm)
            old = self._state
            # WALs below the oldest memtable still unflushed hold nothing the tables lack.
            log_number = min(m.wal_number for m in (current.mem,) + imms)
            state = ManifestState(next_file=self._next_file,
                                  last_seq=max(old.last_seq, last_seq), log_number=log_number,
                                  levels=levels)
            self.counters["manifest_bytes"] += write_manifest(self.disk, state, self._hook)
            self._state = state
            self._version = Version(current.mem, imms, levels)

    # --- compaction ----------------------------------------------------------------------------
    def compact_step(self, force: bool = False) -> bool:
        """Run one compaction if a level is over its target (any level when `force`)."""
        if self._failed is not None or self._closed:
            return False
        version = self._version
        plan = cp.pick_compaction(version.levels, self.options, self._cursors, force)
        if plan is None:
            return False
        try:
            if plan.trivial_move:
                outputs = plan.inputs
                self.counters["trivial_moves"] += 1
            else:
                outputs = self._run_compaction(plan, version)
            if self._hook is not None:
                self._hook("compaction-before-manifest")
            self._install(lambda levels: cp.apply_compaction(levels, plan, outputs))
        except StorageIOError as exc:
            self._fail(exc)
            raise
        if plan.level > 0:
            self._cursors[plan.level] = plan.inputs[-1].largest
        if not plan.trivial_move:
            self._obsolete.extend(plan.inputs + plan.overlaps)
            self.counters["compaction_bytes"] += sum(t.file_bytes for t in outputs)
        self.counters["compactions"] += 1
        self._delete_obsolete()
        return True

    def _run_compaction(self, plan: cp.CompactionPlan, version: Version) -> tuple[TableMeta, ...]:
        return self.runner.compact(plan.inputs + plan.overlaps, plan.bottom,
                                   self.live_snapshots(), self._alloc, self._hook)

    def _delete_obsolete(self) -> None:
        """Delete compacted-away tables that no running scan still reads."""
        with self._mu:
            pinned = {t.id for pin in self._pins.values() for lv in pin[0].levels for t in lv}
            doomed = [t for t in self._obsolete if t.id not in pinned]
            self._obsolete = [t for t in self._obsolete if t.id in pinned]
        for t in doomed:
            with self._rmu:
                self.table_cache.evict(t.id)
            self.disk.remove(t.name)

    def compact_range(self) -> None:
        """Flush everything and compact until every level is within its target and no
        level above the deepest holds tables (the work `db.compact()` asks for)."""
        self.rotate()
        while self.flush_step():
            pass
        while self.compact_step(force=True):
            pass

    # --- stats, verify, close ------------------------------------------------------------------
    def stats(self) -> Stats:
        version = self._version
        c = self.counters
        rs = self.read_stats
        bc = self.block_cache
        levels = tuple(LevelStats(level=i, files=len(t), bytes=cp.level_bytes(t))
                       for i, t in enumerate(version.levels))
        mems = (version.mem,) + version.imms
        table_bytes = sum(lv.bytes for lv in levels)
        wal_bytes = sum(self._file_size(wal_name(m.wal_number)) for m in mems)
        disk_bytes = table_bytes + wal_bytes + self._file_size("MANIFEST")
        # Upper bound of the live data: raw bytes of every table and memtable (exact after a
        # full compaction of data without overwrites).
        live = sum(t.raw_key_bytes + t.raw_value_bytes for lv in version.levels for t in lv)
        live += sum(m.bytes for m in mems)
        written = c["wal_bytes"] + c["flush_bytes"] + c["compaction_bytes"]
        lookups = self.reads
        hits = bc.hits + rs.find_hits  # point reads' cache hits are counted in read_stats
        cache_total = hits + bc.misses
        # FPR = false positives / probes of keys the table did not hold
        absent_probes = rs.bloom_useful + rs.bloom_false_positives
        return Stats(
            levels=levels,
            memtable_bytes=version.mem.bytes,
            immutable_memtables=len(version.imms),
            last_seq=self._visible_seq,
            user_bytes_written=c["user_bytes"],
            wal_bytes_written=c["wal_bytes"],
            flush_bytes_written=c["flush_bytes"],
            compaction_bytes_written=c["compaction_bytes"],
            write_amplification=written / c["user_bytes"] if c["user_bytes"] else 0.0,
            live_bytes_estimate=live,
            disk_bytes=disk_bytes,
            space_amplification=disk_bytes / live if live else 0.0,
            reads=lookups,
            tables_touched_per_read=rs.tables_touched / lookups if lookups else 0.0,
            bloom_checks=rs.bloom_checks,
            bloom_useful=rs.bloom_useful,
            bloom_false_positives=rs.bloom_false_positives,
            bloom_false_positive_rate=(rs.bloom_false_positives / absent_probes
                                       if absent_probes else 0.0),
            block_cache_hits=hits,
            block_cache_misses=bc.misses,
            block_cache_hit_rate=hits / cache_total if cache_total else 0.0,
            block_cache_bytes=bc.bytes,
            flushes=c["flushes"],
            compactions=c["compactions"],
            write_stalls=c["write_stalls"],
            write_stall_seconds=self.stall_seconds,
        )

    def _file_size(self, name: str) -> int:
        try:
            file = self.disk.open(name)
        except FileNotFoundError:
            return 0
        try:
            return file.size()
        finally:
            file.close()

    def verify(self) -> VerifyReport:
        """Check the manifest, every live table and the live WALs (read-only)."""
        self._check_open()
        return verify_store(self.disk, self.options)

    @property
    def last_seq(self) -> int:
        return self._visible_seq

    @property
    def version(self) -> Version:
        return self._version

    def close(self) -> None:
        """Close files. Unsynced WAL bytes stay in OS buffers (policy 'never' keeps them)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(StorageIOError):
            self._delete_obsolete()
        self._wal.close()
        self.table_cache.close()


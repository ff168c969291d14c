"""The in-memory reference engine: the oracle every other engine is compared against.

It keeps every version of every key (key -> list of (seq, kind, value), oldest first) and
answers reads by a plain search, so that its correctness is obvious by reading it. Nothing
here is fast and nothing is durable; `close()` followed by reopening is modelled by handing
the same state to a new engine (`MemoryEngine(state=old.state)`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from keeldb import limits
from keeldb.errors import ClosedError, LimitExceededError
from keeldb.storage.engine import (
    KIND_DELETE,
    KIND_PUT,
    LevelStats,
    SeqSnapshot,
    Stats,
    VerifyReport,
    check_key,
    check_ops,
    check_scan_args,
)


class MemoryState:
    """What survives a 'reopen' of the memory engine: all versions and the last seq."""

    __slots__ = ("versions", "last_seq", "user_bytes")

    def __init__(self) -> None:
        self.versions: dict[bytes, list[tuple[int, int, bytes]]] = {}
        self.last_seq = 0
        self.user_bytes = 0


class MemorySnapshot(SeqSnapshot):
    """A read-only view of the memory engine at one sequence number."""


class MemoryEngine:
    """Same contract as `LsmEngine`, kept simple enough to be obviously right."""

    def __init__(self, state: MemoryState | None = None) -> None:
        self.state = state if state is not None else MemoryState()
        self._snapshots: dict[int, int] = {}
        self._closed = False
        self._reads = 0
        self._writes = 0

    # --- writes -----------------------------------------------------------------------
    def write(self, ops: list[tuple[int, bytes, bytes]], sync: bool = False) -> int:
        self._check_open()
        return self.write_checked(ops, check_ops(ops), sync)

    def write_checked(
        self, ops: list[tuple[int, bytes, bytes]], user_bytes: int, sync: bool = False
    ) -> int:
        """Apply ops already validated by `check_ops` (durability is moot in memory)."""
        self._check_open()
        self.state.last_seq += 1
        seq = self.state.last_seq
        for kind, key, value in ops:
            self.state.versions.setdefault(key, []).append((seq, kind, value))
        self.state.user_bytes += user_bytes
        self._writes += 1
        return seq

    def put(self, key: bytes, value: bytes) -> int:
        return self.write([(KIND_PUT, key, value)])

    def delete(self, key: bytes) -> int:
        return self.write([(KIND_DELETE, key, b"")])

    # --- reads ------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        self._check_open()
        return self._get_at(check_key(key), self.state.last_seq)

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        self._check_open()
        return self._scan_at(self.state.last_seq, start, end, reverse, limit)

    def snapshot(self) -> MemorySnapshot:
        self._check_open()
        if sum(self._snapshots.values()) >= limits.snapshots_open_max:
            raise LimitExceededError(
                f"{limits.snapshots_open_max} snapshots are open (snapshots_open_max); "
                "close snapshots you no longer need"
            )
        seq = self.state.last_seq
        self._snapshots[seq] = self._snapshots.get(seq, 0) + 1
        return MemorySnapshot(self, seq)

    def _release(self, seq: int) -> None:
        count = self._snapshots[seq] - 1
        if count:
            self._snapshots[seq] = count
        else:
            del self._snapshots[seq]

    def _get_at(self, key: bytes, seq: int) -> bytes | None:
        self._reads += 1
        versions = self.state.versions.get(key)
        if not versions:
            return None
        for vseq, kind, value in reversed(versions):
            if vseq <= seq:
                return value if kind == KIND_PUT else None
        return None

    def _scan_at(
        self,
        seq: int,
        start: bytes | None,
        end: bytes | None,
        reverse: bool,
        limit: int | None,
    ) -> Iterator[tuple[bytes, bytes]]:
        limit = check_scan_args(start, end, limit)
        keys = sorted(self.state.versions)
        lo = 0 if start is None else bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        chosen = keys[lo:hi]
        if reverse:
            chosen.reverse()
        out: list[tuple[bytes, bytes]] = []
        for key in chosen:
            if len(out) >= limit:
                break
            value = self._get_at(key, seq)
            if value is not None:
                out.append((key, value))
        return iter(out)

    # --- maintenance (nothing to do in memory) -----------------------------------------
    def flush_step(self) -> bool:
        return False

    def compact_step(self, force: bool = False) -> bool:
        return False

    def rotate(self) -> None:
        self._check_open()

    def compact_range(self) -> None:
        self._check_open()

    def write_stall(self) -> int:
        return 0

    def sync(self) -> None:
        self._check_open()

    def verify(self) -> VerifyReport:
        return VerifyReport(files_checked=0, blocks_checked=0, entries_checked=0, problems=())

    def stats(self) -> Stats:
        live = 0
        for key, versions in self.state.versions.items():
            _, kind, value = versions[-1]
            if kind == KIND_PUT:
                live += len(key) + len(value)
        return Stats(
            levels=(LevelStats(level=0, files=0, bytes=0),),
            memtable_bytes=live,
            immutable_memtables=0,
            last_seq=self.state.last_seq,
            user_bytes_written=self.state.user_bytes,
            wal_bytes_written=0,
            flush_bytes_written=0,
            compaction_bytes_written=0,
            write_amplification=0.0,
            live_bytes_estimate=live,
            disk_bytes=0,
            space_amplification=0.0,
            reads=self._reads,
            tables_touched_per_read=0.0,
            bloom_checks=0,
            bloom_useful=0,
            bloom_false_positives=0,
            bloom_false_positive_rate=0.0,
            block_cache_hits=0,
            block_cache_misses=0,
            block_cache_hit_rate=0.0,
            block_cache_bytes=0,
            flushes=0,
            compactions=0,
            write_stalls=0,
        )

    def live_snapshots(self) -> list[int]:
        return sorted(self._snapshots)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("engine is closed; reopen the store to use it again")

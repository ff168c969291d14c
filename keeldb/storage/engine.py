"""The storage engine contract every engine (memory, LSM, later B-tree) fulfils.

One conformance suite (`tests/conformance/test_engine.py`) runs over every engine. Engines are
sans-IO: they reach files only through the `ports.Disk` they are given, never `os` or `open`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from keeldb import limits
from keeldb.errors import (
    ClosedError,
    InvalidKeyError,
    InvalidValueError,
    LimitExceededError,
    UsageError,
)

# Record kinds stored with every version of a key.
KIND_DELETE = 0
KIND_PUT = 1

# Named points where a crash test may kill the process (see Options.crash_hook).
CRASH_POINTS: tuple[str, ...] = (
    "wal-after-write-before-sync",
    "flush-mid-table",
    "flush-before-manifest",
    "compaction-mid-output",
    "compaction-before-manifest",
    "manifest-after-write-before-rename",
    "manifest-after-rename-before-dirsync",
)


@dataclass(frozen=True, slots=True)
class Options:
    """Knobs of an engine; every default is a named limit."""

    memtable_bytes: int = limits.memtable_bytes_default
    block_bytes: int = limits.block_bytes_target
    table_bytes: int = limits.table_bytes_target
    bloom_bits_per_key: int = limits.bloom_bits_per_key
    compression: str = "none"  # "none" | "zstd"
    # The cache holds checked raw block bodies, searched in place: they cost about their file
    # bytes (a million 116-byte entries: ~130-170 MB of blocks). 128 MiB hits ~86% there;
    # 192 MiB hit 89% for +27 MB of peak RSS and no measurable read-CPU gain (bench at
    # N=1M, 2026-11-22), so the default stays. Raise it for read-heavy stores.
    block_cache_bytes: int = limits.block_cache_bytes_engine_small
    table_cache_files: int = limits.table_cache_files_max
    l0_compaction_trigger: int = limits.l0_compaction_trigger_files
    l0_slowdown_files: int = limits.l0_slowdown_files
    l0_stop_files: int = limits.l0_stop_files
    level_size_ratio: int = limits.level_size_ratio
    level1_bytes: int = limits.level1_target_bytes_default
    # Called with a name from CRASH_POINTS when execution passes that point; crash tests
    # install a hook that SIGKILLs the process. None in production.
    crash_hook: Callable[[str], None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class LevelStats:
    level: int
    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Stats:
    """What `db.stats()` and `keeldb stats PATH` report."""

    levels: tuple[LevelStats, ...]
    memtable_bytes: int
    immutable_memtables: int
    last_seq: int
    user_bytes_written: int  # keys + values handed to put/delete/write
    wal_bytes_written: int
    flush_bytes_written: int
    compaction_bytes_written: int
    write_amplification: float  # (wal + flush + compaction bytes) / user bytes
    live_bytes_estimate: int  # bytes of the newest version of every live key
    disk_bytes: int  # bytes of all live files (tables + wal + manifest)
    space_amplification: float  # disk_bytes / live_bytes_estimate
    reads: int
    tables_touched_per_read: float
    bloom_checks: int
    bloom_useful: int  # bloom said "absent": a table read avoided
    bloom_false_positives: int  # bloom said "maybe" but the key was not in the table
    bloom_false_positive_rate: float
    block_cache_hits: int
    block_cache_misses: int
    block_cache_hit_rate: float
    block_cache_bytes: int
    flushes: int
    compactions: int
    write_stalls: int
    write_stall_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `engine.verify()` (and `keeldb check-store`) found."""

    files_checked: int
    blocks_checked: int
    entries_checked: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


# Values of `Engine.write_stall()`.
STALL_NONE = 0
STALL_SLOWDOWN = 1  # writers should pause briefly to let compaction catch up
STALL_STOP = 2  # writers must wait until a flush or compaction step has run


class Snapshot(Protocol):
    """A consistent, read-only view of the engine at one sequence number."""

    seq: int

    def get(self, key: bytes) -> bytes | None: ...

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None: ...


class Engine(Protocol):
    """An ordered key-value engine with atomic batches and snapshots."""

    def get(self, key: bytes) -> bytes | None: ...

    def write(self, ops: list[tuple[int, bytes, bytes]]) -> int:
        """Apply `(kind, key, value)` ops atomically; return the sequence number of the batch."""

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Live pairs with start <= key < end, ascending (or descending when `reverse`)."""

    def snapshot(self) -> Snapshot: ...

    def stats(self) -> Stats: ...

    def flush_step(self) -> bool:
        """Flush one immutable memtable to a table; return whether there was work."""

    def compact_step(self) -> bool:
        """Run one bounded compaction; return whether there was work."""

    def write_stall(self) -> int:
        """STALL_NONE, STALL_SLOWDOWN or STALL_STOP: whether writers must wait."""

    def sync(self) -> None:
        """Make every write acknowledged so far durable."""

    def verify(self) -> VerifyReport:
        """Check every stored checksum; never raises for bad data, reports it."""

    def close(self) -> None: ...


def check_key(key: object) -> bytes:
    """Return `key` if it is a valid key, else raise `InvalidKeyError` saying what to do."""
    if type(key) is not bytes:
        if isinstance(key, (bytearray, memoryview)):
            return check_key(bytes(key))
        raise InvalidKeyError(
            f"key must be bytes, got {type(key).__name__}; encode it, e.g. key.encode()"
        )
    if not key:
        raise InvalidKeyError("key must not be empty; use at least one byte")
    if len(key) > limits.key_bytes_max:
        raise InvalidKeyError(
            f"key of {len(key)} bytes is over key_bytes_max={limits.key_bytes_max}; "
            "use a shorter key (hash long identifiers)"
        )
    return key


def check_value(value: object) -> bytes:
    """Return `value` if it is a valid value, else raise `InvalidValueError`."""
    if type(value) is not bytes:
        if isinstance(value, (bytearray, memoryview)):
            return check_value(bytes(value))
        raise InvalidValueError(
            f"value must be bytes, got {type(value).__name__}; encode it, e.g. value.encode()"
        )
    if len(value) > limits.value_bytes_max:
        raise InvalidValueError(
            f"value of {len(value)} bytes is over value_bytes_max={limits.value_bytes_max}; "
            "split it into several keys"
        )
    return value


def check_ops(ops: list[tuple[int, bytes, bytes]]) -> int:
    """Validate a batch of `(kind, key, value)` ops in place; return its user bytes."""
    if len(ops) > limits.batch_ops_max:
        raise LimitExceededError(
            f"batch of {len(ops)} ops is over batch_ops_max={limits.batch_ops_max}; "
            "split it into smaller batches"
        )
    total = 0
    for i, (kind, key, value) in enumerate(ops):
        if kind == KIND_PUT:
            key = check_key(key)
            value = check_value(value)
        elif kind == KIND_DELETE:
            key = check_key(key)
            value = b""
        else:
            raise UsageError(f"op {i} has kind {kind!r}; use KIND_PUT or KIND_DELETE")
        ops[i] = (kind, key, value)
        total += len(key) + len(value)
    if total > limits.batch_bytes_max:
        raise LimitExceededError(
            f"batch of {total} bytes is over batch_bytes_max={limits.batch_bytes_max}; "
            "split it into smaller batches"
        )
    return total


def check_scan_args(start: object, end: object, limit: object) -> int:
    """Validate scan bounds; return the effective limit."""
    if start is not None:
        check_key(start)
    if end is not None:
        check_key(end)
    if limit is None:
        return limits.scan_limit_max
    if type(limit) is not int or limit < 0:
        raise UsageError(f"scan limit must be a non-negative int, got {limit!r}")
    if limit > limits.scan_limit_max:
        raise LimitExceededError(
            f"scan limit {limit} is over scan_limit_max={limits.scan_limit_max}; "
            "page through the range with start= and a smaller limit"
        )
    return limit


class SnapshotSource(Protocol):
    """What an engine offers `SeqSnapshot`: reads at a sequence number and its release."""

    def _get_at(self, key: bytes, seq: int) -> bytes | None: ...

    def _scan_at(self, seq: int, start: bytes | None, end: bytes | None, reverse: bool,
                 limit: int | None) -> Iterator[tuple[bytes, bytes]]: ...

    def _release(self, seq: int) -> None: ...

    def _check_open(self) -> None: ...


class SeqSnapshot:
    """A registered sequence number of an engine: reads see the store as of `seq`."""

    def __init__(self, engine: SnapshotSource, seq: int) -> None:
        self._engine = engine
        self.seq = seq
        self._closed = False

    def get(self, key: bytes) -> bytes | None:
        self._check_open()
        return self._engine._get_at(check_key(key), self.seq)

    def scan(self, start: bytes | None = None, end: bytes | None = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self._check_open()
        return self._engine._scan_at(self.seq, start, end, reverse, limit)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine._release(self.seq)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("snapshot is closed; take a new one with db.snapshot()")
        self._engine._check_open()

    def __enter__(self) -> SeqSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

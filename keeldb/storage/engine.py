"""The storage engine contract every engine (memory, LSM, later B-tree) fulfils.

One conformance suite (`tests/conformance/test_engine.py`) runs over every engine. Engines are
sans-IO: they reach files only through the `ports.Disk` they are given, never `os` or `open`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from keeldb import limits
from keeldb.errors import InvalidKeyError, InvalidValueError

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
    block_cache_bytes: int = limits.block_cache_bytes_default
    table_cache_files: int = limits.table_cache_files_max
    l0_compaction_trigger: int = limits.l0_compaction_trigger_files
    l0_slowdown_files: int = limits.l0_slowdown_files
    l0_stop_files: int = limits.l0_stop_files
    level_size_ratio: int = limits.level_size_ratio
    level1_bytes: int = limits.level1_bytes_max
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

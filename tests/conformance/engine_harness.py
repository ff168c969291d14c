"""One driver per engine so the conformance suite can treat them all alike.

`ENGINE_KINDS` is the single list the suite is parametrised over:
- memory:        the reference engine (the oracle)
- lsm-memdisk:   LsmEngine on MemoryDisk with tiny memtables/tables, so flushes and
                 compactions run all the time (driven inline after every write)
- lsm-realdisk:  LsmEngine on RealDisk (small sizes)
- embedded:      keeldb.open() on a real directory (background thread, group commit)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keeldb
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.runtime.real.disk import RealDisk
from keeldb.storage.engine import KIND_DELETE, KIND_PUT, STALL_STOP, Options
from keeldb.storage.lsm import LsmEngine
from keeldb.storage.memory import MemoryEngine

ENGINE_KINDS = ("memory", "lsm-memdisk", "lsm-realdisk", "embedded")

TINY: dict[str, Any] = dict(memtable_bytes=1024, block_bytes=128, table_bytes=256, level1_bytes=256,
            l0_compaction_trigger=2, l0_slowdown_files=6, l0_stop_files=8,
            level_size_ratio=3, block_cache_bytes=16 * 1024, table_cache_files=8)
SMALL: dict[str, Any] = dict(memtable_bytes=8 * 1024, block_bytes=512, table_bytes=4096,
             level1_bytes=16 * 1024, l0_compaction_trigger=2, level_size_ratio=4)


class Harness:
    """Drives one engine kind through the common operations."""

    def __init__(self, kind: str, directory: Path) -> None:
        assert kind in ENGINE_KINDS, kind
        self.kind = kind
        self.directory = directory
        self.disk: Any = MemoryDisk() if kind == "lsm-memdisk" else None
        self.engine: Any = None
        self._memory_state: Any = None
        self.open()

    def open(self) -> None:
        kind = self.kind
        if kind == "memory":
            self.engine = MemoryEngine(state=self._memory_state)
            self._memory_state = self.engine.state
        elif kind == "lsm-memdisk":
            self.engine = LsmEngine(self.disk, Options(**TINY))
        elif kind == "lsm-realdisk":
            self.engine = LsmEngine(RealDisk(str(self.directory / "lsm")),
                                    Options(**SMALL))
        else:
            self.engine = keeldb.open(self.directory / "db", sync="never", **SMALL)

    @property
    def is_lsm(self) -> bool:
        return self.kind in ("lsm-memdisk", "lsm-realdisk")

    def write(self, ops: list[tuple[int, bytes, bytes]]) -> None:
        if self.is_lsm:
            while self.engine.write_stall() == STALL_STOP:
                self.step()
            self.engine.write(list(ops))
            self.step()
        else:
            self.engine.write(list(ops))

    def put(self, key: bytes, value: bytes) -> None:
        self.write([(KIND_PUT, key, value)])

    def delete(self, key: bytes) -> None:
        self.write([(KIND_DELETE, key, b"")])

    def step(self) -> None:
        """One round of background work, as the embedded thread would run it."""
        if self.is_lsm:
            self.engine.flush_step() or self.engine.compact_step()

    def flush(self) -> None:
        if self.kind == "embedded":
            self.engine.flush()
        else:
            self.engine.rotate()
            while self.engine.flush_step():
                pass

    def compact(self) -> None:
        if self.kind == "embedded":
            self.engine.compact()
        else:
            self.engine.compact_range()

    def reopen(self) -> None:
        self.engine.close()
        self.open()

    def close(self) -> None:
        self.engine.close()

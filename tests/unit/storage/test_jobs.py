"""storage/jobs.py: the flush and compaction jobs a worker process runs, inline on MemoryDisk."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest

from keeldb import limits
from keeldb.errors import BackgroundJobError
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage import jobs
from keeldb.storage.cache import BlockCache
from keeldb.storage.engine import KIND_DELETE, KIND_PUT
from keeldb.storage.manifest import TableMeta
from keeldb.storage.memtable import Memtable
from keeldb.storage.sstable import ReadStats, TableReader

SPEC = jobs.TableSpec(block_bytes=256, bloom_bits_per_key=10, compression="none",
                      table_bytes=2048)


def _memtable_with_old_versions(rng: random.Random) -> Memtable:
    mem = Memtable(wal_number=1)
    for seq in range(1, 400):
        key = b"k%03d" % rng.randrange(120)
        kind = KIND_DELETE if seq % 7 == 0 else KIND_PUT
        value = b"" if kind == KIND_DELETE else b"v%d" % seq
        # snapshot_max = seq - 1 keeps every overwritten version (a snapshot may read it)
        mem.apply(seq, [(kind, key, value)], len(key) + len(value), seq - 1)
    mem.freeze()
    return mem


def test_worker_sort_of_unsorted_versions_equals_the_flush_order() -> None:
    mem = _memtable_with_old_versions(random.Random("jobs:sort"))
    assert mem.old, "the test needs overwritten versions"
    shuffled = mem.all_versions()
    random.Random("jobs:shuffle").shuffle(shuffled)
    assert jobs.sort_flush_entries(shuffled) == mem.flush_entries()


def test_table_spec_and_meta_survive_the_wire_form() -> None:
    assert jobs.TableSpec.from_list(SPEC.to_list()) == SPEC
    meta = TableMeta(7, 100, b"a", b"z", 3, 1, 5, 9, 30, 60)
    assert jobs.meta_from_list(meta.to_list()) == meta


def _tables(disk: MemoryDisk, count: int, rng: random.Random) -> list[TableMeta]:
    """`count` overlapping tables, newest first, built by the flush job."""
    out = []
    seq = 1
    for number in range(10, 10 + count):
        mem = Memtable(wal_number=0)
        for _ in range(150):
            key = b"k%04d" % rng.randrange(400)
            mem.apply(seq, [(KIND_PUT, key, b"x" * rng.randrange(1, 40))], 40, -1)
            seq += 1
        mem.freeze()
        out.append(jobs.InlineRunner(disk, SPEC).flush(mem, number, None))
    return out[::-1]


def test_compaction_fits_in_the_numbers_allocated_for_it() -> None:
    disk = MemoryDisk()
    tables = _tables(disk, 5, random.Random("jobs:compact"))
    need = jobs.output_numbers_needed(tables, SPEC)
    numbers = list(range(100, 100 + need))
    outputs = jobs.compact_tables(disk, SPEC, tables, True, [], jobs.numbers_from(numbers))
    assert len(outputs) > 1 and {t.id for t in outputs} <= set(numbers)
    assert sum(t.entries for t in outputs) == len({k for t in tables for k in _keys(disk, t)})


def _keys(disk: MemoryDisk, t: TableMeta) -> set[bytes]:
    f = disk.open(t.name)
    try:
        return {e[0] for e in TableReader.open(f, t.id, BlockCache(0), ReadStats()).iter()}
    finally:
        f.close()


def test_running_out_of_output_numbers_is_a_typed_job_error() -> None:
    disk = MemoryDisk()
    tables = _tables(disk, 4, random.Random("jobs:few"))
    with pytest.raises(BackgroundJobError, match="more than 1 output"):
        jobs.compact_tables(disk, SPEC, tables, True, [], jobs.numbers_from([500]))


def _table_bytes(disk: MemoryDisk, name: str) -> bytes:
    f = disk.open(name)
    try:
        return f.read_at(0, f.size())
    finally:
        f.close()


@pytest.mark.parametrize("step", [2048, 7, 1])
@pytest.mark.parametrize("old_versions", [False, True])
def test_worker_flush_from_sorted_runs_writes_the_inline_table(
        old_versions: bool, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker sorts each shipped frame into a packed run and merges the runs as it
    writes (bounded memory); the table must be byte-identical to the inline flush. `step`
    (entries decoded per run and merge round) below the run length makes the merge cut
    runs mid-way, at every possible position when 1."""
    from keeldb.runtime.real import compactor

    monkeypatch.setattr(limits, "worker_merge_run_entries", step)

    rng = random.Random(f"jobs:runs:{old_versions}")
    if old_versions:
        mem = _memtable_with_old_versions(rng)
    else:
        mem = Memtable(wal_number=1)
        for seq, i in enumerate(rng.sample(range(5000), 600), start=1):
            mem.apply(seq, [(KIND_PUT, b"k%05d" % i, b"v" * (i % 37))], 20, -1)
        mem.freeze()
    assert bool(mem.old) == old_versions
    versions = mem.all_versions()
    rng.shuffle(versions)
    runs = [compactor._sorted_run(versions[i:i + 97], not old_versions)
            for i in range(0, len(versions), 97)]
    assert len(runs) > 3, "the test needs several runs to merge"
    merged = compactor._merge_runs([io.BytesIO(blob) for _, blob in runs], not old_versions)
    disk = MemoryDisk()
    hooked: list[str] = []
    meta = jobs.build_table_stream(disk, SPEC, merged, sum(n for n, _ in runs), 7,
                                   hooked.append)
    inline = jobs.InlineRunner(disk, SPEC).flush(mem, 8, None)
    assert hooked == ["flush-mid-table"]
    assert meta.entries == inline.entries == len(versions)
    assert _table_bytes(disk, meta.name) == _table_bytes(disk, inline.name)


def _entries(disk: MemoryDisk, t: TableMeta) -> list[jobs.Entry]:
    f = disk.open(t.name)
    try:
        return list(TableReader.open(f, t.id, BlockCache(0), ReadStats()).iter())
    finally:
        f.close()


def test_disjoint_runs_chain_a_level_and_keep_overlapping_tables_apart() -> None:
    def meta(tid: int, lo: bytes, hi: bytes) -> TableMeta:
        return TableMeta(tid, 10, lo, hi, 1, 0, 1, 1, 1, 1)

    l0 = [meta(1, b"a", b"z"), meta(2, b"b", b"y")]
    l1 = [meta(3, b"a", b"f"), meta(4, b"g", b"m"), meta(5, b"n", b"z")]
    runs = jobs.disjoint_runs(l0 + l1)
    assert sorted(len(run) for run in runs) == [1, 1, 3]  # the L1 tables share one run
    for run in runs:
        assert all(a.largest < b.smallest for a, b in zip(run, run[1:], strict=False))
    assert sorted(t.id for run in runs for t in run) == [1, 2, 3, 4, 5]
    assert jobs.disjoint_runs(l1) == [l1]  # one sorted level is one source


@pytest.mark.parametrize("snapshots", [[], [60, 300]])
def test_compaction_reading_a_level_as_one_chained_source_keeps_every_version(
        snapshots: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    disk = MemoryDisk()
    rng = random.Random("jobs:chained")
    older = _tables(disk, 3, rng)
    level = jobs.compact_tables(disk, SPEC, older, True, [], jobs.numbers_from(range(50, 90)))
    assert len(level) > 2, "the test needs a level of several disjoint tables"
    newer: list[TableMeta] = []  # newer overlapping tables on top (seqs above the level's)
    for number, seq in ((200, 1000), (201, 2000)):
        mem = Memtable(wal_number=0)
        for i in range(120):
            key = b"k%04d" % rng.randrange(400)
            kind = KIND_DELETE if i % 9 == 0 else KIND_PUT
            mem.apply(seq + i, [(kind, key, b"" if kind == KIND_DELETE else b"n%d" % i)], 9, -1)
        mem.freeze()
        newer.insert(0, jobs.InlineRunner(disk, SPEC).flush(mem, number, None))
    inputs = newer + list(level)
    opened: list[str] = []
    closed: list[str] = []
    real_open = disk.open

    class Tracked:
        def __init__(self, file: Any) -> None:
            self._file = file

        def __getattr__(self, name: str) -> Any:
            return getattr(self._file, name)

        def close(self) -> None:
            closed.append(self._file.name)
            self._file.close()

    def tracking_open(name: str, *, append: bool = False) -> Any:
        opened.append(name)
        return Tracked(real_open(name, append=append))

    monkeypatch.setattr(disk, "open", tracking_open)
    got = jobs.compact_tables(disk, SPEC, inputs, True, sorted(snapshots),
                              jobs.numbers_from(range(300, 340)))
    monkeypatch.undo()
    assert sorted(opened) == sorted(closed) == sorted(t.name for t in inputs)
    # the same compaction with every table as its own source is the reference
    monkeypatch.setattr(jobs, "disjoint_runs", lambda tables: [[t] for t in tables])
    want = jobs.compact_tables(disk, SPEC, inputs, True, sorted(snapshots),
                               jobs.numbers_from(range(400, 440)))
    assert [e for t in got for e in _entries(disk, t)] == \
        [e for t in want for e in _entries(disk, t)]
    newest: dict[bytes, jobs.Entry] = {}
    for t in inputs:
        for e in _entries(disk, t):
            if e[0] not in newest or e[1] > newest[e[0]][1]:
                newest[e[0]] = e
    live = sorted(e for e in newest.values() if e[2] == KIND_PUT)
    if not snapshots:
        assert [e for t in got for e in _entries(disk, t)] == live

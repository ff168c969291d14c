"""storage/jobs.py: the flush and compaction jobs a worker process runs, inline on MemoryDisk."""

from __future__ import annotations

import random

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
    merged = compactor._merge_runs([blob for _, blob in runs], not old_versions)
    disk = MemoryDisk()
    hooked: list[str] = []
    meta = jobs.build_table_stream(disk, SPEC, merged, sum(n for n, _ in runs), 7,
                                   hooked.append)
    inline = jobs.InlineRunner(disk, SPEC).flush(mem, 8, None)
    assert hooked == ["flush-mid-table"]
    assert meta.entries == inline.entries == len(versions)
    assert _table_bytes(disk, meta.name) == _table_bytes(disk, inline.name)

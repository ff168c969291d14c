"""Background jobs of the LSM engine as pure functions over a `Disk`: build one table from
sorted entries (a flush), merge tables into new ones (a compaction).

They take everything they need as arguments (file numbers are allocated by the caller, which
owns the store's state) and return the new tables' metadata; they never touch the manifest.
So the engine can run them inline (tests, simulator), and the embedded layer can run them in
a worker process on the same directory (`keeldb.runtime.real.compactor`) while the parent
keeps the GIL for its writers. Either way the caller installs the result with one manifest
edit; outputs of a job that never got installed are unreferenced files, which recovery
deletes.

`JobRunner` is the seam: `InlineRunner` runs the jobs here in the calling thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any, Protocol

from keeldb.errors import BackgroundJobError
from keeldb.ports import Disk, File
from keeldb.storage.cache import BlockCache
from keeldb.storage.engine import Options
from keeldb.storage.manifest import TableMeta, table_name
from keeldb.storage.memtable import Memtable
from keeldb.storage.merge import compact_with_snapshots, merge_newest, merge_sources
from keeldb.storage.sstable import ReadStats, TableReader
from keeldb.storage.sstable_writer import TableWriter

Hook = Callable[[str], None] | None
Entry = tuple[bytes, int, int, bytes]

COMPACTION_CHUNK_ENTRIES = 4096
# Per-entry bytes a table spends beyond key and value (seq, kind, lengths, index, bloom),
# rounded up: used only to bound how many output files a compaction may need.
TABLE_ENTRY_OVERHEAD_BYTES_MAX = 64


@dataclass(frozen=True, slots=True)
class TableSpec:
    """The options a job needs (plain data: it crosses a process boundary)."""

    block_bytes: int
    bloom_bits_per_key: int
    compression: str
    table_bytes: int

    @staticmethod
    def of(options: Options) -> TableSpec:
        return TableSpec(options.block_bytes, options.bloom_bits_per_key, options.compression,
                         options.table_bytes)

    def to_list(self) -> list[Any]:
        return [self.block_bytes, self.bloom_bits_per_key, self.compression, self.table_bytes]

    @staticmethod
    def from_list(raw: Sequence[Any]) -> TableSpec:
        return TableSpec(int(raw[0]), int(raw[1]), str(raw[2]), int(raw[3]))


def meta_of(number: int, props: Any) -> TableMeta:
    return TableMeta(id=number, file_bytes=props.file_bytes, smallest=props.smallest,
                     largest=props.largest, entries=props.entries,
                     tombstones=props.tombstones, seq_min=props.seq_min,
                     seq_max=props.seq_max, raw_key_bytes=props.raw_key_bytes,
                     raw_value_bytes=props.raw_value_bytes)


def meta_from_list(raw: Sequence[Any]) -> TableMeta:
    assert len(raw) == 10, f"table metadata has {len(raw)} fields, want 10"
    return TableMeta(int(raw[0]), int(raw[1]), bytes(raw[2]), bytes(raw[3]), int(raw[4]),
                     int(raw[5]), int(raw[6]), int(raw[7]), int(raw[8]), int(raw[9]))


def output_numbers_needed(tables: Sequence[TableMeta], spec: TableSpec) -> int:
    """An upper bound of the output tables a compaction of `tables` writes: every output but
    the last holds at least `table_bytes`, and merging never adds entries."""
    raw = sum(t.raw_key_bytes + t.raw_value_bytes + TABLE_ENTRY_OVERHEAD_BYTES_MAX * t.entries
              for t in tables)
    return max(raw, sum(t.file_bytes for t in tables)) // spec.table_bytes + 2


def build_table(disk: Disk, spec: TableSpec, entries: list[Entry], number: int,
                hook: Hook = None, crash_point: str = "flush-mid-table") -> TableMeta:
    """Write `entries` (sorted by key asc, seq desc) as table `number`."""
    assert entries, "flush of an empty memtable"
    file = disk.create(table_name(number))
    try:
        writer = TableWriter(file, block_bytes=spec.block_bytes,
                             bloom_bits_per_key=spec.bloom_bits_per_key,
                             compression=spec.compression, expected_entries=len(entries))
        half = len(entries) // 2
        writer.add_many(entries[:half])
        if hook is not None:
            hook(crash_point)
        writer.add_many(entries[half:])
        props = writer.finish()
    finally:
        file.close()
    return meta_of(number, props)


def sort_flush_entries(entries: list[Entry]) -> list[Entry]:
    """Sort a memtable's versions (shipped unsorted) as tables want them."""
    entries.sort(key=flush_order)
    return entries


def flush_order(e: Entry) -> tuple[bytes, int]:
    """Sort key of table order: key ascending, seq descending."""
    return e[0], -e[1]


def build_table_stream(disk: Disk, spec: TableSpec, entries: Iterable[Entry], count: int,
                       number: int, hook: Hook = None,
                       crash_point: str = "flush-mid-table") -> TableMeta:
    """`build_table` from an iterator of `count` sorted entries, consumed a writer's chunk at
    a time: memory stays bounded by the writer's buffers, not by `count`."""
    assert count > 0, "flush of an empty memtable"
    it = iter(entries)
    file = disk.create(table_name(number))
    try:
        writer = TableWriter(file, block_bytes=spec.block_bytes,
                             bloom_bits_per_key=spec.bloom_bits_per_key,
                             compression=spec.compression, expected_entries=count)
        writer.add_many(islice(it, count // 2))
        if hook is not None:
            hook(crash_point)
        writer.add_many(it)
        props = writer.finish()
    finally:
        file.close()
    assert props.entries == count, f"flush wrote {props.entries} entries, expected {count}"
    return meta_of(number, props)


def numbers_from(numbers: Sequence[int]) -> Callable[[], int]:
    """An `alloc` handing out the pre-allocated `numbers` (a worker cannot allocate)."""
    it = iter(numbers)

    def alloc() -> int:
        number = next(it, None)
        if number is None:
            raise BackgroundJobError(f"the compaction needed more than {len(numbers)} output "
                                     "tables; it is retried in-process")
        return number

    return alloc


def compact_tables(disk: Disk, spec: TableSpec, tables: Sequence[TableMeta], bottom: bool,
                   snapshots: list[int], alloc: Callable[[], int],
                   hook: Hook = None) -> tuple[TableMeta, ...]:
    """Merge `tables` (newest data first) into new tables of about `table_bytes` each.

    Inputs are read through private readers without a cache, so the readers' caches are not
    disturbed. Tables with disjoint key ranges (the overlapped tables of the output level)
    are read one after another as one source, each opened only when the previous one is
    done: the merge then buffers entries for a handful of sources, not for every table, and
    holds one table's index and bloom of that level at a time. `alloc` hands out the output
    file numbers.
    """
    open_files: list[list[File]] = []  # per source: the file of the table it is reading
    sources = [_chained(disk, run, open_files) for run in disjoint_runs(tables)]
    try:
        return _write_outputs(disk, spec, sources, bottom, snapshots, alloc, hook)
    finally:
        for held in open_files:
            for file in held:
                file.close()


def disjoint_runs(tables: Sequence[TableMeta]) -> list[list[TableMeta]]:
    """Group `tables` into runs, each of tables with disjoint key ranges in key order
    (greedy: each table joins the first run it follows without overlap). One level's tables
    form one run; overlapping L0 tables land in runs of their own."""
    runs: list[list[TableMeta]] = []
    for t in sorted(tables, key=lambda t: (t.smallest, t.largest, t.id)):
        for run in runs:
            if run[-1].largest < t.smallest:
                run.append(t)
                break
        else:
            runs.append([t])
    assert sum(map(len, runs)) == len(tables), "every input table is in exactly one run"
    return runs


def _chained(disk: Disk, run: Sequence[TableMeta], open_files: list[list[File]]
             ) -> Iterator[Entry]:
    """Every entry of the tables of `run` (disjoint, in key order) as one sorted stream. The
    chain runs in C: only opening a table costs a Python call (a generator here would cost
    a frame step per entry)."""
    held: list[File] = []
    open_files.append(held)

    def entries(t: TableMeta) -> Iterator[Entry]:
        while held:  # the previous table of the run is read to its end
            held.pop().close()
        file = disk.open(t.name)
        held.append(file)
        return TableReader.open(file, t.id, BlockCache(0), ReadStats()).iter()

    return chain.from_iterable(map(entries, run))


def _write_outputs(disk: Disk, spec: TableSpec, sources: list[Iterator[Any]], bottom: bool,
                   snapshots: list[int], alloc: Callable[[], int],
                   hook: Hook) -> tuple[TableMeta, ...]:
    # Output tables are cut between chunks: keep chunks small next to table_bytes.
    chunk_max = max(8, min(COMPACTION_CHUNK_ENTRIES, spec.table_bytes // 128))
    if snapshots:
        chunks = compact_with_snapshots(merge_sources(sources), snapshots, bottom, chunk_max)
    else:
        chunks = merge_newest(sources, bottom, chunk_max)
    outputs: list[TableMeta] = []
    writer: TableWriter | None = None
    file = None
    number = 0
    try:
        for chunk in chunks:
            if writer is None:
                number = alloc()
                file = disk.create(table_name(number))
                writer = TableWriter(file, block_bytes=spec.block_bytes,
                                     bloom_bits_per_key=spec.bloom_bits_per_key,
                                     compression=spec.compression)
            writer.add_many(chunk)
            if writer.estimated_bytes() >= spec.table_bytes:
                if hook is not None:
                    hook("compaction-mid-output")
                outputs.append(meta_of(number, writer.finish()))
                assert file is not None
                file.close()
                writer = file = None
        if writer is not None:
            if hook is not None:
                hook("compaction-mid-output")
            outputs.append(meta_of(number, writer.finish()))
    finally:
        if file is not None:
            file.close()
    return tuple(outputs)


class JobRunner(Protocol):
    """Runs the engine's background jobs; the engine calls one job per kind at a time."""

    def flush(self, mem: Memtable, number: int, hook: Hook) -> TableMeta:
        """Build table `number` from every version of the frozen memtable `mem`."""
        ...

    def compact(self, tables: Sequence[TableMeta], bottom: bool, snapshots: list[int],
                alloc: Callable[[], int], hook: Hook) -> tuple[TableMeta, ...]:
        ...

    def warm(self) -> None:
        """The store is about to need jobs (its first memtable is a quarter full): a worker
        runner starts its processes now, while the store's process is still small."""
        ...


class InlineRunner:
    """Runs jobs in the calling thread on the engine's disk."""

    def __init__(self, disk: Disk, spec: TableSpec) -> None:
        self.disk = disk
        self.spec = spec

    def warm(self) -> None:
        """Nothing to prepare in-process."""

    def flush(self, mem: Memtable, number: int, hook: Hook) -> TableMeta:
        return build_table(self.disk, self.spec, mem.flush_entries(), number, hook)

    def compact(self, tables: Sequence[TableMeta], bottom: bool, snapshots: list[int],
                alloc: Callable[[], int], hook: Hook) -> tuple[TableMeta, ...]:
        return compact_tables(self.disk, self.spec, tables, bottom, snapshots, alloc, hook)

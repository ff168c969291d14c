"""Caches of the read path: checked raw blocks (limited by bytes) and open tables (by count).

The table cache is LRU. The block cache is LRU for `get`/`get_packed` callers and CLOCK
(second chance) for the point-read hot path: a `TableReader` registers its table and gets
two arrays indexed by block number, `slots` (the cached block or None) and `refs` (a
referenced byte). A hit is then one list index plus one byte store, with no hashing and no
LRU relinking of scattered nodes (which cost ~0.5 us of memory stalls per read at 1M keys);
the evictor gives a block whose byte is set one more round at the young end.
They are sans-IO: the table cache reaches files through the `Disk` port.
Concurrency: single operations are safe under the GIL (a racing eviction between a lookup
and its LRU bump is tolerated), so cache hits need no lock; byte accounting assumes callers
do not `put` or evict from two threads at once: the engine fills the cache only under its
read lock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from keeldb.errors import ConfigError, CorruptionError
from keeldb.ports import Disk

if TYPE_CHECKING:
    from keeldb.storage.sstable import ReadStats, TableReader


# Internally a key (table_id, offset) is packed into one int, table_id << OFFSET_BITS |
# offset: an int hashes and compares with no extra objects to touch, which matters when the
# cache holds hundreds of MB of scattered Python objects.
OFFSET_BITS = 40  # offsets up to 1 TiB; tables are ~limits.table_bytes_target
_OFFSET_MASK = (1 << OFFSET_BITS) - 1
# A table's hot-path arrays: block number -> cached block or None, and -> referenced byte.
Slots = tuple[list[Any], bytearray]


def pack_key(table_id: int, offset: int) -> int:
    assert 0 <= offset < 1 << OFFSET_BITS and table_id >= 0, (table_id, offset)
    return table_id << OFFSET_BITS | offset


class BlockCache:
    """LRU of blocks keyed by `(table_id, block_offset)`, bounded by `bytes_max`.

    `size` passed to `put` is the block's heap footprint including its slot here
    (see `block.cached_block_bytes`). A block bigger than the whole cache is not kept.
    `get_packed`/`put_packed` take `pack_key(table_id, offset)` for callers on a hot path.
    For a table registered with `register`, the low bits of the key are the block number
    and every cached block of it is also in its `slots` (see the module docstring); hits
    read from `slots` are not counted in `hits` (the engine counts them in ReadStats).
    """

    __slots__ = ("bytes_max", "bytes", "hits", "misses", "_entries", "_tables")

    def __init__(self, bytes_max: int) -> None:
        if bytes_max < 0:
            raise ConfigError(
                f"block cache size {bytes_max} is negative; use 0 to disable the cache"
            )
        self.bytes_max = bytes_max
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        # key -> (block, size); oldest first.
        self._entries: OrderedDict[int, tuple[object, int]] = OrderedDict()
        # table_id -> (slots, refs) of registered tables; dropped by evict_table
        self._tables: dict[int, Slots] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[int, int]) -> object | None:
        return self.get_packed(pack_key(*key))

    def put(self, key: tuple[int, int], block: object, size: int) -> None:
        self.put_packed(pack_key(*key), block, size)

    def get_packed(self, key: int) -> object | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        try:
            self._entries.move_to_end(key)
        except KeyError:  # evicted by another thread between get and bump
            pass
        return found[0]

    def register(self, table_id: int, nblocks: int) -> Slots:
        """The (slots, refs) arrays of `table_id`'s `nblocks` blocks, shared by every reader
        of that table (a reader reopened after the table cache closed it gets the same ones).
        Keys of this table must then be `pack_key(table_id, block_number)`."""
        found = self._tables.get(table_id)
        if found is None or len(found[0]) != nblocks:
            assert nblocks < 1 << OFFSET_BITS, nblocks
            # A block cached under this id before (never in the engine: ids are not reused)
            # is only missed once: the reader reloads it, `put_packed` replaces it.
            found = self._tables[table_id] = ([None] * nblocks, bytearray(nblocks))
        return found

    def put_packed(self, key: int, block: object, size: int) -> None:
        assert size > 0, f"block size estimate must be positive, got {size}"
        entries = self._entries
        tables = self._tables
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        slots = tables.get(key >> OFFSET_BITS)
        if slots is not None:
            slots[0][key & _OFFSET_MASK] = None
        if size > self.bytes_max:
            return
        entries[key] = (block, size)
        self.bytes += size
        if slots is not None:
            slots[0][key & _OFFSET_MASK] = block
        chances = len(entries)  # CLOCK: each block referenced since its last pass lives on
        while self.bytes > self.bytes_max:
            try:
                oldest, found = entries.popitem(last=False)
            except KeyError:
                break
            if oldest == key:  # the block just loaded is in use: never its own victim
                entries[key] = found
                if len(entries) == 1:
                    break
                continue
            slots = tables.get(oldest >> OFFSET_BITS)
            if slots is not None:
                i = oldest & _OFFSET_MASK
                if slots[1][i] and chances > 0:
                    slots[1][i] = 0
                    entries[oldest] = found  # second chance: back to the young end
                    chances -= 1
                    continue
                slots[0][i] = None
            self.bytes -= found[1]
        assert self.bytes <= self.bytes_max or not entries, (self.bytes, self.bytes_max)

    def evict_table(self, table_id: int) -> None:
        """Drop every block of `table_id` (its file was deleted). O(the table's blocks) for a
        registered table (its slots list every block of it that is cached), else O(cached
        blocks): a compaction deletes ~10-20 tables at once while reads wait for the GIL."""
        slots = self._tables.pop(table_id, None)
        base = table_id << OFFSET_BITS
        if slots is not None:
            doomed = [base | i for i, b in enumerate(slots[0]) if b is not None]
        else:
            # list() copies the keys in one C call: lock-free readers bump entries meanwhile,
            # and iterating the OrderedDict itself across bytecodes would see it mutate.
            doomed = [k for k in list(self._entries) if k >> OFFSET_BITS == table_id]
        for key in doomed:
            found = self._entries.pop(key, None)
            if found is not None:
                self.bytes -= found[1]
        if slots is not None:  # readers still holding the arrays see misses from now on
            slots[0][:] = [None] * len(slots[0])

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        for slots, refs in self._tables.values():
            slots[:] = [None] * len(slots)
            refs[:] = bytes(len(refs))


class TableCache:
    """Open `TableReader`s, LRU, at most `files_max` of them.

    A reader pushed out by the count limit is closed; iterators already running on it keep
    working (the reader closes its file when the last one finishes), so the number of open
    files can briefly exceed `files_max` by the number of such iterators.
    """

    __slots__ = ("_disk", "files_max", "_block_cache", "_stats", "_readers", "opens")

    def __init__(
        self, disk: Disk, files_max: int, block_cache: BlockCache, stats: ReadStats
    ) -> None:
        if files_max < 1:
            raise ConfigError(
                f"table cache size {files_max} is below 1; allow at least one open table"
            )
        self._disk = disk
        self.files_max = files_max
        self._block_cache = block_cache
        self._stats = stats
        self._readers: OrderedDict[int, TableReader] = OrderedDict()
        self.opens = 0  # tables opened from disk, for tests and stats

    def __len__(self) -> int:
        return len(self._readers)

    def get(self, table_id: int, name: str) -> TableReader:
        """The open reader of `table_id` (file `name`), opening it if needed.

        Raises CorruptionError if the file is missing or fails its checks on open.
        """
        readers = self._readers
        reader = readers.get(table_id)
        if reader is not None:
            readers.move_to_end(table_id)
            return reader
        from keeldb.storage.sstable import TableReader  # cycle: sstable imports this module

        disk = self._disk
        try:
            file = disk.open(name)
        except FileNotFoundError as exc:
            raise CorruptionError(
                f"table file {name!r} (table {table_id}) is missing; the store lost a file: "
                "restore it from a backup or replica",
                path=name,
                offset=0,
            ) from exc
        try:
            reader = TableReader.open(
                file, table_id, self._block_cache, self._stats, reopen=lambda: disk.open(name)
            )
        except BaseException:
            file.close()
            raise
        self.opens += 1
        readers[table_id] = reader
        while len(readers) > self.files_max:
            _, old = readers.popitem(last=False)
            old.close()
        return reader

    def evict(self, table_id: int) -> None:
        """Close the reader of `table_id` and drop its cached blocks (the table was deleted)."""
        reader = self._readers.pop(table_id, None)
        if reader is not None:
            reader.close()
        self._block_cache.evict_table(table_id)

    def close(self) -> None:
        while self._readers:
            _, reader = self._readers.popitem(last=False)
            reader.close()

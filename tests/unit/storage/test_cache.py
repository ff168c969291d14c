"""Block cache (bytes-bounded LRU) and table cache (count-bounded LRU)."""

from __future__ import annotations

import tracemalloc

import pytest

from keeldb.errors import ConfigError, CorruptionError
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.cache import BlockCache, TableCache, pack_key
from keeldb.storage.engine import KIND_PUT
from keeldb.storage.sstable import ReadStats, TableReader
from keeldb.storage.sstable_writer import TableWriter


def test_lru_order_and_byte_limit() -> None:
    cache = BlockCache(100)
    cache.put((1, 0), "a", 40)
    cache.put((1, 1), "b", 40)
    assert cache.get((1, 0)) == "a"  # (1, 1) is now the oldest
    cache.put((1, 2), "c", 40)
    assert cache.get((1, 1)) is None
    assert cache.get((1, 0)) == "a" and cache.get((1, 2)) == "c"
    assert cache.bytes == 80 <= cache.bytes_max
    assert (cache.hits, cache.misses) == (3, 1)


def test_packed_and_tuple_keys_are_the_same_entries() -> None:
    cache = BlockCache(100)
    cache.put((3, 4096), "a", 10)
    assert cache.get_packed(pack_key(3, 4096)) == "a"
    cache.put_packed(pack_key(4, 0), "b", 10)
    assert cache.get((4, 0)) == "b" and cache.get((3, 0)) is None and cache.get((0, 4096)) is None


def test_replacing_a_key_keeps_accounting_exact() -> None:
    cache = BlockCache(100)
    cache.put((1, 0), "a", 30)
    cache.put((1, 0), "b", 50)
    assert cache.bytes == 50 and len(cache) == 1 and cache.get((1, 0)) == "b"


def test_block_bigger_than_cache_is_not_kept() -> None:
    cache = BlockCache(100)
    cache.put((1, 0), "a", 60)
    cache.put((1, 1), "big", 101)
    assert cache.get((1, 1)) is None and cache.get((1, 0)) == "a"
    zero = BlockCache(0)
    zero.put((1, 0), "a", 1)
    assert zero.get((1, 0)) is None and zero.bytes == 0


def test_evict_table_drops_only_that_table() -> None:
    cache = BlockCache(1000)
    for table in (1, 2):
        for off in range(3):
            cache.put((table, off), (table, off), 10)
    cache.evict_table(1)
    assert cache.bytes == 30 and len(cache) == 3
    assert cache.get((1, 0)) is None and cache.get((2, 2)) == (2, 2)


def test_negative_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        BlockCache(-1)
    with pytest.raises(ConfigError):
        TableCache(MemoryDisk(), 0, BlockCache(10), ReadStats())


def _write(disk: MemoryDisk, name: str, n: int = 2000, value_bytes: int = 100) -> None:
    file = disk.create(name)
    writer = TableWriter(file, block_bytes=4096, bloom_bits_per_key=10)
    writer.add_many((b"key%09d" % i, 1, KIND_PUT, b"%d" % i * value_bytes) for i in range(n))
    writer.finish()
    file.close()


def test_reads_respect_the_byte_limit() -> None:
    disk = MemoryDisk()
    _write(disk, "t.sst", n=5000)
    cache = BlockCache(50_000)
    reader = TableReader.open(disk.open("t.sst"), 1, cache, ReadStats())
    for _ in range(2):
        for i in range(0, 5000, 7):
            assert reader.get(b"key%09d" % i, 5) is not None
            assert cache.bytes <= 50_000
    assert cache.misses > reader.props.data_blocks  # evictions forced re-reads
    assert len(cache) >= 2


@pytest.mark.parametrize(
    ("key_bytes", "value_bytes", "varying"),
    [(16, 100, False), (8, 10, False), (30, 1000, False), (16, 100, True)],
)
def test_cached_block_charge_is_honest(key_bytes: int, value_bytes: int, varying: bool) -> None:
    """What the cache charges for its blocks may not undercount the heap they really take
    (bodies, offsets of variable-width blocks and the cache's own slots)."""
    disk = MemoryDisk()
    file = disk.create("t.sst")
    writer = TableWriter(file, block_bytes=4096, bloom_bits_per_key=10)
    writer.add_many(
        (b"%0*d" % (key_bytes, i) + b"v" * (varying * (i % 3)), i + 1000, KIND_PUT,
         (b"%d" % i).ljust(value_bytes + varying * (i % 2), b"x"))
        for i in range(3000)
    )
    writer.finish()
    cache = BlockCache(1 << 30)
    reader = TableReader.open(disk.open("t.sst"), 1, cache, ReadStats())
    reader._block(0)  # warm the module's caches, which are not part of the blocks
    cache.clear()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(reader.props.data_blocks):
            reader._block(i)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    actual = after - before
    assert len(cache) == reader.props.data_blocks > 10
    assert actual <= cache.bytes <= 1.2 * actual, (actual, cache.bytes)


def test_table_cache_count_limit_and_reuse() -> None:
    disk = MemoryDisk()
    for t in range(5):
        _write(disk, f"{t}.sst", n=100)
    cache = TableCache(disk, 2, BlockCache(1 << 20), ReadStats())
    first = cache.get(0, "0.sst")
    assert cache.get(0, "0.sst") is first and cache.opens == 1
    for t in range(1, 5):
        cache.get(t, f"{t}.sst")
        assert len(cache) <= 2
    assert cache.opens == 5
    assert first._file_closed  # pushed out by the limit, so closed
    # a holder of the evicted reader still gets answers (it reopens the file per read)
    assert first.get(b"key%09d" % 5, 5) is not None
    again = cache.get(0, "0.sst")
    assert again is not first and cache.opens == 6
    cache.close()
    assert len(cache) == 0


def test_table_cache_evict_drops_blocks() -> None:
    disk = MemoryDisk()
    _write(disk, "1.sst")
    blocks = BlockCache(1 << 20)
    cache = TableCache(disk, 4, blocks, ReadStats())
    reader = cache.get(1, "1.sst")
    list(reader.iter())
    assert blocks.bytes > 0
    cache.evict(1)
    assert blocks.bytes == 0 and len(cache) == 0 and reader._file_closed


def test_table_cache_missing_file_is_corruption() -> None:
    cache = TableCache(MemoryDisk(), 4, BlockCache(1 << 20), ReadStats())
    with pytest.raises(CorruptionError) as info:
        cache.get(9, "9.sst")
    assert info.value.path == "9.sst"


# --- registered tables: slots + CLOCK (sget) -------------------------------------------------


def _resident(cache: BlockCache, table_id: int, nblocks: int) -> list[bool]:
    """Which blocks of a registered table the cache's entries hold."""
    return [cache.get_packed(pack_key(table_id, i)) is not None for i in range(nblocks)]


def test_slots_mirror_the_cached_blocks_of_a_registered_table() -> None:
    cache = BlockCache(100)
    slots, refs = cache.register(5, 6)
    assert cache.register(5, 6)[0] is slots  # a reopened reader shares them
    for i in range(6):
        cache.put_packed(pack_key(5, i), f"b{i}", 30)
        assert [s is not None for s in slots] == [
            k in cache._entries for k in (pack_key(5, j) for j in range(6))]
    assert [s for s in slots if s is not None] == ["b3", "b4", "b5"] and cache.bytes == 90
    cache.put_packed(pack_key(5, 4), "b4'", 20)  # replacing keeps the slot current
    assert slots[4] == "b4'" and cache.bytes == 80
    cache.evict_table(5)
    assert slots == [None] * 6 and cache.bytes == 0 and len(cache) == 0
    assert cache.register(5, 6)[0] is not slots  # after evict_table: fresh arrays


def test_clock_gives_referenced_blocks_a_second_chance() -> None:
    cache = BlockCache(90)
    slots, refs = cache.register(1, 8)
    for i in range(3):
        cache.put_packed(pack_key(1, i), i, 30)
    refs[0] = 1  # block 0 was read through its slot (the lock-free hot path)
    cache.put_packed(pack_key(1, 3), 3, 30)  # evicts 1, the oldest unreferenced block
    assert [s is not None for s in slots[:4]] == [True, False, True, True]
    assert refs[0] == 0  # its chance is used up: next time it goes unless read again
    cache.put_packed(pack_key(1, 4), 4, 30)
    assert [s is not None for s in slots[:5]] == [True, False, False, True, True]
    cache.put_packed(pack_key(1, 5), 5, 30)  # block 0 went to the young end: 3 goes
    assert [s is not None for s in slots[:6]] == [True, False, False, False, True, True]
    cache.put_packed(pack_key(1, 6), 6, 30)
    assert slots[0] is None and cache.bytes == 90
    refs[4] = refs[5] = refs[6] = 1  # everything referenced: one sweep clears, then evicts
    cache.put_packed(pack_key(1, 7), 7, 30)
    assert [s is not None for s in slots[4:8]] == [False, True, True, True]
    assert not any(refs) and cache.bytes == 90


def test_reader_hits_through_slots_keep_the_hot_block_cached() -> None:
    disk = MemoryDisk()
    _write(disk, "t.sst", n=5000)
    cache = BlockCache(40_000)  # a few blocks of the table
    reader = TableReader.open(disk.open("t.sst"), 1, cache, ReadStats())
    hot = b"key%09d" % 0
    for i in range(0, 5000, 11):  # a cold sweep, with the hot key read in between
        assert reader.get(b"key%09d" % i, 5) is not None
        assert reader.get(hot, 5) is not None
    assert reader._slots[0] is not None and cache.bytes <= 40_000
    assert sum(s is not None for s in reader._slots) == len(cache) < reader._nblocks

"""Point-read readahead: a miss fills the free cache room with its block's aligned group."""

from __future__ import annotations

from bisect import bisect_left

import pytest
from xxhash import xxh3_64_intdigest

from keeldb import limits
from keeldb.errors import CorruptionError
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.block import cached_block_bytes
from keeldb.storage.cache import BlockCache, pack_key
from keeldb.storage.engine import KIND_PUT
from keeldb.storage.sstable import MISS, Entry, ReadStats, TableReader
from keeldb.storage.sstable_writer import TableWriter

NAME = "1.sst"
AHEAD = limits.block_readahead_blocks


def _key(i: int) -> bytes:
    return b"%016d" % i


def _table(count: int, cache_bytes: int) -> tuple[MemoryDisk, TableReader, ReadStats]:
    entries: list[Entry] = [(_key(i), 1, KIND_PUT, b"%0100d" % i) for i in range(count)]
    disk = MemoryDisk()
    file = disk.create(NAME)
    writer = TableWriter(file, block_bytes=4096, bloom_bits_per_key=10)
    writer.add_many(entries)
    writer.finish()
    file.close()
    stats = ReadStats()
    reader = TableReader.open(disk.open(NAME), 1, BlockCache(cache_bytes), stats)
    assert reader._nblocks > 2 * AHEAD, "the test needs more than two groups"
    return disk, reader, stats


def _get(reader: TableReader, key: bytes) -> object:
    found = reader.find_value(key, xxh3_64_intdigest(key))
    return reader.find_value_uncached(key) if found is MISS else found


def _block_of(reader: TableReader, key: bytes) -> int:
    return bisect_left(reader._last_keys, key)


def test_a_miss_with_room_caches_its_whole_group_and_counts_one_read() -> None:
    _, reader, stats = _table(20_000, 1 << 26)
    key = reader._last_keys[AHEAD + 5]  # a block of the second group
    i = _block_of(reader, key)
    lo = i - i % AHEAD
    assert lo == AHEAD
    assert _get(reader, key) == b"%0100d" % int(key)
    assert stats.block_reads == 1 and stats.blocks_prefetched == AHEAD - 1
    cached = [j for j, b in enumerate(reader._slots) if b is not None]
    assert cached == list(range(lo, lo + AHEAD))
    cache = reader._cache
    assert cache.misses == 1 and len(cache) == AHEAD
    assert cache.bytes == sum(cached_block_bytes(reader._slots[j]) for j in cached)
    # every prefetched block answers without I/O, and counts as a hit
    for j in range(lo, lo + AHEAD):
        k = reader._last_keys[j]
        assert _get(reader, k) is not None
    assert stats.block_reads == 1 and stats.find_misses == 1


def test_no_readahead_without_room_and_the_byte_limit_holds() -> None:
    _, reader, stats = _table(20_000, 40 * 4400)  # room for ~40 blocks, under a group
    cache = reader._cache
    reads = range(0, 20_000, 97)  # each in a block of its own: every read misses once
    for i in reads:
        assert _get(reader, _key(i)) == b"%0100d" % i
        assert cache.bytes <= cache.bytes_max
    assert stats.blocks_prefetched == 0
    assert stats.block_reads == cache.misses == len(reads)


def test_readahead_fills_only_the_free_room() -> None:
    _, reader, stats = _table(20_000, 1 << 26)
    cache = reader._cache
    group = sum(cached_block_bytes(reader._load_block(j)) for j in range(AHEAD))
    cache.bytes_max = group + group // 2  # room for one group and a half
    for i in range(0, 20_000, 31):
        _get(reader, _key(i))
        assert cache.bytes <= cache.bytes_max
    assert 0 < stats.blocks_prefetched < 2 * AHEAD


def test_a_corrupt_neighbour_is_skipped_and_still_detected() -> None:
    disk, reader, stats = _table(20_000, 1 << 26)
    bad = 3  # a block of the first group, not the one read first
    disk.flip_byte(NAME, reader._offsets[bad] + 40)
    good = reader._last_keys[AHEAD - 1]  # the first group's last block, as `bad` is
    assert _get(reader, good) == b"%0100d" % int(good)
    assert reader._slots[bad] is None and stats.blocks_prefetched == AHEAD - 2
    with pytest.raises(CorruptionError):
        _get(reader, reader._last_keys[bad])


def test_the_missed_block_itself_corrupt_raises() -> None:
    disk, reader, _ = _table(20_000, 1 << 26)
    disk.flip_byte(NAME, reader._offsets[AHEAD + 2] + 100)
    with pytest.raises(CorruptionError):
        _get(reader, reader._last_keys[AHEAD + 2])


def test_evict_table_of_a_registered_table_keeps_the_others() -> None:
    cache = BlockCache(1000)
    a, _ = cache.register(1, 4)
    b, _ = cache.register(2, 4)
    for i in range(4):
        cache.put_packed(pack_key(1, i), f"a{i}", 10)
        cache.put_packed(pack_key(2, i), f"b{i}", 20)
    cache.evict_table(1)
    assert a == [None] * 4 and b == ["b0", "b1", "b2", "b3"]
    assert cache.bytes == 80 and sorted(cache._entries) == [pack_key(2, i) for i in range(4)]

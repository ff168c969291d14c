"""The read path: in-place search of cached raw blocks, MISS without I/O, page scans."""

from __future__ import annotations

import random
import struct

import pytest
from crc32c import crc32c

from keeldb.errors import CorruptionError
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.cache import BlockCache
from keeldb.storage.engine import KIND_DELETE, KIND_PUT, Options
from keeldb.storage.lsm import LsmEngine
from keeldb.storage.merge import VisibleMerger, page_pairs
from keeldb.storage.sstable import (
    DELETED,
    MISS,
    SEQ_MAX,
    Entry,
    ReadStats,
    TableReader,
)
from keeldb.storage.sstable_writer import TableWriter

NAME = "1.sst"


def _table(entries: list[Entry], block_bytes: int = 4096,
           cache_bytes: int = 1 << 24) -> tuple[MemoryDisk, TableReader, ReadStats]:
    disk = MemoryDisk()
    file = disk.create(NAME)
    writer = TableWriter(file, block_bytes=block_bytes, bloom_bits_per_key=10)
    writer.add_many(entries)
    writer.finish()
    file.close()
    stats = ReadStats()
    return disk, TableReader.open(disk.open(NAME), 1, BlockCache(cache_bytes), stats), stats


def _newest(entries: list[Entry], key: bytes, seq_max: int) -> tuple[int, int, bytes] | None:
    return next(((s, k, v) for kk, s, k, v in entries if kk == key and s <= seq_max), None)


def _misaligned_probes(keys: list[bytes], width: int) -> set[bytes]:
    """Every `width`-byte substring of the keys laid end to end that is not a key."""
    blob = b"".join(keys)
    return {blob[i:i + width] for i in range(len(blob) - width + 1)} - set(keys)


def test_fixed_width_in_place_search_skips_matches_across_keys() -> None:
    # b"abab" first occurs across b"aaab" + b"abab" (misaligned), then as a key
    keys = sorted({b"aaab", b"abab", b"abba", b"baba", b"bbbb"}
                  | {b"%04d" % i for i in range(0, 3000, 3)})
    entries = [(k, 5, KIND_PUT, k[::-1] * 3) for k in keys]
    _, reader, stats = _table(entries)
    for k in keys:
        assert reader.get(k, 9) == (5, KIND_PUT, k[::-1] * 3)
        assert reader.find(k, 9, _hash(k)) == (5, KIND_PUT, k[::-1] * 3)  # cached now
    probes = _misaligned_probes(keys, 4)
    assert len(probes) > 500
    assert all(reader.get(p, 9) is None for p in probes)
    assert stats.bloom_false_positives > 0  # some probes passed the filter: searched in place
    # keys of another width can never be in a block of fixed-width keys
    assert reader.get(b"abab" + b"\0", 9) is None and reader.get(b"aba", 9) is None


def test_variable_width_in_place_search() -> None:
    rng = random.Random(3)
    keys = sorted({bytes(rng.choice(b"ab") for _ in range(rng.randint(1, 7)))
                   for _ in range(400)})
    entries = [(k, 7, KIND_PUT, b"v" * (len(k) % 3) + k) for k in keys]
    _, reader, stats = _table(entries, block_bytes=256)
    assert reader._block(0).__class__ is tuple  # variable widths: body + offsets
    for _ in range(2):  # the first pass fills the cache, the second reads it in place
        for k in keys:
            assert reader.get(k, 7) == (7, KIND_PUT, b"v" * (len(k) % 3) + k)
    absent = [bytes(rng.choice(b"ab") for _ in range(8)) for _ in range(300)]
    assert all(reader.get(p, 7) is None for p in absent if p not in keys)


@pytest.mark.parametrize("value_bytes", [0, 9, None])  # None: values of several widths
def test_versions_of_one_key_across_blocks_on_the_cached_path(value_bytes: int | None) -> None:
    key = b"hot-key!"
    entries: list[Entry] = [(b"a-key-01", 500, KIND_PUT, b"x" * 9)]
    for seq in range(400, 0, -3):
        if seq % 7 == 0:
            entries.append((key, seq, KIND_DELETE, b""))
        else:
            width = value_bytes if value_bytes is not None else seq % 11
            entries.append((key, seq, KIND_PUT, (b"%d" % seq).ljust(width, b".")[:width]))
    entries.append((b"z-key-01", 1, KIND_PUT, b"z" * 9))
    _, reader, _ = _table(entries, block_bytes=128)
    assert reader._nblocks > 5
    for warm in (False, True):
        for seq_max in [0, 1, 2, 3, 7, 100, 398, 399, 400, 401, 1 << 40]:
            want = _newest(entries, key, seq_max)
            if warm:
                assert reader.find(key, seq_max, _hash(key)) == want
            assert reader.get(key, seq_max) == want


def test_find_answers_miss_without_io_then_find_uncached_reads() -> None:
    entries = [(b"%08d" % i, 3, KIND_PUT, b"v%d" % i) for i in range(2000)]
    _, reader, stats = _table(entries)
    key = b"%08d" % 1234
    assert reader.find(key, 9, _hash(key)) is MISS
    assert stats.block_reads == 0 and stats.tables_touched == 1
    assert reader.find_uncached(key, 9) == (3, KIND_PUT, b"v1234")
    assert stats.block_reads == 1 and stats.tables_touched == 1  # not counted twice
    assert reader.find(key, 9, _hash(key)) == (3, KIND_PUT, b"v1234")
    assert stats.block_reads == 1


def test_find_never_reads_a_block_even_when_versions_continue_in_the_next() -> None:
    key = b"key-0001"
    entries: list[Entry] = [(key, seq, KIND_PUT, b"%03d" % seq) for seq in range(300, 0, -1)]
    _, reader, stats = _table(entries, block_bytes=128)
    reader._block(0)  # only the block of the newest versions is cached
    assert reader.find(key, 300, _hash(key)) == (300, KIND_PUT, b"300")
    reads = stats.block_reads
    assert reader.find(key, 5, _hash(key)) is MISS  # version 5 lies in a later block
    assert stats.block_reads == reads
    assert reader.find_uncached(key, 5) == (5, KIND_PUT, b"005")


@pytest.mark.parametrize("widths", ["fixed", "variable"])
def test_reverse_iteration_is_the_exact_reverse(widths: str) -> None:
    rng = random.Random(5)
    entries: list[Entry] = []
    for i in range(600):
        key = b"%06d" % i + (b"+" * (i % 3) if widths == "variable" else b"")
        for seq in sorted(rng.sample(range(1, 50), rng.randint(1, 3)), reverse=True):
            entries.append((key, seq, KIND_PUT, b"%d" % (seq % 10)))
    _, reader, _ = _table(entries, block_bytes=200)
    keys = [e[0] for e in entries]
    for _ in range(30):
        start, end = sorted(rng.sample(keys, 2))
        want = [e for e in entries if start <= e[0] < end]
        assert list(reader.iter(start, end)) == want
        assert list(reader.iter(start, end, reverse=True)) == want[::-1]
    assert list(reader.iter(reverse=True)) == entries[::-1]


def test_block_that_passes_its_checksum_but_lies_is_corruption() -> None:
    entries = [(b"%08d" % i, 3, KIND_PUT, b"v" * 20) for i in range(500)]
    disk, reader, _ = _table(entries)
    offset, size = reader._offsets[1], reader._sizes[1]
    data = bytearray(disk.open(NAME).read_at(0, disk.open(NAME).size()))
    raw = data[offset:offset + size]
    struct.pack_into("<I", raw, 0, struct.unpack_from("<I", raw, 0)[0] + 1)  # one more entry
    raw[-4:] = struct.pack("<I", crc32c(raw[-5:-4], crc32c(bytes(raw[:-5]))))  # crc is fine
    data[offset:offset + size] = raw
    disk.create("2.sst").append(bytes(data))
    fresh = TableReader.open(disk.open("2.sst"), 2, BlockCache(1 << 20), ReadStats())
    key = reader._last_keys[1]
    with pytest.raises(CorruptionError, match="data block"):
        fresh.get(key, 9)
    assert fresh.find(key, 9, _hash(key)) is MISS  # nothing bad was cached


def test_flipped_byte_fails_the_cached_path_read_that_touches_it() -> None:
    entries = [(b"%08d" % i, 3, KIND_PUT, b"v" * 20) for i in range(500)]
    disk, reader, _ = _table(entries)
    disk.flip_byte(NAME, reader._offsets[2] + 40)
    fresh = TableReader.open(disk.open(NAME), 1, BlockCache(1 << 20), ReadStats())
    good, bad = reader._last_keys[0], reader._last_keys[2]
    assert fresh.get(good, 9) == (3, KIND_PUT, b"v" * 20)
    assert fresh.find(good, 9, _hash(good)) == (3, KIND_PUT, b"v" * 20)
    for _ in range(2):  # a failed block is never cached: every read of it fails
        assert fresh.find(bad, 9, _hash(bad)) is MISS
        with pytest.raises(CorruptionError):
            fresh.find_uncached(bad, 9)


def test_read_of_a_version_whose_table_a_compaction_deleted_retries_on_the_new_one() -> None:
    options = Options(memtable_bytes=2048, block_bytes=128, l0_compaction_trigger=2)
    engine = LsmEngine(MemoryDisk(), options)
    for round_ in range(2):  # two overlapping L0 tables: compaction rewrites them
        for i in range(round_, 60, 2 - round_):
            engine.put(b"k%03d" % i, b"v%d" % i)
        engine.rotate()
        while engine.flush_step():
            pass
    old = engine.version
    assert len(old.levels[0]) >= 2
    assert engine.get(b"k007") == b"v7"  # remembers the L0 readers in `old`
    engine.compact_range()  # deletes old's tables and drops their cached blocks
    assert engine.version is not old and old.readers
    assert all(r._file_closed for r in old.readers.values())
    in_old_tables = [i for i in range(60) if b"k%03d" % i not in old.mem.table]
    assert len(in_old_tables) > 50
    for i in in_old_tables:  # each read fails on a gone table, then reads the new version
        found = engine._get_tables(old, b"k%03d" % i, 1 << 40)
        assert found is not None and found[2] == b"v%d" % i


# --- page scans -----------------------------------------------------------------------------


def test_page_pairs_cuts_at_the_nearest_last_key_and_resolves_versions() -> None:
    a = [(b"a", 5, KIND_PUT, b"a5"), (b"c", 9, KIND_DELETE, b""), (b"e", 2, KIND_PUT, b"e2")]
    b = [(b"b", 3, KIND_PUT, b"b3"), (b"c", 4, KIND_PUT, b"c4"), (b"d", 8, KIND_PUT, b"d8")]
    # b may hold more after b"d": b"d" and later keys are not final
    assert page_pairs([a, b], [False, True], 100, False, 10) is None  # only 2 final pairs
    assert page_pairs([a, b], [False, True], 100, False, 2) == [(b"a", b"a5"), (b"b", b"b3")]
    assert page_pairs([a, b], [False, False], 100, False, 10) == [
        (b"a", b"a5"), (b"b", b"b3"), (b"d", b"d8"), (b"e", b"e2")]
    # at seq 6 the tombstone (9) and d8 are invisible: c4 shows
    assert page_pairs([a, b], [False, False], 6, False, 10) == [
        (b"a", b"a5"), (b"b", b"b3"), (b"c", b"c4"), (b"e", b"e2")]
    ra, rb = a[::-1], b[::-1]
    assert page_pairs([ra, rb], [False, False], 6, True, 3) == [
        (b"e", b"e2"), (b"c", b"c4"), (b"b", b"b3")]
    assert page_pairs([ra, rb], [False, True], 100, True, 1) == [(b"e", b"e2")]
    assert page_pairs([[], []], [False, False], 100, False, 5) == []


def test_merger_seeded_with_a_short_page_read_goes_on_correctly() -> None:
    rng = random.Random(9)
    sources: list[list[Entry]] = [[] for _ in range(3)]
    for i in range(300):
        for s in rng.sample(range(3), rng.randint(1, 3)):
            sources[s].append((b"%04d" % i, 10 * s + rng.randint(1, 9),
                               rng.choice([KIND_PUT, KIND_PUT, KIND_DELETE]), b"%d" % s))
    want = VisibleMerger([iter(s) for s in sources], 25).take(200)
    its = [iter(s) for s in sources]
    read = [[next(it) for _ in range(5)] for it in its]
    more = [True] * 3
    assert page_pairs(read, more, 25, False, 200) is None
    assert VisibleMerger(its, 25, False, None, read, more).take(200) == want


def _engine_with_every_source() -> tuple[LsmEngine, dict[bytes, bytes]]:
    """Deep levels, L0 tables, a frozen and an active memtable, all overlapping."""
    options = Options(memtable_bytes=4096, block_bytes=256, table_bytes=2048,
                      level1_bytes=4096, l0_compaction_trigger=100, l0_slowdown_files=100,
                      l0_stop_files=200, level_size_ratio=3)
    engine = LsmEngine(MemoryDisk(), options)
    model: dict[bytes, bytes] = {}
    rng = random.Random(11)
    for step in range(1500):
        key = b"k%04d" % rng.randrange(600)
        if rng.random() < 0.2:
            engine.delete(key)
            model.pop(key, None)
        else:
            model[key] = b"v%d" % step
            engine.put(key, model[key])
        while engine.version.imms:  # each full memtable becomes an L0 table
            engine.flush_step()
        if step == 700:
            engine.compact_range()
    engine.rotate()
    for step in range(40):
        key = b"k%04d" % rng.randrange(600)
        model[key] = b"w%d" % step
        engine.put(key, model[key])
    version = engine.version
    assert version.levels[0] and version.deep and version.imms and len(version.mem)
    return engine, model


def test_page_scans_match_the_model_from_every_start_and_direction() -> None:
    engine, model = _engine_with_every_source()
    keys = sorted(model)
    rng = random.Random(2)
    for _ in range(60):
        start = b"k%04d" % rng.randrange(620)
        limit = rng.choice([1, 5, 100, 256])
        end = rng.choice([None, b"k%04d" % rng.randrange(620)])
        fwd = [(k, model[k]) for k in keys if k >= start and (end is None or k < end)]
        assert list(engine.scan(start, end, limit=limit)) == fwd[:limit]
        back = [(k, model[k]) for k in reversed(keys)
                if k < start and (end is None or k >= end)]
        assert list(engine.scan(end, start, reverse=True, limit=limit)) == back[:limit]
    assert not engine.live_snapshots() and not engine._pins


def test_page_scans_of_a_snapshot_ignore_later_writes() -> None:
    engine, model = _engine_with_every_source()
    snap = engine.snapshot()
    before = sorted(model.items())
    for i in range(300):
        engine.put(b"k%04d" % (i * 2), b"later")
        if i % 3 == 0:
            engine.delete(b"k%04d" % (i * 2 + 1))
        while engine.version.imms:
            engine.flush_step()
    assert list(snap.scan(limit=256)) == before[:256]
    assert list(snap.scan(reverse=True, limit=100)) == before[::-1][:100]
    snap.close()


def _hash(key: bytes) -> int:
    from xxhash import xxh3_64_intdigest

    return xxh3_64_intdigest(key)


# --- find_value: the engine's newest-version hot path (sget) ---------------------------------


def _expected_value(entries: list[Entry], key: bytes) -> object:
    found = _newest(entries, key, SEQ_MAX)
    return None if found is None else found[2] if found[1] else DELETED


@pytest.mark.parametrize("widths", ["fixed", "variable"])
def test_find_value_is_the_newest_version_of_find(widths: str) -> None:
    """find_value(key) == the newest version find/get gives, on cold and warm blocks, for
    puts, tombstones, keys with many versions spanning blocks and absent keys."""
    rng = random.Random(11)
    entries: list[Entry] = []
    for i in range(0, 900, 3):
        key = b"%06d" % i + (b"+" * (i % 4) if widths == "variable" else b"")
        for seq in sorted(rng.sample(range(1, 400), rng.choice([1, 1, 2, 40])), reverse=True):
            kind = KIND_DELETE if rng.random() < 0.2 else KIND_PUT
            value = b"" if kind == KIND_DELETE else b"%05d" % seq + b"." * (
                seq % 3 if widths == "variable" else 0)
            entries.append((key, seq, kind, value))
    _, reader, stats = _table(entries, block_bytes=256)
    keys = sorted({e[0] for e in entries})
    absent = [b"%06d" % i for i in range(1, 900, 3)] + [b"", b"0", b"999999+"]
    for k in keys + absent:
        want = _expected_value(entries, k)
        got = reader.find_value(k, _hash(k))
        if got is MISS:
            got = reader.find_value_uncached(k)
            found = reader.find_uncached(k, SEQ_MAX)
            assert (None if found is None else found[2] if found[1] else DELETED) == want
        assert got == want or got is want, (k, got, want)
        assert reader.find_value(k, _hash(k)) in (want, MISS)  # cached now, unless evicted
    assert stats.tables_touched > len(keys) and stats.find_misses > 0


def test_find_value_answers_miss_without_io_and_counts_cache_hits() -> None:
    entries = [(b"%08d" % i, 3, KIND_PUT, b"v%d" % i) for i in range(2000)]
    _, reader, stats = _table(entries)
    key = b"%08d" % 77
    assert reader.find_value(key, _hash(key)) is MISS
    assert stats.block_reads == 0 and stats.find_misses == 1 and stats.find_hits == 0
    assert reader.find_value_uncached(key) == b"v77"
    assert reader.find_value(key, _hash(key)) == b"v77"
    assert stats.block_reads == 1 and stats.find_hits == 1 and stats.bloom_checks == 2


def test_engine_stats_count_lock_free_cache_hits() -> None:
    engine = LsmEngine(MemoryDisk(), Options(memtable_bytes=4096, block_bytes=256))
    for i in range(300):
        engine.put(b"k%04d" % i, b"v%d" % i)
        while engine.flush_step():
            pass
    engine.compact_range()
    for _ in range(2):
        for i in range(300):
            assert engine.get(b"k%04d" % i) == b"v%d" % i
    st = engine.stats()
    assert st.block_cache_misses > 0 and st.block_cache_hits > st.block_cache_misses
    assert st.block_cache_hits + st.block_cache_misses == engine.read_stats.tables_touched

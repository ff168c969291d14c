"""Page scans read as key/value columns: `TableReader.read_page`, `merge.merge_page` and the
engine's unpinned page path (`LsmEngine._page_unpinned`), checked against models."""

from __future__ import annotations

import random
from typing import Any

import pytest

from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage import lsm_scan
from keeldb.storage.cache import BlockCache
from keeldb.storage.engine import KIND_DELETE, KIND_PUT, Options
from keeldb.storage.lsm import LsmEngine
from keeldb.storage.memory import MemoryEngine
from keeldb.storage.merge import merge_page, page_share
from keeldb.storage.sstable import Entry, ReadStats, TableReader
from keeldb.storage.sstable_writer import TableWriter


def _table(entries: list[Entry], block_bytes: int) -> TableReader:
    disk = MemoryDisk()
    file = disk.create("1.sst")
    writer = TableWriter(file, block_bytes=block_bytes, bloom_bits_per_key=10)
    writer.add_many(entries)
    writer.finish()
    file.close()
    return TableReader.open(disk.open("1.sst"), 1, BlockCache(1 << 24), ReadStats())


def _versions(widths: str, seed: int) -> list[Entry]:
    """Sorted (key asc, seq desc) entries: keys with one to many versions (some spanning
    blocks), tombstones, fixed or variable widths."""
    rng = random.Random(seed)
    out: list[Entry] = []
    for i in range(0, 600, 2):
        key = b"%05d" % i + (b"~" * (i % 3) if widths == "variable" else b"")
        for seq in sorted(rng.sample(range(1, 500), rng.choice([1, 1, 1, 2, 30])),
                          reverse=True):
            kind = KIND_DELETE if rng.random() < 0.15 else KIND_PUT
            value = b"" if kind == KIND_DELETE else b"v%04d" % seq + (
                b"." * (seq % 4) if widths == "variable" else b"")
            out.append((key, seq, kind, value))
    return out


@pytest.mark.parametrize("widths", ["fixed", "variable"])
def test_read_page_gives_the_first_entries_in_file_order(widths: str) -> None:
    entries = _versions(widths, 3)
    reader = _table(entries, block_bytes=300)
    seq_max = max(e[1] for e in entries)
    rng = random.Random(5)
    for _ in range(400):
        start = rng.choice([None, b"%05d" % rng.randrange(610)])
        end = rng.choice([None, b"%05d" % rng.randrange(610)])
        reverse = rng.random() < 0.5
        want = rng.choice([1, 2, 7, 40, 1000])
        seq = rng.choice([seq_max, 250, 40])
        in_range = [e for e in entries
                    if (start is None or e[0] >= start) and (end is None or e[0] < end)]
        order = in_range[::-1] if reverse else in_range
        taken = order[:want]
        keys: list[bytes] = []
        values: list[Any] = []
        count, last, more, tombs = reader.read_page(start, end, reverse, want, seq, keys,
                                                    values)
        assert count == len(taken)
        assert last == (taken[-1][0] if taken else None)
        file_order = taken[::-1] if reverse else taken
        visible = [e for e in file_order if e[1] <= seq]
        assert keys == [e[0] for e in visible]
        assert values == [e[3] if e[2] else None for e in visible]
        assert tombs or None not in values  # (it may say so of a filtered tombstone)
        if len(order) > want:  # entries remain: it must say so
            assert more == (2 if reverse or seq < seq_max else 1)
        elif more:  # it may only guess "more" when it stopped at a block's end
            assert count == want


def test_merge_page_keeps_the_newest_source_and_cuts_where_a_source_may_go_on() -> None:
    # sources newest first: memtable-like [b, d(tombstone)], then a table [a, b, b, c, d, e]
    # whose b has two versions (newest first)
    segs: list[tuple[list[bytes], list[Any]]] = [
        ([b"b", b"d"], [b"b-new", None]),
        ([b"a", b"b", b"b", b"c", b"d", b"e"], [b"a", b"b-old", b"b-older", b"c", b"d-old",
                                                b"e"])]
    assert merge_page(segs[1:], None, False, False, 2, False) == [(b"a", b"a"),
                                                                  (b"b", b"b-old")]
    assert merge_page(segs, None, False, False, 10, True) == [
        (b"a", b"a"), (b"b", b"b-new"), (b"c", b"c"), (b"e", b"e")]
    assert merge_page(segs, None, False, True, 2, True) == [
        (b"e", b"e"), (b"c", b"c")]
    # a source with more ended at c: c itself is whole (closed) or not (open)
    assert merge_page(segs, b"c", False, False, 3, True) == [
        (b"a", b"a"), (b"b", b"b-new"), (b"c", b"c")]
    assert merge_page(segs, b"c", True, False, 2, True) == [
        (b"a", b"a"), (b"b", b"b-new")]
    # cannot tell: says how many entries read were hidden (b-old, b-older, d-old, d's
    # tombstone)
    assert merge_page(segs, b"c", True, False, 3, True) == 4
    assert merge_page(segs, b"b", True, True, 2, True) == [(b"e", b"e"), (b"c", b"c")]
    assert merge_page(segs, b"b", True, True, 3, True) == 4
    assert merge_page([], None, False, False, 5, False) == []


def test_page_share_reads_the_expected_count_plus_deviations() -> None:
    assert page_share(100, 80, 100) == int(80 + 2.5 * 4) + 2
    assert page_share(1, 1, 1000) == 2  # a tiny source still reads past its first key
    assert page_share(256, 10, 20) > 128


def _loaded_engine(seed: int) -> tuple[LsmEngine, MemoryEngine, list[tuple[Any, Any]]]:
    """Every kind of source (levels, L0, frozen and active memtable), overwrites,
    tombstones and snapshots that keep old versions in tables."""
    options = Options(memtable_bytes=4096, block_bytes=256, table_bytes=2048,
                      level1_bytes=4096, l0_compaction_trigger=100, l0_slowdown_files=100,
                      l0_stop_files=200, level_size_ratio=3)
    engine = LsmEngine(MemoryDisk(), options)
    oracle = MemoryEngine()
    snaps: list[tuple[Any, Any]] = []
    rng = random.Random(seed)
    for step in range(1600):
        key = b"k%04d" % rng.randrange(500)
        if rng.random() < 0.2:
            engine.delete(key)
            oracle.delete(key)
        else:
            value = b"v%d" % step
            engine.put(key, value)
            oracle.put(key, value)
        if step % 400 == 99:
            snaps.append((engine.snapshot(), oracle.snapshot()))
        while engine.version.imms:
            engine.flush_step()
        if step in (600, 1200):
            while engine.compact_step(force=True):
                pass
    engine.rotate()
    for step in range(60):
        key = b"k%04d" % rng.randrange(500)
        engine.put(key, b"w%d" % step)
        oracle.put(key, b"w%d" % step)
    snaps.append((engine.snapshot(), oracle.snapshot()))
    engine.put(b"k0001", b"after the last snapshot")
    oracle.put(b"k0001", b"after the last snapshot")
    version = engine.version
    assert version.levels[0] and version.deep and version.imms and len(version.mem)
    return engine, oracle, snaps


@pytest.mark.parametrize("seed", [1, 2])
def test_page_scans_match_the_oracle_fresh_and_through_snapshots(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lsm_scan, "PAGE_SKIPS_MAX", 0)  # try the column read on every page
    engine, oracle, snaps = _loaded_engine(seed)
    answered = 0
    fast = engine._page_fast

    def counting(*args: Any) -> Any:
        nonlocal answered
        pairs = fast(*args)
        answered += pairs is not None
        calls.append(args)
        return pairs

    calls: list[Any] = []

    engine._page_fast = counting  # type: ignore[method-assign,assignment]
    readers = [(engine, oracle)] + snaps
    rng = random.Random(seed)
    for i in range(300):
        mine, theirs = readers[i % len(readers)]
        start = rng.choice([None, b"k%04d" % rng.randrange(520)])
        end = rng.choice([None, None, b"k%04d" % rng.randrange(520)])
        reverse = rng.random() < 0.5
        limit = rng.choice([1, 3, 100, 256])
        got = list(mine.scan(start, end, reverse, limit))
        assert got == list(theirs.scan(start, end, reverse, limit)), (i, start, end, reverse)
    # the column read answered many pages (the rest: tombstones and versions hid much)
    assert answered > 50 and len(calls) < 330
    for snap, _ in snaps:
        snap.close()
    assert not engine.live_snapshots() and not engine._pins


def test_a_write_racing_an_unpinned_page_reads_it_again_registered() -> None:
    engine, oracle, snaps = _loaded_engine(3)
    for snap, _ in snaps:
        snap.close()
    fast = engine._page_fast
    calls = []

    def racing(*args: Any) -> Any:
        calls.append(args[1])  # the seq it reads at
        if len(calls) == 1:  # a writer overwrites a key of the page meanwhile
            engine.put(b"k0100", b"raced")
        return fast(*args)

    engine._page_fast = racing  # type: ignore[method-assign,assignment]
    oracle.put(b"k0100", b"raced")
    got = list(engine.scan(b"k0090", None, False, 50))
    assert got == list(oracle.scan(b"k0090", None, False, 50))
    assert len(calls) == 2 and calls[1] > calls[0]  # read again at a newer seq
    assert not engine.live_snapshots() and not engine._pins


def test_a_compaction_deleting_tables_under_an_unpinned_page_is_survived() -> None:
    engine, oracle, snaps = _loaded_engine(4)
    for snap, _ in snaps:
        snap.close()
    fast = engine._page_fast
    versions = []

    def compacting(*args: Any) -> Any:
        versions.append(args[0])
        if len(versions) == 1:  # every table of this version is compacted away and deleted
            engine.compact_range()
            gone = {t.name for lv in args[0].levels for t in lv} - {
                t.name for lv in engine.version.levels for t in lv}
            assert gone and not any(engine.disk.exists(name) for name in gone)
            engine.block_cache.clear()
        return fast(*args)

    engine._page_fast = compacting  # type: ignore[method-assign,assignment]
    got = list(engine.scan(b"k0200", None, True, 100))
    assert got == list(oracle.scan(b"k0200", None, True, 100))
    assert len(versions) == 2 and versions[1] is not versions[0]
    assert not engine.live_snapshots() and not engine._pins


def test_pages_the_column_read_cannot_tell_send_the_next_ones_to_the_general_merge() -> None:
    engine, oracle, snaps = _loaded_engine(5)
    tries = []
    fast = engine._page_fast

    def watched(*args: Any) -> Any:
        pairs = fast(*args)
        tries.append(pairs is not None)
        return pairs

    engine._page_fast = watched  # type: ignore[method-assign,assignment]
    old = snaps[0][0]  # most of what was written since is hidden from it: pages fail
    for i in range(40):
        start = b"k%04d" % (i * 12)
        assert list(old.scan(start, None, False, 100)) == list(
            snaps[0][1].scan(start, None, False, 100))
    # failures in a row skip it for 1, 3, 7, 15 ... pages: 5 tries in 40 pages
    assert tries == [False] * 5
    for snap, _ in snaps:
        snap.close()


def test_memtable_page_columns_match_page_and_refuse_a_stale_entry_list() -> None:
    from keeldb.storage.memtable import ENTRIES_BUILD_SCANS_MIN, Memtable

    mem = Memtable(1)
    rng = random.Random(6)
    for seq in range(1, 400):
        kind = KIND_DELETE if rng.random() < 0.1 else KIND_PUT
        mem.apply(seq, [(kind, b"k%04d" % rng.randrange(300), b"v%d" % seq)], 8, -1)
    assert mem.page_columns(None, None, False, 399, 10) is None  # no entry list built yet
    for _ in range(ENTRIES_BUILD_SCANS_MIN):
        list(mem.iter(None, None, False, 399))
    for start, end, reverse, want in [(None, None, False, 10), (b"k0100", b"k0150", True, 7),
                                      (b"k0290", None, False, 50), (None, b"k0005", True, 3)]:
        cols = mem.page_columns(start, end, reverse, 399, want)
        assert cols is not None
        keys, values, tombs, more = cols
        entries, page_more = mem.page(start, end, reverse, 399, want)
        if reverse:
            entries.reverse()
        assert keys == [e[0] for e in entries] and more == page_more and tombs
        assert values == [e[3] if e[2] else None for e in entries]
    assert mem.page_columns(None, None, False, 398, 10) is None  # a snapshot before seq_max
    mem.apply(400, [(KIND_PUT, b"k0001", b"new")], 8, -1)
    assert mem.page_columns(None, None, False, 400, 10) is None  # written since


def test_page_shares_follow_the_distinct_keys_when_sources_overlap() -> None:
    """After an overwrite of most keys every page holds each key in two sources: shares of
    all entries would read half a page from each and fail; the distinct-key estimate
    learns the overlap and the column read answers (nearly) every page."""
    options = Options(memtable_bytes=1 << 16, block_bytes=512, table_bytes=1 << 20,
                      l0_compaction_trigger=100, l0_slowdown_files=100, l0_stop_files=200)
    engine = LsmEngine(MemoryDisk(), options)
    oracle = MemoryEngine()
    for value, keys in ((b"a", range(0, 4000, 2)), (b"b", range(0, 4000, 4))):
        for k in keys:
            engine.put(b"k%05d" % k, value)
            oracle.put(b"k%05d" % k, value)
        engine.rotate()
        while engine.version.imms:
            engine.flush_step()
        if value == b"a":
            while engine.compact_step(force=True):
                pass
    assert engine.version.deep and engine.version.levels[0]
    fast = engine._page_fast
    told = []

    def counting(*args: Any) -> Any:
        pairs = fast(*args)
        told.append(pairs is not None)
        return pairs

    engine._page_fast = counting  # type: ignore[method-assign,assignment]
    rng = random.Random(8)
    for _ in range(60):
        start = b"k%05d" % rng.randrange(3800)
        reverse = rng.random() < 0.3
        got = list(engine.scan(None if reverse else start, start if reverse else None,
                               reverse, 100))
        assert got == list(oracle.scan(None if reverse else start, start if reverse else None,
                                       reverse, 100))
    assert 0.6 < engine._page_unique < 0.9  # 2000 distinct keys in 3000 entries
    assert len(told) == 60 and sum(told) >= 57

"""SSTable round trips, format checks and corruption detection."""

from __future__ import annotations

import os
from bisect import bisect_left
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keeldb.errors import ClosedError, ConfigError, CorruptionError
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.runtime.real.disk import RealDisk
from keeldb.storage.bloom import blocks_for
from keeldb.storage.cache import BlockCache
from keeldb.storage.engine import KIND_DELETE, KIND_PUT
from keeldb.storage.sstable import (
    FOOTER_BYTES,
    Entry,
    ReadStats,
    TableReader,
)
from keeldb.storage.sstable_writer import TableWriter

NAME = "000001.sst"


def write_table(
    disk: MemoryDisk | RealDisk,
    entries: list[Entry],
    *,
    block_bytes: int = 4096,
    compression: str = "none",
    name: str = NAME,
    one_by_one: bool = False,
) -> None:
    file = disk.create(name)
    writer = TableWriter(
        file, block_bytes=block_bytes, bloom_bits_per_key=10, compression=compression
    )
    if one_by_one:
        for entry in entries:
            writer.add(*entry)
    else:
        writer.add_many(entries)
    props = writer.finish()
    assert props.file_bytes == file.size()
    file.close()


def open_table(
    disk: MemoryDisk | RealDisk,
    name: str = NAME,
    cache_bytes: int = 1 << 20,
    stats: ReadStats | None = None,
) -> TableReader:
    return TableReader.open(disk.open(name), 7, BlockCache(cache_bytes), stats or ReadStats())


def sample_entries(n: int, versions: int = 2, value_bytes: int = 50) -> list[Entry]:
    out: list[Entry] = []
    for i in range(n):
        key = b"key%08d" % i
        for v in range(versions, 0, -1):
            seq = i * 10 + v
            if (i + v) % 5 == 0:
                out.append((key, seq, KIND_DELETE, b""))
            else:
                out.append((key, seq, KIND_PUT, bytes([65 + v]) * (value_bytes + i % 13)))
    return out


# --- model ------------------------------------------------------------------------------


def model_get(entries: list[Entry], key: bytes, seq_max: int) -> tuple[int, int, bytes] | None:
    for k, seq, kind, value in entries:
        if k == key and seq <= seq_max:
            return seq, kind, value
    return None


def model_iter(entries: list[Entry], start: bytes | None, end: bytes | None) -> list[Entry]:
    return [e for e in entries if (start is None or e[0] >= start) and (end is None or e[0] < end)]


keys_st = st.binary(min_size=1, max_size=6)


@st.composite
def sorted_entries(draw: st.DrawFn) -> list[Entry]:
    keys = sorted(set(draw(st.lists(keys_st, max_size=60))))
    out: list[Entry] = []
    for key in keys:
        seqs = sorted(set(draw(st.lists(st.integers(0, 50), min_size=1, max_size=4))), reverse=True)
        for seq in seqs:
            if draw(st.booleans()) and draw(st.booleans()):
                out.append((key, seq, KIND_DELETE, b""))
            else:
                out.append((key, seq, KIND_PUT, draw(st.binary(max_size=40))))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=sorted_entries(),
    block_bytes=st.sampled_from([64, 100, 512, 4096]),
    compression=st.sampled_from(["none", "zstd"]),
    probes=st.lists(st.tuples(keys_st, st.integers(-1, 55)), max_size=20),
    ranges=st.lists(st.tuples(st.none() | keys_st, st.none() | keys_st), max_size=6),
    one_by_one=st.booleans(),
)
def test_round_trip_matches_model(
    entries: list[Entry],
    block_bytes: int,
    compression: str,
    probes: list[tuple[bytes, int]],
    ranges: list[tuple[bytes | None, bytes | None]],
    one_by_one: bool,
) -> None:
    disk = MemoryDisk()
    write_table(
        disk, entries, block_bytes=block_bytes, compression=compression, one_by_one=one_by_one
    )
    reader = open_table(disk, cache_bytes=4096)
    props = reader.props
    assert props.entries == len(entries)
    assert props.tombstones == sum(1 for e in entries if e[2] == KIND_DELETE)
    if entries:
        assert (props.smallest, props.largest) == (entries[0][0], entries[-1][0])
        assert props.seq_min == min(e[1] for e in entries)
        assert props.seq_max == max(e[1] for e in entries)
    assert list(reader.iter()) == entries
    assert list(reader.iter(reverse=True)) == entries[::-1]
    for key, seq_max in probes + [(e[0], e[1]) for e in entries[:10]]:
        assert reader.get(key, seq_max) == model_get(entries, key, seq_max)
        if model_get(entries, key, 1 << 62) is not None:
            assert reader.may_contain(key)  # no false negatives
    for start, end in ranges:
        expected = model_iter(entries, start, end)
        assert list(reader.iter(start, end)) == expected
        assert list(reader.iter(start, end, reverse=True)) == expected[::-1]
    assert reader.verify() == props.data_blocks + 3


def test_many_versions_of_one_key_span_blocks() -> None:
    entries = [(b"hot", seq, KIND_PUT, b"v%04d" % seq) for seq in range(2000, 0, -1)]
    entries += [(b"hot2", 5, KIND_PUT, b"x")]
    disk = MemoryDisk()
    write_table(disk, entries, block_bytes=256)
    reader = open_table(disk)
    assert reader.props.data_blocks > 20
    for seq_max in (2000, 1999, 1500, 17, 1):
        assert reader.get(b"hot", seq_max) == (seq_max, KIND_PUT, b"v%04d" % seq_max)
    assert reader.get(b"hot", 0) is None
    assert reader.get(b"hot2", 4) is None
    assert list(reader.iter(b"hot", b"hot2", reverse=True)) == entries[:-1][::-1]


def test_empty_table() -> None:
    disk = MemoryDisk()
    write_table(disk, [])
    stats = ReadStats()
    reader = open_table(disk, stats=stats)
    props = reader.props
    assert (props.entries, props.data_blocks, props.smallest, props.largest) == (0, 0, b"", b"")
    assert reader.get(b"a", 10) is None
    assert list(reader.iter()) == [] and list(reader.iter(reverse=True)) == []
    assert reader.verify() == 3


def test_single_huge_value_bigger_than_a_block() -> None:
    huge = bytes(range(256)) * 4096  # 1 MiB
    entries = [(b"a", 3, KIND_PUT, b"small"), (b"b", 2, KIND_PUT, huge), (b"c", 1, KIND_PUT, b"")]
    disk = MemoryDisk()
    write_table(disk, entries, block_bytes=4096)
    reader = open_table(disk, cache_bytes=4 << 20)
    assert reader.props.data_blocks == 2  # a block ends after the entry crossing block_bytes
    assert reader.get(b"b", 5) == (2, KIND_PUT, huge)
    assert list(reader.iter()) == entries


def test_block_of_many_tiny_fixed_width_entries() -> None:
    entries = [(b"%05d" % i, 1, KIND_PUT, b"ab") for i in range(10_000)]
    disk = MemoryDisk()
    write_table(disk, entries, block_bytes=1 << 20)  # one block, more fields than a parser
    reader = open_table(disk)
    assert reader.props.data_blocks == 1
    assert list(reader.iter()) == entries
    assert reader.get(b"09999", 1) == (1, KIND_PUT, b"ab")


def test_blocks_are_about_block_bytes() -> None:
    entries = sample_entries(3000, versions=1, value_bytes=100)
    disk = MemoryDisk()
    write_table(disk, entries, block_bytes=4096)
    reader = open_table(disk)
    sizes = reader._sizes
    # fixed-width columns store fewer bytes than the writer budgets per entry
    assert all(3000 <= s <= 4096 + 200 for s in sizes[:-1]), (min(sizes), max(sizes))


def test_add_and_add_many_write_identical_files() -> None:
    entries = sample_entries(500)
    disk = MemoryDisk()
    write_table(disk, entries, name="a.sst")
    write_table(disk, entries, name="b.sst", one_by_one=True)
    a, b = disk.open("a.sst"), disk.open("b.sst")
    assert a.read_at(0, a.size()) == b.read_at(0, b.size())


@pytest.mark.parametrize(
    "bad",
    [
        [(b"b", 1, KIND_PUT, b""), (b"a", 1, KIND_PUT, b"")],  # keys descending
        [(b"a", 1, KIND_PUT, b""), (b"a", 2, KIND_PUT, b"")],  # seqs ascending
        [(b"a", 1, KIND_PUT, b""), (b"a", 1, KIND_PUT, b"")],  # duplicate
        [(b"a", 1, 7, b"")],  # unknown kind
    ],
)
def test_writer_asserts_order_and_kinds(bad: list[Entry]) -> None:
    writer = TableWriter(MemoryDisk().create(NAME), block_bytes=4096, bloom_bits_per_key=10)
    with pytest.raises(AssertionError):
        writer.add_many(bad)


def test_writer_order_is_checked_across_calls() -> None:
    writer = TableWriter(MemoryDisk().create(NAME), block_bytes=4096, bloom_bits_per_key=10)
    writer.add(b"b", 1, KIND_PUT, b"")
    with pytest.raises(AssertionError):
        writer.add_many([(b"a", 1, KIND_PUT, b"")])


def test_out_of_order_single_adds_are_caught_by_finish() -> None:
    writer = TableWriter(MemoryDisk().create(NAME), block_bytes=4096, bloom_bits_per_key=10)
    writer.add(b"b", 1, KIND_PUT, b"")
    writer.add(b"a", 1, KIND_PUT, b"")  # buffered; checked when the buffer drains
    with pytest.raises(AssertionError):
        writer.finish()


def test_bloom_is_sized_by_distinct_keys() -> None:
    entries = [(b"k%04d" % i, seq, KIND_PUT, b"v") for i in range(3000) for seq in (3, 2, 1)]
    disk = MemoryDisk()
    write_table(disk, entries, name="versions.sst")
    write_table(disk, entries[::3], name="single.sst")
    many, single = open_table(disk, "versions.sst"), open_table(disk, "single.sst")
    assert many._bloom.nbytes == single._bloom.nbytes == blocks_for(3000, 10) * 64


def test_unknown_compression_is_config_error() -> None:
    with pytest.raises(ConfigError, match="lz5"):
        TableWriter(
            MemoryDisk().create(NAME), block_bytes=4096, bloom_bits_per_key=10, compression="lz5"
        )


def test_zstd_compresses_compressible_blocks_only() -> None:
    compressible = sample_entries(2000, versions=1, value_bytes=200)
    disk = MemoryDisk()
    write_table(disk, compressible, name="plain.sst")
    write_table(disk, compressible, name="zstd.sst", compression="zstd")
    plain, packed = open_table(disk, "plain.sst"), open_table(disk, "zstd.sst")
    assert packed.props.file_bytes < plain.props.file_bytes // 3
    assert list(packed.iter()) == compressible
    random_values = [(b"k%05d" % i, 1, KIND_PUT, os.urandom(100)) for i in range(500)]
    write_table(disk, random_values, name="rand.sst", compression="zstd")
    write_table(disk, random_values, name="rand0.sst")
    assert (
        open_table(disk, "rand.sst").props.file_bytes
        == open_table(disk, "rand0.sst").props.file_bytes
    )
    assert list(open_table(disk, "rand.sst").iter()) == random_values


def test_estimated_bytes_tracks_file_size() -> None:
    entries = sample_entries(5000, versions=1, value_bytes=100)
    writer = TableWriter(MemoryDisk().create(NAME), block_bytes=4096, bloom_bits_per_key=10)
    writer.add_many(entries)
    estimate = writer.estimated_bytes()
    final = writer.finish().file_bytes
    assert 0.9 * final <= estimate <= 1.1 * final


def test_stats_count_bloom_and_blocks() -> None:
    entries = [(b"k%06d" % i, 1, KIND_PUT, b"v") for i in range(0, 20000, 2)]
    disk = MemoryDisk()
    write_table(disk, entries)
    stats = ReadStats()
    reader = open_table(disk, stats=stats)
    absent = [b"k%06d" % i for i in range(1, 19998, 2)]  # all inside the key range
    assert all(reader.get(k, 5) is None for k in absent)
    assert stats.bloom_checks == len(absent) == stats.tables_touched
    assert stats.bloom_useful + stats.bloom_false_positives == len(absent)
    assert stats.bloom_false_positives < 0.03 * len(absent)
    assert reader.get(b"k000000", 5) == (1, KIND_PUT, b"v")
    assert stats.block_reads >= 1
    assert reader.get(b"zzz", 5) is None  # outside the key range: not touched
    assert stats.tables_touched == len(absent) + 1


def test_real_disk_round_trip(tmp_path: Path) -> None:
    disk = RealDisk(str(tmp_path))
    entries = sample_entries(2000)
    write_table(disk, entries, compression="zstd")
    reader = open_table(disk)
    assert list(reader.iter()) == entries
    assert reader.get(b"key00001999", 1 << 40) == model_get(entries, b"key00001999", 1 << 40)
    reader.close()


def test_real_disk_flipped_byte_is_found(tmp_path: Path) -> None:
    disk = RealDisk(str(tmp_path))
    write_table(disk, sample_entries(2000))
    reader = open_table(disk)
    offset, size = reader._offsets[3], reader._sizes[3]
    reader.close()
    path = tmp_path / NAME
    data = bytearray(path.read_bytes())
    data[offset + size // 3] ^= 0x01  # one bit
    path.write_bytes(bytes(data))
    reader = open_table(disk)
    with pytest.raises(CorruptionError) as info:
        reader.verify()
    assert (info.value.path, info.value.offset) == (NAME, offset)
    reader.close()


# --- corruption -------------------------------------------------------------------------


def _table_with_layout() -> tuple[MemoryDisk, TableReader]:
    disk = MemoryDisk()
    write_table(disk, sample_entries(400))
    return disk, open_table(disk)


def _block_offsets(reader: TableReader) -> dict[str, tuple[int, int]]:
    index, bloom, props = reader._meta
    return {
        "data": (reader._offsets[1], reader._sizes[1]),
        "index": index,
        "bloom": bloom,
        "props": props,
    }


@pytest.mark.parametrize("block", ["index", "bloom", "props"])
@pytest.mark.parametrize("where", ["first", "middle", "trailer"])
def test_flipped_byte_in_meta_block_fails_open(block: str, where: str) -> None:
    disk, reader = _table_with_layout()
    offset, size = _block_offsets(reader)[block]
    at = {"first": offset, "middle": offset + size // 2, "trailer": offset + size - 1}[where]
    disk.flip_byte(NAME, at)
    with pytest.raises(CorruptionError) as info:
        open_table(disk)
    assert info.value.path == NAME and info.value.offset == offset


@pytest.mark.parametrize("delta", [0, 7, 20, FOOTER_BYTES - 1])
def test_flipped_byte_in_footer_fails_open(delta: int) -> None:
    disk, _ = _table_with_layout()
    size = disk.open(NAME).size()
    disk.flip_byte(NAME, size - FOOTER_BYTES + delta)
    with pytest.raises(CorruptionError) as info:
        open_table(disk)
    assert info.value.path == NAME and info.value.offset >= size - FOOTER_BYTES


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_data_block_fails_the_read_that_touches_it(where: str) -> None:
    disk, reader = _table_with_layout()
    offset, size = _block_offsets(reader)["data"]
    at = {"first": offset, "middle": offset + size // 2, "last": offset + size - 1}[where]
    disk.flip_byte(NAME, at)
    reader = open_table(disk)  # meta blocks are fine: open succeeds
    with pytest.raises(CorruptionError) as info:
        list(reader.iter())
    assert (info.value.path, info.value.offset) == (NAME, offset)
    with pytest.raises(CorruptionError):
        reader.verify()
    # a key in block 0 still reads fine; a key in block 1 fails, never returns wrong data
    assert reader.get(b"key00000000", 1 << 40) is not None
    with pytest.raises(CorruptionError):
        reader.get(reader._last_keys[1], 1 << 40)


def test_every_single_byte_flip_is_detected() -> None:
    disk = MemoryDisk()
    entries = sample_entries(30, value_bytes=5)
    write_table(disk, entries, block_bytes=256, compression="zstd")
    size = disk.open(NAME).size()
    for at in range(size):
        disk.flip_byte(NAME, at)
        with pytest.raises(CorruptionError):
            reader = open_table(disk)
            reader.verify()
        disk.flip_byte(NAME, at)  # restore
    assert list(open_table(disk).iter()) == entries


@pytest.mark.parametrize("keep", [0, 1, FOOTER_BYTES - 1, FOOTER_BYTES, 100, -1])
def test_truncated_file_fails_open(keep: int) -> None:
    disk = MemoryDisk()
    write_table(disk, sample_entries(100))
    file = disk.open(NAME, append=True)
    size = file.size()
    file.truncate(size - 1 if keep == -1 else keep)
    with pytest.raises(CorruptionError) as info:
        open_table(disk)
    assert info.value.path == NAME


def test_foreign_file_fails_open() -> None:
    disk = MemoryDisk()
    file = disk.create(NAME)
    file.append(b"PK\x03\x04 this is a zip file, not a table" * 10)
    with pytest.raises(CorruptionError, match="magic"):
        open_table(disk)


def test_closed_reader_refuses_reads_without_reopen() -> None:
    disk = MemoryDisk()
    write_table(disk, sample_entries(100))
    reader = open_table(disk, cache_bytes=0)
    reader.close()
    with pytest.raises(ClosedError):
        reader.get(b"key00000001", 1 << 40)


def test_iterator_survives_close_of_its_reader() -> None:
    disk = MemoryDisk()
    entries = sample_entries(500)
    write_table(disk, entries)
    reader = open_table(disk, cache_bytes=0)
    it = reader.iter()
    head = [next(it) for _ in range(10)]
    reader.close()
    assert head + list(it) == entries
    assert reader._file_closed


def test_abandoned_iterator_releases_its_pin() -> None:
    disk = MemoryDisk()
    write_table(disk, sample_entries(100))
    reader = open_table(disk)
    it = reader.iter(reverse=True)
    assert reader._pins == 1
    del it
    assert reader._pins == 0
    reader.close()
    assert reader._file_closed


def test_model_helpers_agree_with_bisect() -> None:
    # guards the test model itself: iteration ranges of the model are key-sorted slices
    entries = sample_entries(50)
    keys = [e[0] for e in entries]
    assert (
        model_iter(entries, b"key00000010", b"key00000020")
        == entries[bisect_left(keys, b"key00000010") : bisect_left(keys, b"key00000020")]
    )

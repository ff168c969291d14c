"""WAL framing, replay, torn tails and mid-log corruption."""

from __future__ import annotations

import pytest

from keeldb import limits
from keeldb.errors import CorruptionError, LimitExceededError
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.engine import KIND_DELETE, KIND_PUT
from keeldb.storage.wal import (
    HEADER_BYTES,
    create_wal,
    encode_one,
    encode_record,
    parse_wal,
    read_wal,
)


def _log(batches: list[tuple[int, list[tuple[int, bytes, bytes]]]]) -> tuple[MemoryDisk, str, list[int]]:
    disk = MemoryDisk()
    wal = create_wal(disk, 7)
    ends = []
    for seq, ops in batches:
        wal.append(encode_record(seq, ops))
        ends.append(wal.size())
    wal.sync()
    wal.close()
    return disk, "000007.log", ends


BATCHES = [(1, [(KIND_PUT, b"a", b"1")]),
           (2, [(KIND_PUT, b"b", b"2"), (KIND_DELETE, b"a", b"")]),
           (3, [(KIND_PUT, b"c", b"x" * 1000)])]


def test_round_trip() -> None:
    disk, name, _ = _log(BATCHES)
    assert read_wal(disk, name) == BATCHES


@pytest.mark.parametrize("cut", [1, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 5, -1])
def test_torn_tail_is_truncated(cut: int) -> None:
    disk, name, ends = _log(BATCHES)
    file = disk.open(name, append=True)
    keep = ends[1] + cut if cut > 0 else ends[2] + cut
    file.truncate(keep)
    dropped: list[int] = []
    assert read_wal(disk, name, on_truncate=dropped.append) == BATCHES[:2]
    assert disk.open(name).size() == ends[1]
    assert dropped == [keep - ends[1]]
    assert read_wal(disk, name) == BATCHES[:2]  # idempotent


def test_bad_checksum_on_last_record_is_a_torn_tail() -> None:
    disk, name, ends = _log(BATCHES)
    disk.flip_byte(name, ends[2] - 3)
    assert read_wal(disk, name) == BATCHES[:2]


def test_zero_filled_tail_is_a_torn_tail() -> None:
    disk, name, ends = _log(BATCHES)
    file = disk.open(name, append=True)
    file.append(b"\0" * 100)
    assert read_wal(disk, name) == BATCHES
    assert disk.open(name).size() == ends[2]


def test_corrupt_record_followed_by_valid_data_raises_with_file_and_offset() -> None:
    disk, name, ends = _log(BATCHES)
    disk.flip_byte(name, ends[0] + HEADER_BYTES + 2)  # inside record 2's payload
    with pytest.raises(CorruptionError) as info:
        read_wal(disk, name)
    assert info.value.path == name and info.value.offset == ends[0]
    assert f"offset {ends[0]}" in str(info.value) and name in str(info.value)
    assert disk.open(name).size() == ends[2]  # nothing was cut


def test_corrupt_length_in_the_middle_raises() -> None:
    disk, name, ends = _log(BATCHES)
    disk.flip_byte(name, ends[0] + 3)  # high byte of record 2's length
    with pytest.raises(CorruptionError):
        read_wal(disk, name)


def test_record_over_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "wal_record_bytes_max", 100)
    with pytest.raises(LimitExceededError, match="wal_record_bytes_max=100"):
        encode_record(1, [(KIND_PUT, b"k", b"v" * 200)])


def test_parse_reports_valid_prefix() -> None:
    data = encode_record(1, [(KIND_PUT, b"a", b"1")])
    batches, valid = parse_wal(data + data[:5], "x.log")
    assert len(batches) == 1 and valid == len(data)


def test_a_flipped_length_in_a_middle_record_is_corruption_not_a_torn_tail() -> None:
    """The header checksum tells a damaged length from a record cut short by a crash."""
    records = [encode_record(seq, [(1, b"k%d" % seq, b"v" * 50)]) for seq in range(1, 6)]
    data = bytearray(b"".join(records))
    middle = len(records[0]) + len(records[1])
    data[middle + 2] ^= 0x40  # the length now claims megabytes: past the end of the file
    with pytest.raises(CorruptionError) as info:
        parse_wal(bytes(data), "000001.log")
    assert info.value.offset == middle


def test_a_torn_last_header_is_still_truncated() -> None:
    records = [encode_record(seq, [(1, b"k", b"v")]) for seq in range(1, 4)]
    data = b"".join(records)
    batches, valid = parse_wal(data[:-len(records[-1]) + 5], "000001.log")
    assert [seq for seq, _ in batches] == [1, 2]
    assert valid == len(records[0]) + len(records[1])


@pytest.mark.parametrize("kind", [KIND_PUT, KIND_DELETE])
@pytest.mark.parametrize("key_len, value_len", [(1, 0), (16, 100), (255, 255), (256, 1),
                                                (1, 256), (1024, 70_000)])
@pytest.mark.parametrize("seq", [1, 127, 128, 1 << 32, (1 << 63) - 1])
def test_single_op_record_decodes_as_its_batch(kind: int, key_len: int, value_len: int,
                                               seq: int) -> None:
    """encode_one (the single put's prebuilt-pieces framing, msgpack fallback past 255-byte
    keys or values) reads back exactly as the batch encode_record frames."""
    key = bytes(range(256)) * 4
    key = key[:key_len]
    value = b"" if kind == KIND_DELETE else b"\xc4v" * (value_len // 2) + b"x" * (value_len % 2)
    record = encode_one(seq, kind, key, value)
    batch_record = encode_record(seq, [(kind, key, value)])
    batches, valid = parse_wal(record + batch_record, "x.log")
    assert valid == len(record) + len(batch_record)
    assert batches == [(seq, [(kind, key, value)])] * 2

"""Corrupted files on the real filesystem: detected, named, never served as data.

- A flipped byte in an SSTable data block gives `CorruptionError` (naming the file and the
  block's offset) on the read that touches that block, and never a wrong value; reads of other
  blocks still work; `keeldb check-store` reports the file and offset and exits 1.
- A corrupt record in the middle of the WAL makes open fail with `CorruptionError` naming the
  log file and the record's offset (`keeldb check-store` reports it too).
- A torn WAL tail (the last record cut short, or zero padding) is truncated silently on open;
  every earlier record is intact.

Files are located by content, not by naming convention: tables end with the SSTable magic,
logs are the `*.log` files (`keeldb.storage.wal.wal_name`).
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import keeldb
from keeldb.cli.main import main as cli_main
from keeldb.errors import CorruptionError
from keeldb.storage import sstable, wal

REPO = Path(__file__).resolve().parent.parent.parent
KEYS = 2000


def key(i: int) -> bytes:
    return b"key%06d" % i


def value(i: int) -> bytes:
    return b"value-%06d-" % i + bytes([65 + i % 26]) * 90


def table_files(path: Path) -> list[Path]:
    """Files of the store that end with the SSTable footer magic."""
    found = []
    for f in sorted(path.iterdir()):
        data = f.read_bytes() if f.is_file() else b""
        if len(data) >= sstable.FOOTER_BYTES and data[-8:] == struct.pack("<Q", sstable.MAGIC):
            found.append(f)
    return found


def data_region_end(table: Path) -> int:
    """Offset where the data blocks end: the index block's offset, first field of the footer."""
    footer = table.read_bytes()[-sstable.FOOTER_BYTES:]
    (index_offset,) = struct.unpack_from("<Q", footer, 0)
    return int(index_offset)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed store whose data all sits in exactly one SSTable."""
    path = tmp_path_factory.mktemp("corruption") / "db"
    with keeldb.open(str(path), sync="never") as db:
        with db.write_batch() as wb:
            for i in range(KEYS):
                wb.put(key(i), value(i))
        db.flush()
    tables = table_files(path)
    assert len(tables) == 1, f"expected one table after one flush, found {tables}"
    return path


def copy_store(pristine: Path, dst: Path) -> Path:
    shutil.copytree(pristine, dst)
    return dst


# --- SSTable data blocks -------------------------------------------------------------------------


def test_flipped_byte_in_first_block_fails_the_read_that_touches_it(
    pristine: Path, tmp_path: Path
) -> None:
    path = copy_store(pristine, tmp_path / "db")
    (table,) = table_files(path)
    flip(table, 20)  # inside data block 0, which holds the smallest keys
    with keeldb.open(str(path)) as db:
        with pytest.raises(CorruptionError) as info:
            db.get(key(0))
        assert table.name in info.value.path
        assert info.value.offset == 0  # the offset of the damaged block
        assert table.name in str(info.value) and "offset" in str(info.value)
        # A block the flip did not touch still reads correctly.
        assert db.get(key(KEYS - 1)) == value(KEYS - 1)
        with pytest.raises(CorruptionError):
            list(db.scan())
        with pytest.raises(CorruptionError):
            list(db.scan(start=key(0), limit=1))
        assert list(db.scan(start=key(KEYS - 5))) == [(key(i), value(i))
                                                      for i in range(KEYS - 5, KEYS)]


def test_random_flips_never_yield_wrong_data(pristine: Path, tmp_path: Path) -> None:
    rng = random.Random("corruption:random-flips")
    end = data_region_end(table_files(pristine)[0])
    for trial in range(6):
        path = copy_store(pristine, tmp_path / f"db{trial}")
        (table,) = table_files(path)
        offset = rng.randrange(end)
        flip(table, offset)
        with keeldb.open(str(path)) as db:
            for i in range(0, KEYS, 7):
                try:
                    got = db.get(key(i))
                except CorruptionError as exc:
                    assert exc.offset <= offset, (offset, exc.offset)
                    continue
                assert got == value(i), f"wrong data for {key(i)!r} after flipping {offset}"
            with pytest.raises(CorruptionError):
                list(db.scan())  # a full scan always reaches the damaged block


def test_check_store_reports_the_damaged_table(
    pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["check-store", str(pristine)]) == 0
    clean = capsys.readouterr().out
    assert "clean" in clean
    path = copy_store(pristine, tmp_path / "db")
    (table,) = table_files(path)
    flip(table, data_region_end(table) // 2)
    assert cli_main(["check-store", str(path)]) == 1
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("CORRUPT")]
    assert len(lines) == 1, out
    assert table.name in lines[0] and "offset" in lines[0]


def test_check_store_json_lists_problems(pristine: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import json

    path = copy_store(pristine, tmp_path / "db")
    (table,) = table_files(path)
    flip(table, 20)
    assert cli_main(["check-store", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [p["file"].rsplit("/", 1)[-1] for p in report["problems"]] == [table.name]
    assert report["problems"][0]["offset"] == 0


# --- the write-ahead log ------------------------------------------------------------------------

WAL_WRITER = """
import os, sys, keeldb
db = keeldb.open(sys.argv[1], sync="always")
for i in range(int(sys.argv[2])):
    db.put(b"w%05d" % i, b"payload-%05d" % i * 4)
os._exit(0)  # die without close(): the records stay in the log
"""
WAL_RECORDS = 40


def wal_key(i: int) -> bytes:
    return b"w%05d" % i


def wal_value(i: int) -> bytes:
    return b"payload-%05d" % i * 4


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, Path, list[int]]:
    """A store whose last writes live only in its WAL; returns (store, log, record offsets)."""
    path = tmp_path / "db"
    subprocess.run([sys.executable, "-c", WAL_WRITER, str(path), str(WAL_RECORDS)],
                   check=True, cwd=REPO, timeout=120)
    logs = [f for f in sorted(path.glob("*.log")) if f.stat().st_size > 0]
    assert len(logs) == 1, f"expected one non-empty log, found {logs}"
    data = logs[0].read_bytes()
    offsets, at = [], 0
    while at < len(data):
        length, _crc, _head_crc = wal.HEADER.unpack_from(data, at)
        offsets.append(at)
        at += wal.HEADER_BYTES + length
    assert at == len(data) and len(offsets) == WAL_RECORDS
    return path, logs[0], offsets


def test_corrupt_wal_record_in_the_middle_fails_open_naming_file_and_offset(
    logged: tuple[Path, Path, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, log, offsets = logged
    middle = offsets[WAL_RECORDS // 2]
    size = log.stat().st_size
    flip(log, middle + wal.HEADER_BYTES + 2)  # inside the payload: checksum mismatch
    with pytest.raises(CorruptionError) as info:
        keeldb.open(str(path))
    assert log.name in info.value.path
    assert info.value.offset == middle
    assert log.name in str(info.value) and str(middle) in str(info.value)
    # The log was not "repaired" by throwing data away.
    assert log.stat().st_size == size
    assert cli_main(["check-store", str(path)]) == 1
    out = capsys.readouterr().out
    assert log.name in out and str(middle) in out


def test_torn_wal_tail_is_truncated_and_earlier_records_survive(
    logged: tuple[Path, Path, list[int]]
) -> None:
    path, log, offsets = logged
    size = log.stat().st_size
    with open(log, "r+b") as f:
        f.truncate(size - 5)  # the last record loses its final bytes
    with keeldb.open(str(path)) as db:
        got = dict(db.scan())
    assert got == {wal_key(i): wal_value(i) for i in range(WAL_RECORDS - 1)}
    # Reopening again is clean: the tail was cut away, not left to fail later.
    with keeldb.open(str(path)) as db:
        assert dict(db.scan()) == got


def test_zero_padded_wal_tail_is_ignored(logged: tuple[Path, Path, list[int]]) -> None:
    path, log, _ = logged
    with open(log, "ab") as f:
        f.write(b"\0" * 4096)  # a preallocated, never-written tail
    with keeldb.open(str(path)) as db:
        got = dict(db.scan())
    assert got == {wal_key(i): wal_value(i) for i in range(WAL_RECORDS)}


def test_torn_header_of_the_last_record_is_truncated(
    logged: tuple[Path, Path, list[int]]
) -> None:
    path, log, offsets = logged
    with open(log, "r+b") as f:
        f.truncate(offsets[-1] + 3)  # only 3 bytes of the last header made it
    with keeldb.open(str(path)) as db:
        got = dict(db.scan())
    assert got == {wal_key(i): wal_value(i) for i in range(WAL_RECORDS - 1)}


def test_corrupt_length_of_a_middle_wal_record_is_not_mistaken_for_a_torn_tail(
    logged: tuple[Path, Path, list[int]]
) -> None:
    path, log, offsets = logged
    middle = offsets[WAL_RECORDS // 2]
    flip(log, middle + 2)  # third byte of the u32 length: the record now claims ~5 MB
    with pytest.raises(CorruptionError) as info:
        keeldb.open(str(path)).close()
    assert info.value.offset == middle


def test_flips_in_the_wal_never_yield_wrong_data(
    logged: tuple[Path, Path, list[int]], tmp_path: Path
) -> None:
    """Wherever a byte flips in the log, open fails with CorruptionError or recovers a prefix
    of the records, each with its exact value."""
    path, log, offsets = logged
    rng = random.Random("corruption:wal-flips")
    size = log.stat().st_size
    for trial in range(8):
        copy = copy_store(path, tmp_path / f"db{trial}")
        at = rng.randrange(size)
        flip(copy / log.name, at)
        try:
            with keeldb.open(str(copy)) as db:
                got = dict(db.scan())
        except CorruptionError:
            continue
        n = len(got)
        assert got == {wal_key(i): wal_value(i) for i in range(n)}, f"flip at {at}"

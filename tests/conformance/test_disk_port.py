"""One conformance suite for every implementation of the `ports.Disk` / `ports.File` protocols.

`DISK_FACTORIES` is the single list of implementations: add a simulated disk there (a name and
a factory taking pytest's `tmp_path`) and every semantic test below runs over it too.
Implementations that model power loss (a `crash()` method) are also listed in
`CRASHABLE_FACTORIES` and must lose exactly what was not made durable.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keeldb.errors import DiskFullError, StorageIOError
from keeldb.ports import Disk, File
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.runtime.real.disk import RealDisk
from keeldb.runtime.sim.disk import SimDisk

DiskFactory = Callable[[Path], Any]

def _sim(tmp: Path, **kw: Any) -> SimDisk:
    # Every fault probability at 0: the simulated disk must behave exactly like MemoryDisk.
    return SimDisk(random.Random("conformance:simdisk"), **kw)


DISK_FACTORIES: list[tuple[str, DiskFactory]] = [
    ("real", lambda tmp: RealDisk(str(tmp / "disk"))),
    ("memory", lambda tmp: MemoryDisk()),
    ("sim", _sim),
]

# Disks with a `crash()` that discards everything not made durable (power-loss model).
CRASHABLE_FACTORIES: list[tuple[str, DiskFactory]] = [
    ("memory", lambda tmp: MemoryDisk()),
    ("sim", _sim),
]

# Disks with the in-memory fault knobs: space_bytes_max, fail_syncs, flip_byte.
FaultyFactory = Callable[..., Any]
FAULT_KNOB_FACTORIES: list[tuple[str, FaultyFactory]] = [
    ("memory", lambda **kw: MemoryDisk(**kw)),
    ("sim", lambda **kw: SimDisk(random.Random("conformance:knobs"), **kw)),
]


@pytest.fixture(params=DISK_FACTORIES, ids=[name for name, _ in DISK_FACTORIES])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    _, factory = request.param
    return factory(tmp_path)


@pytest.fixture(params=CRASHABLE_FACTORIES, ids=[name for name, _ in CRASHABLE_FACTORIES])
def crash_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    _, factory = request.param
    return factory(tmp_path)


@pytest.fixture(params=FAULT_KNOB_FACTORIES, ids=[name for name, _ in FAULT_KNOB_FACTORIES])
def make_faulty(request: pytest.FixtureRequest) -> FaultyFactory:
    factory: FaultyFactory = request.param[1]
    return factory


def _read_all(disk: Disk, name: str) -> bytes:
    f = disk.open(name)
    try:
        return f.read_at(0, f.size())
    finally:
        f.close()


def _write(disk: Disk, name: str, data: bytes, *, sync: bool = True) -> File:
    f = disk.create(name)
    f.append(data)
    if sync:
        f.sync()
    return f


# --- protocol shape ------------------------------------------------------------------------


def test_implements_the_protocols(disk: Any) -> None:
    assert isinstance(disk, Disk)
    f = disk.create("a")
    assert isinstance(f, File)
    assert f.name == "a"
    f.close()


# --- create / append / read_at / size --------------------------------------------------------


def test_new_file_is_empty_and_listed(disk: Disk) -> None:
    assert not disk.exists("a")
    f = disk.create("a")
    assert f.size() == 0
    assert f.read_at(0, 10) == b""
    assert disk.exists("a")
    assert disk.list() == ["a"]
    f.close()


def test_append_then_read_at_any_offset(disk: Disk) -> None:
    f = disk.create("log")
    f.append(b"hello ")
    f.append(b"world")
    assert f.size() == 11
    assert f.read_at(0, 11) == b"hello world"
    assert f.read_at(6, 5) == b"world"
    assert f.read_at(3, 4) == b"lo w"
    f.close()


def test_read_past_end_is_short(disk: Disk) -> None:
    f = _write(disk, "a", b"abcdef")
    assert f.read_at(4, 100) == b"ef"
    assert f.read_at(6, 10) == b""
    assert f.read_at(1000, 10) == b""
    f.close()


def test_size_counts_unsynced_bytes(disk: Disk) -> None:
    f = disk.create("a")
    f.append(b"x" * 1000)
    assert f.size() == 1000  # size includes data appended but not yet synced
    f.sync()
    assert f.size() == 1000
    f.close()


def test_large_append_round_trips(disk: Disk) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    f = _write(disk, "big", data)
    assert f.size() == len(data)
    assert f.read_at(0, len(data)) == data
    assert f.read_at(500_000, 300) == data[500_000:500_300]
    f.close()


def test_create_truncates_an_existing_file(disk: Disk) -> None:
    _write(disk, "a", b"old contents").close()
    f = disk.create("a")
    assert f.size() == 0
    f.append(b"new")
    f.close()
    assert _read_all(disk, "a") == b"new"


def test_closing_does_not_lose_data(disk: Disk) -> None:
    f = disk.create("a")
    f.append(b"not yet synced")
    f.close()
    assert _read_all(disk, "a") == b"not yet synced"


# --- open -----------------------------------------------------------------------------------


def test_open_missing_raises_file_not_found(disk: Disk) -> None:
    with pytest.raises(FileNotFoundError):
        disk.open("nope")
    with pytest.raises(FileNotFoundError):
        disk.open("nope", append=True)


def test_open_for_append_continues_at_the_end(disk: Disk) -> None:
    _write(disk, "wal", b"abc").close()
    f = disk.open("wal", append=True)
    assert f.size() == 3
    f.append(b"def")
    f.sync()
    assert f.size() == 6
    assert f.read_at(0, 6) == b"abcdef"
    f.close()
    assert _read_all(disk, "wal") == b"abcdef"


def test_a_reader_sees_bytes_appended_through_another_handle(disk: Disk) -> None:
    w = _write(disk, "a", b"one")
    r = disk.open("a")
    w.append(b"two")
    assert r.read_at(0, 6) == b"onetwo"
    w.close()
    r.close()


# --- truncate -------------------------------------------------------------------------------


def test_truncate_cuts_the_tail(disk: Disk) -> None:
    f = _write(disk, "wal", b"0123456789")
    f.truncate(4)
    assert f.size() == 4
    assert f.read_at(0, 100) == b"0123"
    f.append(b"XY")
    assert f.read_at(0, 100) == b"0123XY"
    f.close()
    assert _read_all(disk, "wal") == b"0123XY"


def test_truncate_to_zero(disk: Disk) -> None:
    f = _write(disk, "a", b"data")
    f.truncate(0)
    assert f.size() == 0
    assert f.read_at(0, 10) == b""
    f.close()


# --- rename / remove / list / exists ---------------------------------------------------------


def test_rename_moves_contents(disk: Disk) -> None:
    _write(disk, "tmp", b"payload").close()
    disk.rename("tmp", "final")
    assert not disk.exists("tmp")
    assert disk.exists("final")
    assert _read_all(disk, "final") == b"payload"


def test_rename_atomically_replaces_destination(disk: Disk) -> None:
    _write(disk, "MANIFEST", b"old").close()
    _write(disk, "MANIFEST.tmp", b"new version").close()
    disk.rename("MANIFEST.tmp", "MANIFEST")
    assert disk.list() == ["MANIFEST"]
    assert _read_all(disk, "MANIFEST") == b"new version"


def test_remove_deletes_and_tolerates_missing(disk: Disk) -> None:
    _write(disk, "a", b"1").close()
    _write(disk, "b", b"2").close()
    disk.remove("a")
    assert not disk.exists("a")
    assert disk.list() == ["b"]
    disk.remove("a")  # removing a missing name is a no-op
    assert disk.list() == ["b"]


def test_list_is_sorted(disk: Disk) -> None:
    for name in ["c.sst", "000010.wal", "MANIFEST", "a.sst", "000002.wal"]:
        _write(disk, name, b"x").close()
    assert disk.list() == sorted(["c.sst", "000010.wal", "MANIFEST", "a.sst", "000002.wal"])


def test_sync_dir_keeps_everything_visible(disk: Disk) -> None:
    _write(disk, "a", b"1").close()
    _write(disk, "b.tmp", b"2").close()
    disk.rename("b.tmp", "b")
    disk.sync_dir()
    assert disk.list() == ["a", "b"]
    assert _read_all(disk, "b") == b"2"


# --- real disk only: reopening the directory sees the files ---------------------------------


def test_real_disk_reopened_sees_same_files(tmp_path: Path) -> None:
    first = RealDisk(str(tmp_path / "d"))
    _write(first, "x", b"persisted").close()
    first.sync_dir()
    second = RealDisk(str(tmp_path / "d"), create=False)
    assert second.list() == ["x"]
    assert _read_all(second, "x") == b"persisted"


# --- crash semantics (disks that model power loss) -------------------------------------------


def test_crash_keeps_synced_bytes_and_drops_unsynced(crash_disk: Any) -> None:
    f = crash_disk.create("wal")
    crash_disk.sync_dir()
    f.append(b"durable|")
    f.sync()
    f.append(b"lost")
    assert f.size() == 12
    crash_disk.crash()
    assert _read_all(crash_disk, "wal") == b"durable|"


def test_crash_drops_a_file_whose_creation_was_not_dir_synced(crash_disk: Any) -> None:
    _write(crash_disk, "old", b"a").close()
    crash_disk.sync_dir()
    _write(crash_disk, "new", b"b").close()  # file synced, directory entry not
    crash_disk.crash()
    assert crash_disk.list() == ["old"]


def test_crash_undoes_an_unsynced_rename(crash_disk: Any) -> None:
    _write(crash_disk, "MANIFEST", b"v1").close()
    crash_disk.sync_dir()
    _write(crash_disk, "MANIFEST.tmp", b"v2").close()
    crash_disk.rename("MANIFEST.tmp", "MANIFEST")
    assert _read_all(crash_disk, "MANIFEST") == b"v2"
    crash_disk.crash()
    assert crash_disk.list() == ["MANIFEST"]
    assert _read_all(crash_disk, "MANIFEST") == b"v1"


def test_crash_keeps_a_dir_synced_rename(crash_disk: Any) -> None:
    _write(crash_disk, "MANIFEST", b"v1").close()
    crash_disk.sync_dir()
    _write(crash_disk, "MANIFEST.tmp", b"v2").close()
    crash_disk.rename("MANIFEST.tmp", "MANIFEST")
    crash_disk.sync_dir()
    crash_disk.crash()
    assert crash_disk.list() == ["MANIFEST"]
    assert _read_all(crash_disk, "MANIFEST") == b"v2"


def test_crash_resurrects_an_unsynced_remove(crash_disk: Any) -> None:
    _write(crash_disk, "a.sst", b"table").close()
    crash_disk.sync_dir()
    crash_disk.remove("a.sst")
    assert not crash_disk.exists("a.sst")
    crash_disk.crash()
    assert _read_all(crash_disk, "a.sst") == b"table"


def test_crash_of_dir_synced_but_never_fsynced_file_leaves_it_empty(crash_disk: Any) -> None:
    f = crash_disk.create("wal")
    f.append(b"never synced")
    crash_disk.sync_dir()
    crash_disk.crash()
    assert crash_disk.exists("wal")
    assert _read_all(crash_disk, "wal") == b""


def test_crash_is_repeatable_and_writes_continue(crash_disk: Any) -> None:
    f = crash_disk.create("wal")
    crash_disk.sync_dir()
    f.append(b"a")
    f.sync()
    crash_disk.crash()
    g = crash_disk.open("wal", append=True)
    g.append(b"b")
    g.sync()
    g.append(b"c")
    crash_disk.crash()
    assert _read_all(crash_disk, "wal") == b"ab"


# --- fault knobs of the in-memory disk ---------------------------------------------------------


def test_memory_disk_space_limit_raises_disk_full(make_faulty: FaultyFactory) -> None:
    d = make_faulty(space_bytes_max=100)
    f = d.create("a")
    f.append(b"x" * 60)
    with pytest.raises(DiskFullError, match="no space"):
        f.append(b"y" * 60)
    assert f.read_at(0, 200) == b"x" * 60  # the failed append left nothing behind
    f.append(b"z" * 40)  # what fits still fits
    assert f.size() == 100


def test_memory_disk_space_is_freed_by_remove(make_faulty: FaultyFactory) -> None:
    d = make_faulty(space_bytes_max=100)
    _write(d, "a", b"x" * 90).close()
    with pytest.raises(DiskFullError):
        _write(d, "b", b"y" * 20)
    d.remove("a")
    _write(d, "c", b"y" * 20).close()
    assert _read_all(d, "c") == b"y" * 20


def test_memory_disk_failed_syncs_raise_then_recover(make_faulty: FaultyFactory) -> None:
    d = make_faulty()
    f = d.create("wal")
    d.sync_dir()
    f.append(b"abc")
    d.fail_syncs = 1
    with pytest.raises(StorageIOError, match="I/O error"):
        f.sync()
    d.crash()  # the failed sync made nothing durable
    assert _read_all(d, "wal") == b""
    g = d.open("wal", append=True)
    g.append(b"abc")
    g.sync()  # the knob is used up: syncs work again
    d.crash()
    assert _read_all(d, "wal") == b"abc"


def test_memory_disk_failed_dir_sync_raises(make_faulty: FaultyFactory) -> None:
    d = make_faulty()
    _write(d, "a", b"1").close()
    d.fail_syncs = 1
    with pytest.raises(StorageIOError):
        d.sync_dir()
    d.crash()
    assert d.list() == []


def test_memory_disk_flip_byte_corrupts_durable_copy(make_faulty: FaultyFactory) -> None:
    d = make_faulty()
    _write(d, "a.sst", b"\x00\x01\x02\x03").close()
    d.sync_dir()
    d.flip_byte("a.sst", 2)
    assert _read_all(d, "a.sst") == b"\x00\x01\xfd\x03"
    d.crash()
    assert _read_all(d, "a.sst") == b"\x00\x01\xfd\x03"


def test_sim_disk_process_crash_keeps_unsynced_data() -> None:
    d = SimDisk(random.Random("conformance:process-crash"))
    f = d.create("wal")
    f.append(b"in the page cache")
    d.crash(power_loss=False)  # a killed process: the OS still has every byte
    assert _read_all(d, "wal") == b"in the page cache"
    d.crash(power_loss=True)  # power loss: nothing was synced, the entry never dir-synced
    assert d.list() == []

"""Manifest: atomic replacement, checksums, invariants."""

from __future__ import annotations

import pytest

from keeldb import limits
from keeldb.errors import CorruptionError
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.manifest import (
    MANIFEST,
    MANIFEST_TMP,
    ManifestState,
    TableMeta,
    read_manifest,
    write_manifest,
)


def _state(n: int) -> ManifestState:
    levels: list[tuple[TableMeta, ...]] = [()] * limits.level_count_max
    levels[1] = (TableMeta(3, 100, b"a", b"m", 10, 1, 1, 9),
                 TableMeta(4, 100, b"n", b"z", 10, 0, 2, 8))
    return ManifestState(next_file=5 + n, last_seq=20 + n, log_number=2, levels=tuple(levels))


def test_round_trip_and_no_manifest() -> None:
    disk = MemoryDisk()
    assert read_manifest(disk) is None
    write_manifest(disk, _state(0))
    assert read_manifest(disk) == _state(0)
    assert not disk.exists(MANIFEST_TMP)


@pytest.mark.parametrize("point", ["manifest-after-write-before-rename",
                                   "manifest-after-rename-before-dirsync"])
def test_crash_during_update_leaves_old_or_new_never_a_mix(point: str) -> None:
    disk = MemoryDisk()
    write_manifest(disk, _state(0))

    class Crash(Exception):
        pass

    def hook(name: str) -> None:
        if name == point:
            raise Crash(name)

    with pytest.raises(Crash):
        write_manifest(disk, _state(1), hook)
    disk.crash()
    assert read_manifest(disk) == _state(0)  # the rename was not made durable


def test_bit_flip_is_corruption() -> None:
    disk = MemoryDisk()
    write_manifest(disk, _state(0))
    disk.flip_byte(MANIFEST, 12)
    with pytest.raises(CorruptionError, match="checksum"):
        read_manifest(disk)


def test_overlapping_level_is_refused() -> None:
    levels: list[tuple[TableMeta, ...]] = [()] * limits.level_count_max
    levels[2] = (TableMeta(3, 1, b"a", b"m", 1, 0, 1, 1), TableMeta(4, 1, b"k", b"z", 1, 0, 1, 1))
    with pytest.raises(AssertionError, match="overlap"):
        write_manifest(MemoryDisk(), ManifestState(9, 1, 1, tuple(levels)))

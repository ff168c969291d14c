"""Protocols the sans-IO cores may ask for.

Storage reaches the disk only through `Disk` and `File`; time arrives as ticks; randomness
arrives as a `random.Random` built by the caller from a seed. Each port has a real
(`runtime.real.disk`), a simulated (`runtime.sim.disk`) and an in-memory
(`runtime.memdisk`) implementation, all passing `tests/conformance/test_disk_port.py`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class File(Protocol):
    """An open file of a `Disk`. Writes only append; reads are positional.

    Errors: `errors.DiskFullError` on ENOSPC, `errors.StorageIOError` on any other I/O error.
    """

    @property
    def name(self) -> str: ...

    def append(self, data: bytes) -> None:
        """Append `data` at the end of the file. Not durable until `sync()` returns."""

    def read_at(self, offset: int, size: int) -> bytes:
        """Read up to `size` bytes at `offset`; shorter only at end of file."""

    def size(self) -> int:
        """Current length in bytes, including appended but unsynced data."""

    def sync(self) -> None:
        """Make every byte appended so far durable (fsync/fdatasync)."""

    def truncate(self, size: int) -> None:
        """Cut the file to `size` bytes (used to drop a torn WAL tail)."""

    def close(self) -> None:
        """Release the handle. Unsynced data is not lost by closing, only by a crash."""


@runtime_checkable
class Disk(Protocol):
    """A flat directory of named files. Names are plain file names, no separators."""

    def create(self, name: str) -> File:
        """Create (or truncate) `name` and open it for appending."""

    def open(self, name: str, *, append: bool = False) -> File:
        """Open an existing file for reading (and appending when `append`).

        Raises `FileNotFoundError` if `name` does not exist.
        """

    def exists(self, name: str) -> bool: ...

    def list(self) -> list[str]:
        """Names of all files, sorted."""

    def remove(self, name: str) -> None:
        """Delete `name`; durable only after `sync_dir()`."""

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace `dst` by `src`; durable only after `sync_dir()`."""

    def sync_dir(self) -> None:
        """Make creations, renames and removals durable (fsync of the directory)."""

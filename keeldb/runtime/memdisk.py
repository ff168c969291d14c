"""An in-memory `Disk` that models what survives a crash.

Each file keeps its current bytes and the prefix made durable by `sync()`; the directory keeps
its current entries and those made durable by `sync_dir()`. `crash()` throws away everything
not durable, the way power loss does, so storage code can be crash-tested deterministically
without processes. Fault knobs: `space_bytes_max` (ENOSPC), `fail_syncs` (fsync errors),
`flip_byte` (bit rot).
"""

from __future__ import annotations

from keeldb.errors import DiskFullError, StorageIOError


class _Inode:
    __slots__ = ("data", "durable")

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable = b""


class MemoryFile:
    __slots__ = ("_disk", "_inode", "_closed", "name", "_writable")

    def __init__(self, disk: MemoryDisk, name: str, inode: _Inode, writable: bool) -> None:
        self._disk = disk
        self._inode = inode
        self.name = name
        self._writable = writable
        self._closed = False

    def append(self, data: bytes) -> None:
        assert not self._closed and self._writable, f"{self.name} not open for writing"
        self._disk._charge(len(data))
        self._inode.data += data

    def read_at(self, offset: int, size: int) -> bytes:
        assert not self._closed, f"{self.name} closed"
        return bytes(self._inode.data[offset : offset + size])

    def size(self) -> int:
        return len(self._inode.data)

    def sync(self) -> None:
        if self._disk.fail_syncs > 0:
            self._disk.fail_syncs -= 1
            raise StorageIOError(f"I/O error while syncing {self.name!r} (injected)")
        self._inode.durable = bytes(self._inode.data)
        self._disk.syncs += 1

    def truncate(self, size: int) -> None:
        del self._inode.data[size:]
        if len(self._inode.durable) > size:
            self._inode.durable = self._inode.durable[:size]

    def close(self) -> None:
        self._closed = True


class MemoryDisk:
    """A flat in-memory directory with power-loss semantics."""

    def __init__(self, space_bytes_max: int | None = None) -> None:
        self._files: dict[str, _Inode] = {}
        self._durable_files: dict[str, _Inode] = {}
        self.space_bytes_max = space_bytes_max
        self.fail_syncs = 0
        self.syncs = 0

    def _charge(self, size: int) -> None:
        if self.space_bytes_max is None:
            return
        used = sum(len(i.data) for i in self._files.values())
        if used + size > self.space_bytes_max:
            raise DiskFullError("no space left on device (injected); free space, then reopen")

    def create(self, name: str) -> MemoryFile:
        inode = _Inode()
        self._files[name] = inode
        return MemoryFile(self, name, inode, True)

    def open(self, name: str, *, append: bool = False) -> MemoryFile:
        if name not in self._files:
            raise FileNotFoundError(name)
        return MemoryFile(self, name, self._files[name], append)

    def exists(self, name: str) -> bool:
        return name in self._files

    def list(self) -> list[str]:
        return sorted(self._files)

    def remove(self, name: str) -> None:
        self._files.pop(name, None)

    def rename(self, src: str, dst: str) -> None:
        self._files[dst] = self._files.pop(src)

    def sync_dir(self) -> None:
        if self.fail_syncs > 0:
            self.fail_syncs -= 1
            raise StorageIOError("I/O error while syncing directory (injected)")
        self._durable_files = dict(self._files)

    def crash(self) -> None:
        """Lose everything not durable: unsynced bytes and unsynced directory changes."""
        survivors: dict[str, _Inode] = {}
        for name, inode in self._durable_files.items():
            inode.data = bytearray(inode.durable)
            survivors[name] = inode
        self._files = survivors
        self._durable_files = dict(survivors)

    def flip_byte(self, name: str, offset: int) -> None:
        """Corrupt one byte of `name` in place, durable copy included."""
        inode = self._files[name]
        inode.data[offset] ^= 0xFF
        durable = bytearray(inode.durable)
        if offset < len(durable):
            durable[offset] ^= 0xFF
            inode.durable = bytes(durable)

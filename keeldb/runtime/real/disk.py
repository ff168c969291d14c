"""`Disk` over a real directory, with fsync of files and of the directory."""

from __future__ import annotations

import errno
import os

from keeldb.errors import DiskFullError, StorageIOError


def _io_error(exc: OSError, what: str, path: str) -> StorageIOError:
    if exc.errno == errno.ENOSPC:
        return DiskFullError(
            f"no space left on device while {what} {path!r}; free space, then reopen the store"
        )
    return StorageIOError(f"I/O error while {what} {path!r}: {exc.strerror or exc}")


class RealFile:
    """A file opened with os-level calls: `pwrite`-free appends and `pread` reads."""

    __slots__ = ("_fd", "_path", "_size", "name")

    def __init__(self, path: str, name: str, fd: int) -> None:
        self._path = path
        self.name = name
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def append(self, data: bytes) -> None:
        try:
            written = os.write(self._fd, data)  # one call writes it all on a regular file
            self._size += written
            if written < len(data):  # a short write (signal, nearly full disk): the rest
                view = memoryview(data)[written:]
                while view:
                    written = os.write(self._fd, view)
                    self._size += written
                    view = view[written:]
        except OSError as exc:
            raise _io_error(exc, "appending to", self._path) from exc

    def read_at(self, offset: int, size: int) -> bytes:
        try:
            return os.pread(self._fd, size, offset)
        except OSError as exc:
            raise _io_error(exc, "reading", self._path) from exc

    def size(self) -> int:
        return self._size

    def sync(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _io_error(exc, "syncing", self._path) from exc

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise _io_error(exc, "truncating", self._path) from exc
        self._size = size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RealDisk:
    """A flat directory on the real filesystem."""

    def __init__(self, directory: str, *, create: bool = True) -> None:
        if create:
            os.makedirs(directory, exist_ok=True)
        self.directory = directory

    def _path(self, name: str) -> str:
        assert name and "/" not in name and name not in (".", ".."), f"bad file name {name!r}"
        return os.path.join(self.directory, name)

    def create(self, name: str) -> RealFile:
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        except OSError as exc:
            raise _io_error(exc, "creating", path) from exc
        return RealFile(path, name, fd)

    def open(self, name: str, *, append: bool = False) -> RealFile:
        path = self._path(name)
        flags = os.O_RDWR | os.O_APPEND if append else os.O_RDONLY
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _io_error(exc, "opening", path) from exc
        return RealFile(path, name, fd)

    def exists(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def list(self) -> list[str]:
        return sorted(
            e.name for e in os.scandir(self.directory) if e.is_file(follow_symlinks=False)
        )

    def remove(self, name: str) -> None:
        try:
            os.remove(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _io_error(exc, "removing", self._path(name)) from exc

    def rename(self, src: str, dst: str) -> None:
        try:
            os.replace(self._path(src), self._path(dst))
        except OSError as exc:
            raise _io_error(exc, "renaming", self._path(src)) from exc

    def sync_dir(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _io_error(exc, "syncing directory", self.directory) from exc

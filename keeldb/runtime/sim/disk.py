"""The simulated disk: `MemoryDisk`'s power-loss semantics plus named, seeded faults.

- ENOSPC (`Fault.ENOSPC`): an append fails with `DiskFullError` and writes nothing;
- fsync failure (`Fault.FSYNC_FAIL`): a sync fails with `StorageIOError`, nothing new durable;
- bit flip on read (`Fault.BITFLIP`): one bit of a read comes back flipped (disk intact);
- `crash(power_loss=False)` is a process crash: the OS page cache survives, nothing is lost;
- `crash(power_loss=True)` loses what was not synced (`Fault.LOSE_UNSYNCED` decides which kind
  a crash is), and with `Fault.TORN_WRITE` a random prefix of each file's unsynced tail
  survives instead.

Latency is not modelled here but by the world, which completes each disk op after a delay.
With every probability at 0 it behaves exactly like `MemoryDisk` (the conformance suite runs it).
"""

from __future__ import annotations

import random

from keeldb.errors import DiskFullError, StorageIOError
from keeldb.runtime.memdisk import MemoryDisk, MemoryFile, _Inode


class SimFile(MemoryFile):
    """A `MemoryFile` whose append, sync and read can fail the way the plan says."""

    __slots__ = ()
    _disk: SimDisk

    def append(self, data: bytes) -> None:
        disk = self._disk
        if disk.p_enospc and disk.rng.random() < disk.p_enospc:
            disk.injected["enospc"] += 1
            raise DiskFullError(f"no space left on device while appending to {self.name!r} "
                                "(simulated ENOSPC)")
        super().append(data)

    def sync(self) -> None:
        disk = self._disk
        if disk.p_fsync_fail and disk.rng.random() < disk.p_fsync_fail:
            disk.injected["fsync-fail"] += 1
            raise StorageIOError(f"I/O error while syncing {self.name!r} (simulated EIO)")
        super().sync()

    def read_at(self, offset: int, size: int) -> bytes:
        data = super().read_at(offset, size)
        disk = self._disk
        if data and disk.p_bitflip and disk.rng.random() < disk.p_bitflip:
            disk.injected["bitflip"] += 1
            flipped = bytearray(data)
            bit = disk.rng.randrange(len(flipped) * 8)
            flipped[bit // 8] ^= 1 << (bit % 8)
            return bytes(flipped)
        return data


class SimDisk(MemoryDisk):
    """One node's disk in the simulator; `rng` comes from the world's seed tree."""

    def __init__(self, rng: random.Random | None = None, *, p_enospc: float = 0.0,
                 p_fsync_fail: float = 0.0, p_bitflip: float = 0.0, p_torn: float = 0.0,
                 space_bytes_max: int | None = None) -> None:
        super().__init__(space_bytes_max)
        self.rng = rng if rng is not None else random.Random("simdisk")
        self.p_enospc = p_enospc
        self.p_fsync_fail = p_fsync_fail
        self.p_bitflip = p_bitflip
        self.p_torn = p_torn
        self.injected = {"enospc": 0, "fsync-fail": 0, "bitflip": 0, "torn-write": 0}

    def create(self, name: str) -> SimFile:
        inode = _Inode()
        self._files[name] = inode
        return SimFile(self, name, inode, True)

    def open(self, name: str, *, append: bool = False) -> SimFile:
        if name not in self._files:
            raise FileNotFoundError(name)
        return SimFile(self, name, self._files[name], append)

    def sync_dir(self) -> None:
        if self.p_fsync_fail and self.rng.random() < self.p_fsync_fail:
            self.injected["fsync-fail"] += 1
            raise StorageIOError("I/O error while syncing the directory (simulated EIO)")
        super().sync_dir()

    def heal(self) -> None:
        """Stop injecting faults (the liveness phase)."""
        self.p_enospc = self.p_fsync_fail = self.p_bitflip = self.p_torn = 0.0

    def crash(self, power_loss: bool = True) -> None:
        """A process crash keeps everything; a power loss keeps only what was synced
        (plus, with torn writes, a random prefix of some unsynced tails)."""
        if not power_loss:
            return
        for name in sorted(self._durable_files):
            inode = self._durable_files[name]
            extra = len(inode.data) - len(inode.durable)
            if extra > 0 and self.p_torn and self.rng.random() < self.p_torn:
                keep = self.rng.randrange(1, extra + 1)
                inode.durable = bytes(inode.data[: len(inode.durable) + keep])
                self.injected["torn-write"] += 1
        super().crash()

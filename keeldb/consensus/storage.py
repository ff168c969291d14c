"""What the Raft core reads its durable state from, and an in-memory implementation.

The core never writes to `Storage`: the node persists what a `Ready` hands it (entries, hard
state, snapshot) and then the entries become visible through `Storage`. Compaction is the
application's choice: it calls `create_snapshot` at an applied index and `compact` to drop the
entries the snapshot covers.
"""

from __future__ import annotations

from typing import Protocol

from keeldb.consensus.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from keeldb.errors import LogCompactedError, LogUnavailableError, UsageError
from keeldb.types import NodeId

BOOTSTRAP_INDEX = 1
BOOTSTRAP_TERM = 1


class Storage(Protocol):
    """Read access to the persisted log, hard state and latest snapshot."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The hard state and membership to start from (membership of the latest snapshot)."""

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi), at least one if lo < hi, then stop before crossing max_bytes.
        Raises LogCompactedError if lo <= the snapshot index."""

    def term(self, index: int) -> int:
        """Term of entry `index` (also the snapshot's index). Raises LogCompactedError below
        it and LogUnavailableError past the last index."""

    def first_index(self) -> int:
        """Index of the first entry available (snapshot index + 1)."""

    def last_index(self) -> int:
        """Index of the last entry (the snapshot index when the log is empty)."""

    def snapshot(self) -> Snapshot:
        """The latest snapshot."""


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix within max_bytes, but never fewer than one entry (progress)."""
    total = 0
    for i, e in enumerate(entries):
        total += e.size()
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


class MemoryStorage:
    """A `Storage` in memory; tests treat it as the node's durable disk."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot()
        # _ents[0] is a dummy standing for the snapshot (its index and term).
        self._ents: list[Entry] = [Entry(0, 0)]

    @classmethod
    def bootstrap(cls, voters: tuple[NodeId, ...] | list[NodeId]) -> MemoryStorage:
        """The disk of a member of a brand-new cluster.

        The initial membership is a snapshot at index 1, term 1 with empty data, identical on
        every founding member. A node added later starts empty and receives that membership
        (or a newer one) as a snapshot from the leader, then the conf changes after it.
        """
        st = cls()
        cs = ConfState(tuple(sorted(voters)))
        st.apply_snapshot(Snapshot(SnapshotMeta(BOOTSTRAP_INDEX, BOOTSTRAP_TERM, cs)))
        st.hard_state = HardState(BOOTSTRAP_TERM, commit=BOOTSTRAP_INDEX)
        return st

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.meta.conf_state

    def set_hard_state(self, hs: HardState) -> None:
        assert hs.term >= self.hard_state.term, f"term regresses: {self.hard_state} -> {hs}"
        self.hard_state = hs

    def _offset(self) -> int:
        return self._ents[0].index

    def first_index(self) -> int:
        return self._offset() + 1

    def last_index(self) -> int:
        return self._offset() + len(self._ents) - 1

    def term(self, index: int) -> int:
        off = self._offset()
        if index < off:
            raise LogCompactedError(f"raft entry {index} compacted (snapshot at {off})")
        if index - off >= len(self._ents):
            raise LogUnavailableError(f"raft entry {index} past last {self.last_index()}")
        return self._ents[index - off].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        off = self._offset()
        if lo <= off:
            raise LogCompactedError(f"raft entries from {lo} compacted (snapshot at {off})")
        if hi > self.last_index() + 1:
            raise LogUnavailableError(f"raft entries to {hi} past last {self.last_index()}")
        return limit_size(self._ents[lo - off:hi - off], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace everything with `snap` (a follower installing a leader's snapshot)."""
        if snap.index <= self._snapshot.index:
            raise UsageError(f"snapshot at {snap.index} is not newer than {self._snapshot.index}")
        self._snapshot = snap
        self._ents = [Entry(snap.index, snap.term)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record the application's snapshot taken at applied index `index`."""
        if index <= self._snapshot.index:
            raise UsageError(f"snapshot at {index} is not newer than {self._snapshot.index}")
        if index > self.last_index():
            raise UsageError(f"snapshot at {index} is past the last index {self.last_index()}")
        self._snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf_state), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including `index` (which the snapshot must cover)."""
        off = self._offset()
        if index <= off:
            return
        if index > self._snapshot.index:
            raise UsageError(f"compact to {index} past the snapshot at {self._snapshot.index}; "
                             "create a snapshot first")
        term = self.term(index)
        self._ents = [Entry(index, term)] + self._ents[index - off + 1:]

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Append entries, first truncating any conflicting suffix (as the core asks)."""
        if not entries:
            return
        first = entries[0].index
        off = self._offset()
        if first + len(entries) - 1 <= off:
            return  # all covered by the snapshot
        if first <= off:
            entries = list(entries)[off + 1 - first:]
            first = off + 1
        assert first <= self.last_index() + 1, f"gap: append at {first}, last {self.last_index()}"
        for a, b in zip(entries, entries[1:], strict=False):
            assert b.index == a.index + 1, f"entries not contiguous: {a.index}, {b.index}"
        # In place: a copy of the whole list per append costs O(log length) per write.
        del self._ents[first - off:]
        self._ents.extend(entries)

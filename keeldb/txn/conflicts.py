"""Commit-time conflict detection: the log of recent commits and the checks against it.

A transaction that read at snapshot `read_ts` and wants to commit is checked against every
transaction that committed after `read_ts` (its concurrent committed peers):

- write-write (snapshot, serializable): a peer wrote a key this transaction writes ->
  first committer wins, this one aborts;
- read-write (serializable): a peer wrote a key this transaction read, or a key inside a
  range it scanned (predicate reads included, so phantoms count) -> this transaction's reads
  are stale at its commit point, it aborts.

When neither fires, every read of the transaction would return the same at its commit
timestamp as at its snapshot, so the transaction is equivalent to running alone at its commit
timestamp: committed read-write transactions serialize in commit order (backward validation
of optimistic concurrency control over a snapshot, which is serializable and, since commit
order follows real time, strict).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from keeldb import limits
from keeldb.errors import SerializationConflict, TransactionTooLargeError, TransactionTooOldError


@dataclass(frozen=True, slots=True)
class Committed:
    """What the log remembers of one commit."""

    txn_id: int
    ts: int
    keys: frozenset[bytes]


@dataclass(slots=True)
class ReadSet:
    """Keys read by point lookups and [start, end) ranges read by scans (None: unbounded)."""

    keys: set[bytes] = field(default_factory=set)
    ranges: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys) + len(self.ranges)

    def add_key(self, key: bytes) -> None:
        self.keys.add(key)
        self._check_size()

    def add_range(self, start: bytes | None, end: bytes | None) -> None:
        for lo, hi in self.ranges:  # an identical scan repeated adds nothing
            if lo == start and hi == end:
                return
        self.ranges.append((start, end))
        self._check_size()

    def covers(self, key: bytes) -> bool:
        if key in self.keys:
            return True
        return any((lo is None or lo <= key) and (hi is None or key < hi)
                   for lo, hi in self.ranges)

    def _check_size(self) -> None:
        if len(self) > limits.txn_read_set_entries_max:
            raise TransactionTooLargeError(
                f"serializable transaction tracks {len(self)} reads, over "
                f"txn_read_set_entries_max={limits.txn_read_set_entries_max}; read fewer keys "
                "per transaction, scan ranges instead of many single keys, or use 'snapshot'"
            )


class CommitLog:
    """Recent commits in timestamp order, pruned below the oldest live snapshot."""

    def __init__(self, floor: int = 0) -> None:
        self._entries: deque[Committed] = deque()
        self._ts: deque[int] = deque()
        self.floor = floor  # every commit with ts <= floor is forgotten

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, entry: Committed) -> None:
        assert not self._ts or entry.ts > self._ts[-1], "commit timestamps must increase"
        assert entry.ts > self.floor
        self._entries.append(entry)
        self._ts.append(entry.ts)

    def since(self, ts: int) -> Iterator[Committed]:
        """Commits with a timestamp above `ts`, oldest first."""
        start = bisect.bisect_right(self._ts, ts)
        for i in range(start, len(self._entries)):
            yield self._entries[i]

    def prune(self, upto: int) -> None:
        """Forget commits with ts <= upto (no live transaction's snapshot is older)."""
        while self._entries and self._entries[0].ts <= upto:
            self._entries.popleft()
            self._ts.popleft()
        self.floor = max(self.floor, upto)

    def trim(self, entries_max: int) -> None:
        """Keep at most `entries_max` commits; transactions needing older ones become too old."""
        while len(self._entries) > entries_max:
            self.floor = self._entries.popleft().ts
            self._ts.popleft()


def validate(*, txn_id: int, read_ts: int, writes: set[bytes] | frozenset[bytes],
             reads: ReadSet | None, log: CommitLog) -> None:
    """Raise if a commit after `read_ts` conflicts with this transaction's writes or reads.

    `reads` is None below serializable (only write-write conflicts count).
    """
    if read_ts < log.floor:
        raise TransactionTooOldError(
            f"transaction {txn_id} read at timestamp {read_ts}, but commits up to "
            f"{log.floor} are no longer tracked (txn_commits_behind_max="
            f"{limits.txn_commits_behind_max}); retry it, and keep transactions short"
        )
    for peer in log.since(read_ts):
        assert peer.txn_id != txn_id
        for key in sorted(peer.keys & writes):
            raise SerializationConflict(
                f"write-write conflict on key {key!r}: transaction {peer.txn_id} committed it "
                f"at timestamp {peer.ts}, after transaction {txn_id}'s snapshot at {read_ts}; "
                "retry the transaction",
                key=key, other_txn=peer.txn_id, kind="write-write",
            )
        if reads is not None:
            for key in sorted(peer.keys):
                if reads.covers(key):
                    raise SerializationConflict(
                        f"read-write conflict on key {key!r}: transaction {txn_id} read it "
                        f"(or a range holding it) at timestamp {read_ts}, and transaction "
                        f"{peer.txn_id} changed it at timestamp {peer.ts}; retry the transaction",
                        key=key, other_txn=peer.txn_id, kind="read-write",
                    )

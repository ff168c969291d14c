"""The Raft log as the core sees it: durable entries in `Storage` plus an unstable tail.

Unstable entries (and an unstable snapshot) are what the next `Ready` asks the node to persist;
`stable_to` moves them out once the node reports they are durable. `committed` and `applied`
only move forward (asserted).
"""

from __future__ import annotations

from keeldb.consensus.messages import Entry, Snapshot
from keeldb.consensus.storage import Storage, limit_size
from keeldb.errors import LogCompactedError, LogUnavailableError


class Unstable:
    """Entries [offset, offset+len) and/or a snapshot not yet persisted."""

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.index == index:
                return self.snapshot.term
            return None
        i = index - self.offset
        return self.entries[i].term if i < len(self.entries) else None

    def truncate_and_append(self, ents: list[Entry]) -> None:
        first = ents[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif first <= self.offset:
            # Replace everything unstable; the node's append truncates storage's suffix.
            self.offset = first
            self.entries = list(ents)
        else:
            self.entries = self.entries[:first - self.offset] + list(ents)

    def stable_to(self, index: int, term: int) -> None:
        t = self.maybe_term(index)
        if t is None or t != term or index < self.offset:
            return  # replaced meanwhile by a newer leader's entries
        self.entries = self.entries[index + 1 - self.offset:]
        self.offset = index + 1

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.index + 1
        self.entries = []
        self.snapshot = snap


class RaftLog:
    def __init__(self, storage: Storage, applied: int = 0) -> None:
        self.storage = storage
        first, last = storage.first_index(), storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        if applied:
            self.applied_to(applied)

    # --- indexes and terms ----------------------------------------------------------------

    def first_index(self) -> int:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable.entries:
            return self.unstable.offset + len(self.unstable.entries) - 1
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot.index
        return self.storage.last_index()

    def term(self, index: int) -> int:
        """Term of `index`; raises LogCompactedError / LogUnavailableError outside the log."""
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        if index < self.first_index() - 1:
            raise LogCompactedError(f"raft entry {index} compacted (first {self.first_index()})")
        if index > self.last_index():
            raise LogUnavailableError(f"raft entry {index} past last {self.last_index()}")
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (LogCompactedError, LogUnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (LogCompactedError, LogUnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Is a candidate's log (last_index, term) at least as up to date as ours? (§5.4.1)"""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # --- reading entries ------------------------------------------------------------------

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi) within max_bytes (at least one). Raises LogCompactedError."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise LogCompactedError(f"raft entries from {lo} compacted (first {self.first_index()})")
        assert hi <= self.last_index() + 1, f"slice [{lo},{hi}) past last {self.last_index()}"
        out: list[Entry] = []
        uoff = self.unstable.offset
        if lo < uoff:
            out = self.storage.entries(lo, min(hi, uoff), max_bytes)
            if len(out) < min(hi, uoff) - lo:
                return out  # the size limit stopped the storage part
        if hi > uoff:
            out += self.unstable.entries[max(lo, uoff) - uoff:hi - uoff]
        return limit_size(out, max_bytes)

    def entries_from(self, lo: int, max_bytes: int) -> list[Entry]:
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def next_committed_entries(self, max_bytes: int) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        return self.slice(lo, self.committed + 1, max_bytes)

    def has_next_committed_entries(self) -> bool:
        return self.committed > max(self.applied, self.first_index() - 1)

    # --- changing the log -----------------------------------------------------------------

    def append(self, ents: list[Entry]) -> int:
        if ents:
            assert ents[0].index > self.committed, (
                f"append at {ents[0].index} would overwrite committed {self.committed}")
            self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: tuple[Entry, ...]) -> int:
        """Index of the first entry whose term differs from ours (or is new); 0 if none."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (i, term(i)) with i <= index and term(i) <= term: where a leader's
        log may match ours (the fast-backtracking hint)."""
        while index > 0:
            try:
                t = self.term(index)
            except LogCompactedError:
                return index, 0
            except LogUnavailableError:
                index = self.last_index()
                continue
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(self, index: int, log_term: int, committed: int,
                     ents: tuple[Entry, ...]) -> int | None:
        """Append a leader's entries after (index, log_term) if our log matches there.
        Returns the last index now known to match, or None on a mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        conflict = self.find_conflict(ents)
        if conflict:
            assert conflict > self.committed, (
                f"entry {conflict} conflicts with committed prefix (commit {self.committed})")
            self.append(list(ents[conflict - index - 1:]))
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), (
                f"commit {index} past last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit `index` if it is newer and its entry has `term` (the leader's term)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        assert index >= self.applied, f"applied regresses: {self.applied} -> {index}"
        assert index <= self.committed, f"applied {index} past committed {self.committed}"
        self.applied = index

    def restore(self, snap: Snapshot) -> None:
        assert snap.index > self.committed, f"snapshot {snap.index} <= commit {self.committed}"
        self.committed = snap.index
        self.unstable.restore(snap)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        s = self.unstable.snapshot
        if s is not None and s.index == index:
            self.unstable.snapshot = None

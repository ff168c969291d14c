"""The memtable: a dict of the newest version per key, sorted only when needed.

`table` maps key -> Entry `(key, seq, kind, value)` of the newest version. Older versions are
kept (in `old`, oldest first) only when a live snapshot could still read them, i.e. when the
overwritten version's seq is <= the newest live snapshot's seq; otherwise no reader can ever
see them and they are dropped at once.

Sorted order is kept incrementally: the first scan (or the flush) sorts the keys once; later
writes append the keys they add to `_delta` (append-only), and the next scan merges just those
into a new sorted list (copy-on-write: a running scan keeps slicing the list it started with).
A full re-sort happens only when the delta is large. Memtables scanned many times without a
write in between also keep a sorted list of their entries, so a scan slices entries instead
of looking each key up in the dict (random memory access dominates that).

Byte accounting: each version costs `len(key) + len(value) + ENTRY_OVERHEAD_BYTES`; the engine
makes the memtable immutable once `bytes` reaches `Options.memtable_bytes`.

Batches are applied with one `dict.update` over a prepared list, which runs in C without
releasing the GIL, so a concurrent reader never sees half of a batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from itertools import chain
from operator import itemgetter

Entry = tuple[bytes, int, int, bytes]

# Charged per version on top of key and value bytes. A version costs Python far more than
# that (entry tuple 72 B, two bytes headers 66 B, a dict slot ~40 B); charging part of it keeps
# memtable_bytes close enough to real memory that three memtables (active + the frozen ones
# waiting for flush) stay within the peak-RSS budget, while keeping flushes large.
ENTRY_OVERHEAD_BYTES = 64

# A delta of new keys above 1/MERGE_DELTA_DIVISOR of the sorted keys is merged by a full sort.
MERGE_DELTA_DIVISOR = 4
# Build the sorted entry list after this many scans with no write (and at least one scan per
# ENTRIES_BUILD_KEYS_PER_SCAN keys): building costs one dict lookup per key, a scan saves ~64.
ENTRIES_BUILD_SCANS_MIN = 8
ENTRIES_BUILD_KEYS_PER_SCAN = 64

_key_of_op = itemgetter(1)
_seq_of_entry = itemgetter(1)


class Memtable:
    """Mutable until `freeze()`; then read-only and flushed to one or more tables."""

    __slots__ = (
        "table",
        "old",
        "bytes",
        "wal_number",
        "seq_min",
        "seq_max",
        "frozen",
        "_sorted",
        "_delta",
        "_entries",
        "_scans",
        "versions",
    )

    def __init__(self, wal_number: int) -> None:
        self.table: dict[bytes, Entry] = {}
        self.old: dict[bytes, list[Entry]] = {}
        self.bytes = 0
        self.wal_number = wal_number
        self.seq_min = 0
        self.seq_max = 0
        self.frozen = False
        self.versions = 0
        # (sorted keys, how many `_delta` keys they include); one tuple, swapped atomically.
        self._sorted: tuple[list[bytes], int] | None = None
        self._delta: list[bytes] = []  # keys added by writes, in write order (append-only)
        # (sorted keys it matches, seq_max it was built at, entries in key order)
        self._entries: tuple[list[bytes], int, list[Entry]] | None = None
        self._scans = (0, 0)  # (seq_max, scans since it was set) -- when to build _entries

    def __len__(self) -> int:
        return len(self.table)

    def apply(
        self, seq: int, ops: list[tuple[int, bytes, bytes]], user_bytes: int, snapshot_max: int
    ) -> None:
        """Apply one batch at `seq`. `snapshot_max` is the newest live snapshot (or -1)."""
        assert not self.frozen, "write into a frozen memtable"
        assert seq > self.seq_max, f"seq {seq} not above memtable seq_max {self.seq_max}"
        table = self.table
        if snapshot_max >= self.seq_min and table:
            self._retain(ops, snapshot_max)
        before = len(table)
        # New keys go to the delta only after they are in `table`: a scan that merges them
        # looks them up there.
        if len(ops) == 1:
            kind, key, value = ops[0]
            table[key] = (key, seq, kind, value)
            if len(table) != before:
                self._delta.append(key)
        else:
            table.update([(key, (key, seq, kind, value)) for kind, key, value in ops])
            if len(table) != before:
                self._delta += map(_key_of_op, ops)  # overwrites are filtered at merge
        if not self.seq_min:
            self.seq_min = seq
        self.seq_max = seq
        self.versions += len(ops)
        self.bytes += user_bytes + ENTRY_OVERHEAD_BYTES * len(ops)

    def _retain(self, ops: list[tuple[int, bytes, bytes]], snapshot_max: int) -> None:
        table = self.table
        old = self.old
        for _, key, _ in ops:
            prev = table.get(key)
            if prev is not None and prev[1] <= snapshot_max:
                versions = old.get(key)
                if versions is None:
                    old[key] = [prev]
                elif versions[-1][1] != prev[1]:
                    versions.append(prev)

    def get_at(self, key: bytes, seq: int) -> Entry | None:
        """The newest version of `key` with seq <= `seq` held here, or None."""
        entry = self.table.get(key)
        if entry is None or entry[1] <= seq:
            return entry
        for version in reversed(self.old.get(key, ())):
            if version[1] <= seq:
                return version
        return None

    def freeze(self) -> None:
        self.frozen = True

    def sorted_keys(self) -> list[bytes]:
        """Every key, sorted; the list is never mutated after it is returned."""
        state = self._sorted
        n = len(self._delta)  # read before the table: later keys are merged next time
        if state is not None and state[1] == n:
            return state[0]
        if state is None:
            keys = sorted(self.table)
        else:
            old, upto = state
            fresh = sorted(set(self._delta[upto:n]))
            if len(fresh) * MERGE_DELTA_DIVISOR > len(old):
                keys = sorted(self.table)
            else:
                # Drop keys already there (overwrites; keys a concurrent full sort included).
                size = len(old)
                fresh = [k for k in fresh
                         if (i := bisect.bisect_left(old, k)) == size or old[i] != k]
                if len(fresh) <= 8:
                    keys = old.copy()
                    for k in fresh:
                        bisect.insort(keys, k)
                else:
                    keys = old + fresh
                    keys.sort()  # two sorted runs: timsort merges them
        self._sorted = (keys, n)
        return keys

    def flush_entries(self) -> list[Entry]:
        """Every version, sorted by (key asc, seq desc), as tables want them."""
        table = self.table
        keys = self.sorted_keys()
        if not self.old:
            return list(map(table.__getitem__, keys))
        old = self.old
        out: list[Entry] = []
        for k in keys:
            out.append(table[k])
            versions = old.get(k)
            if versions:
                out.extend(reversed(versions))
        return out

    def all_versions(self) -> list[Entry]:
        """Every version in no particular order (frozen memtables only): what a worker
        process sorts and writes, so the sort costs the writers' process nothing."""
        assert self.frozen, "all_versions of a memtable still taking writes"
        out = list(self.table.values())
        for versions in self.old.values():
            out += versions
        return out

    def iter(
        self, start: bytes | None, end: bytes | None, reverse: bool, seq: int
    ) -> Iterator[Entry]:
        """The version visible at `seq` of each key in [start, end), in key order.

        Built as chunks (lists) handed out by `chain.from_iterable`, so pulling one entry
        costs no Python frame.
        """
        return chain.from_iterable(self._chunks(start, end, reverse, seq))

    def _chunks(self, start: bytes | None, end: bytes | None, reverse: bool,
                seq: int) -> Iterator[list[Entry]]:
        keys = self.sorted_keys()
        lo = 0 if start is None else bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        seq_max = self.seq_max
        if seq_max <= seq:
            entries = self._clean_entries(keys, seq_max)
            if entries is not None:
                # Exactly the state at `seq`: writes up to `seq` were all applied by now
                # (seq_max was not above it) and the list never changes.
                yield from self._slices(entries, lo, hi, reverse)
                return
        getitem = self.table.__getitem__
        get_at = self.get_at
        # Entries are fetched in growing chunks with one C-level map each; while no write
        # newer than `seq` has reached this memtable (seq_max <= seq before and after the
        # map), the chunk needs no per-entry check.
        size = 128  # a scan of 100 (the common page) maps one chunk per memtable
        pos = hi if reverse else lo
        while (pos > lo) if reverse else (pos < hi):
            if reverse:
                chunk_keys = keys[max(lo, pos - size) : pos]
                chunk_keys.reverse()
                pos -= len(chunk_keys)
            else:
                chunk_keys = keys[pos : min(hi, pos + size)]
                pos += len(chunk_keys)
            size = min(size * 2, 4096)
            clean = self.seq_max <= seq
            entries = list(map(getitem, chunk_keys))
            if clean and self.seq_max <= seq:
                yield entries
                continue
            visible = []  # the active memtable took writes newer than `seq`
            for entry in entries:
                if entry[1] > seq:
                    found = get_at(entry[0], seq)
                    if found is None:
                        continue
                    entry = found
                visible.append(entry)
            yield visible

    def _clean_entries(self, keys: list[bytes], seq_max: int) -> list[Entry] | None:
        """The entries of `keys` as of `seq_max` when built (or now worth building)."""
        built = self._entries
        if built is not None and built[0] is keys and built[1] == seq_max:
            return built[2]
        last, count = self._scans
        count = count + 1 if last == seq_max else 1
        self._scans = (seq_max, count)
        if count < max(ENTRIES_BUILD_SCANS_MIN, len(keys) // ENTRIES_BUILD_KEYS_PER_SCAN):
            return None
        entries = list(map(self.table.__getitem__, keys))
        if self.seq_max != seq_max or max(map(_seq_of_entry, entries), default=0) > seq_max:
            return None  # a write raced the build
        self._entries = (keys, seq_max, entries)
        return entries

    @staticmethod
    def _slices(entries: list[Entry], lo: int, hi: int, reverse: bool) -> Iterator[list[Entry]]:
        size = 128
        if reverse:
            while hi > lo:
                chunk = entries[max(lo, hi - size):hi]
                chunk.reverse()
                hi -= len(chunk)
                size = min(size * 2, 4096)
                yield chunk
        else:
            while lo < hi:
                chunk = entries[lo:min(hi, lo + size)]
                lo += len(chunk)
                size = min(size * 2, 4096)
                yield chunk

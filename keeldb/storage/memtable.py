"""The memtable: a dict of the newest version per key, sorted only when needed.

`table` maps key -> Entry `(key, seq, kind, value)` of the newest version. Older versions are
kept (in `old`, oldest first) only when a live snapshot could still read them, i.e. when the
overwritten version's seq is <= the newest live snapshot's seq; otherwise no reader can ever
see them and they are dropped at once.

Sorted order is kept incrementally, in two copy-on-write levels published as one tuple
`_sorted = (base, upto, fresh, n)`: `base` is every key of `_delta[:upto]` sorted; `fresh`
holds the keys of `_delta[upto:n]` not in `base`, sorted; neither list is ever mutated once
published, so a running scan keeps slicing the lists it started with. Writes append the keys
they add to `_delta` (append-only). A scan after writes merges only the new delta into `fresh`
(a copy of at most ~len(base)/FRESH_DIVISOR keys) and walks `base` and `fresh` side by side
over its own range: O(log n + fresh + page), not O(n). `fresh` is folded into `base` (one
timsort merge of two runs, O(n)) only once it outgrows its bound, so that cost is amortized
over many new keys; a delta larger than 1/MERGE_DELTA_DIVISOR of `base` is a full re-sort.
Memtables scanned many times without a write in between also keep a sorted list of their
entries, so a scan slices entries instead of looking each key up in the dict (random memory
access dominates that).

Byte accounting: each version costs `len(key) + len(value) + ENTRY_OVERHEAD_BYTES`; the engine
makes the memtable immutable once `bytes` reaches `Options.memtable_bytes`.

Batches are applied with one `dict.update` over a prepared list, which runs in C without
releasing the GIL, so a concurrent reader never sees half of a batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from itertools import chain, islice, repeat
from operator import itemgetter

Entry = tuple[bytes, int, int, bytes]

# Charged per version on top of key and value bytes. A version costs Python far more than
# that (entry tuple 72 B, two bytes headers 66 B, a dict slot ~40 B); charging part of it keeps
# memtable_bytes close enough to real memory that three memtables (active + the frozen ones
# waiting for flush) stay within the peak-RSS budget, while keeping flushes large.
ENTRY_OVERHEAD_BYTES = 64

# A delta of new keys above 1/MERGE_DELTA_DIVISOR of the sorted keys is merged by a full sort.
MERGE_DELTA_DIVISOR = 4
# `fresh` (new keys not yet folded into `base`) is folded once it holds more than
# max(FRESH_KEYS_MIN, len(base) // FRESH_DIVISOR) keys: a scan after a write copies at most
# that many keys, and a fold (O(n)) happens at most once per that many new keys.
FRESH_KEYS_MIN = 512
FRESH_DIVISOR = 64
# Build the sorted entry list after this many scans with no write (and at least one scan per
# ENTRIES_BUILD_KEYS_PER_SCAN keys): building costs one dict lookup per key, a scan of a page
# saves about one lookup per entry it returns (a few dozen).
ENTRIES_BUILD_SCANS_MIN = 8
ENTRIES_BUILD_KEYS_PER_SCAN = 1024
# First chunk of a memtable iterator when the caller gives no hint; later chunks double up to
# CHUNK_ENTRIES_MAX.
CHUNK_ENTRIES_FIRST = 128
CHUNK_ENTRIES_MAX = 4096

_EMPTY: list[bytes] = []
_kind_of_op = itemgetter(0)
_key_of_op = itemgetter(1)
_value_of_op = itemgetter(2)
_seq_of_entry = itemgetter(1)
_kind_of_entry = itemgetter(2)
_value_of_entry = itemgetter(3)


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
        "_columns",
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
        # (base, upto, fresh, n) as the module docstring says; one tuple, swapped atomically.
        self._sorted: tuple[list[bytes], int, list[bytes], int] | None = None
        self._delta: list[bytes] = []  # keys added by writes, in write order (append-only)
        # (sorted keys it matches, seq_max it was built at, entries in key order)
        self._entries: tuple[list[bytes], int, list[Entry]] | None = None
        self._scans = (0, 0)  # (seq_max, scans since it was set) -- when to build _entries
        # (the _entries list it was built from, its values with None for a tombstone,
        # whether it holds a tombstone): what `page_columns` slices
        self._columns: tuple[list[Entry], list[bytes | None], bool] | None = None

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
            # Entries built by C-level maps first; the update then pairs them with their keys
            # through a zip that reuses its one pair tuple, so it allocates no object (no GC
            # pass, no GIL switch can split it) -- ~2x cheaper than a comprehension of pairs.
            keys = list(map(_key_of_op, ops))
            entries = list(zip(keys, repeat(seq), map(_kind_of_op, ops), map(_value_of_op, ops)))
            table.update(zip(keys, entries, strict=True))
            if len(table) != before:
                self._delta += keys  # overwrites are filtered at merge
        if not self.seq_min:
            self.seq_min = seq
        self.seq_max = seq
        self.versions += len(ops)
        self.bytes += user_bytes + ENTRY_OVERHEAD_BYTES * len(ops)

    def apply_one(self, seq: int, kind: int, key: bytes, value: bytes, user_bytes: int,
                  snapshot_max: int) -> None:
        """`apply(seq, [(kind, key, value)], ...)` without building the batch (single puts)."""
        assert not self.frozen, "write into a frozen memtable"
        assert seq > self.seq_max, f"seq {seq} not above memtable seq_max {self.seq_max}"
        table = self.table
        if snapshot_max >= self.seq_min and table:
            self._retain(((kind, key, value),), snapshot_max)
        before = len(table)
        table[key] = (key, seq, kind, value)
        if len(table) != before:  # a new key (after it is in `table`, as `apply` says)
            self._delta.append(key)
        if not self.seq_min:
            self.seq_min = seq
        self.seq_max = seq
        self.versions += 1
        self.bytes += user_bytes + ENTRY_OVERHEAD_BYTES

    def _retain(self, ops: Iterable[tuple[int, bytes, bytes]], snapshot_max: int) -> None:
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
        """Every key, sorted, as one list (folds `fresh` into `base`); never mutated after it
        is returned. Scans use `sorted_view`, which avoids the O(n) fold."""
        base, fresh = self.sorted_view()
        if not fresh:
            return base
        state = self._sorted
        keys = base + fresh
        keys.sort()  # two sorted runs: timsort merges them
        if state is not None and state[0] is base and state[2] is fresh:
            self._sorted = (keys, state[3], _EMPTY, state[3])
        return keys

    def sorted_view(self) -> tuple[list[bytes], list[bytes]]:
        """(base, fresh): two disjoint sorted lists holding every key between them, neither
        ever mutated after it is returned. Costs O(new keys + len(fresh)) after writes."""
        state = self._sorted
        n = len(self._delta)  # read before the table: later keys are merged next time
        if state is not None and state[3] == n:
            return state[0], state[2]
        if state is None:
            base, upto, fresh = sorted(self.table), n, _EMPTY
        else:
            base, upto, fresh, done = state
            new = sorted(set(self._delta[done:n]))
            if len(new) * MERGE_DELTA_DIVISOR > len(base):
                base, upto, fresh = sorted(self.table), n, _EMPTY
            else:
                # Drop keys already there (overwrites; keys a concurrent full sort included).
                size, fsize = len(base), len(fresh)
                new = [k for k in new
                       if ((i := bisect.bisect_left(base, k)) == size or base[i] != k)
                       and ((j := bisect.bisect_left(fresh, k)) == fsize or fresh[j] != k)]
                if new:
                    if len(new) <= 8:
                        fresh = fresh.copy()
                        for k in new:
                            bisect.insort(fresh, k)
                    else:
                        fresh = fresh + new
                        fresh.sort()  # two sorted runs: timsort merges them
                    if len(fresh) > max(FRESH_KEYS_MIN, len(base) // FRESH_DIVISOR):
                        base = base + fresh  # fold: O(n), once per that many new keys
                        base.sort()
                        upto, fresh = n, _EMPTY
        assert len(fresh) <= max(FRESH_KEYS_MIN, len(base) // FRESH_DIVISOR), len(fresh)
        self._sorted = (base, upto, fresh, n)
        return base, fresh

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
        self, start: bytes | None, end: bytes | None, reverse: bool, seq: int,
        first: int = CHUNK_ENTRIES_FIRST,
    ) -> Iterator[Entry]:
        """The version visible at `seq` of each key in [start, end), in key order.

        Built as chunks (lists) handed out by `chain.from_iterable`, so pulling one entry
        costs no Python frame. `first`: size of the first chunk (later ones double): a caller
        that reads only a page's share from this memtable passes about that share, so no
        more keys than it needs are looked up.
        """
        return chain.from_iterable(self._chunks(start, end, reverse, seq, max(1, first)))

    def page(self, start: bytes | None, end: bytes | None, reverse: bool, seq: int,
             want: int) -> tuple[list[Entry], bool]:
        """The first `want` visible entries of `iter(...)` as a list, and whether more may
        follow. A memtable whose sorted entry list is built (no write since) answers with
        one list slice; otherwise the first chunk of `iter` is sized to `want`."""
        state = self._sorted
        if state is not None and state[3] == len(self._delta) and not state[2]:
            built = self._entries  # no key added since the last sort: is the list current?
            seq_max = self.seq_max
            if built is not None and built[0] is state[0] and built[1] == seq_max <= seq:
                keys = state[0]
                lo = 0 if start is None else bisect.bisect_left(keys, start)
                hi = len(keys) if end is None else bisect.bisect_left(keys, end)
                if reverse:
                    chunk = built[2][max(lo, hi - want):hi]
                    chunk.reverse()
                else:
                    chunk = built[2][lo:min(hi, lo + want)]
                return chunk, hi - lo > want
        got = list(islice(self.iter(start, end, reverse, seq, want), want))
        return got, len(got) == want

    def page_columns(self, start: bytes | None, end: bytes | None, reverse: bool, seq: int,
                     want: int) -> tuple[list[bytes], list[bytes | None], bool, bool] | None:
        """`page` as columns, from the sorted entry list when it is current: (keys, values
        with None for a tombstone, whether some value may be None, whether more may
        follow), keys ascending whatever the direction (the `want` entries nearest the
        scan's start). None when the list is not current: then call `page`. Two list
        slices; the values list is made once per entry list."""
        state = self._sorted
        built = self._entries
        if (state is None or built is None or state[2] or state[3] != len(self._delta)
                or built[0] is not state[0] or not built[1] == self.seq_max <= seq):
            return None
        cols = self._columns
        if cols is None or cols[0] is not built[2]:
            entries = built[2]
            tombs = not all(map(_kind_of_entry, entries))
            values: list[bytes | None] = [e[3] if e[2] else None for e in entries] if tombs \
                else list(map(_value_of_entry, entries))
            cols = self._columns = (entries, values, tombs)
        keys = state[0]
        lo = 0 if start is None else bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        if reverse:
            a, b = max(lo, hi - want), hi
        else:
            a, b = lo, min(hi, lo + want)
        return keys[a:b], cols[1][a:b], cols[2], hi - lo > want

    def _chunks(self, start: bytes | None, end: bytes | None, reverse: bool,
                seq: int, first: int) -> Iterator[list[Entry]]:
        base, fresh = self.sorted_view()
        seq_max = self.seq_max
        if seq_max <= seq and not fresh:
            entries = self._clean_entries(base, seq_max)
            if entries is not None:
                # Exactly the state at `seq`: writes up to `seq` were all applied by now
                # (seq_max was not above it) and the list never changes.
                lo = 0 if start is None else bisect.bisect_left(base, start)
                hi = len(base) if end is None else bisect.bisect_left(base, end)
                yield from self._slices(entries, lo, hi, reverse, first)
                return
        getitem = self.table.__getitem__
        get_at = self.get_at
        # Entries are fetched in growing chunks with one C-level map each; while no write
        # newer than `seq` has reached this memtable (seq_max <= seq before and after the
        # map), the chunk needs no per-entry check.
        for chunk_keys in _key_chunks(base, fresh, start, end, reverse, first):
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
    def _slices(entries: list[Entry], lo: int, hi: int, reverse: bool,
                size: int) -> Iterator[list[Entry]]:
        if reverse:
            while hi > lo:
                chunk = entries[max(lo, hi - size):hi]
                chunk.reverse()
                hi -= len(chunk)
                size = min(size * 2, CHUNK_ENTRIES_MAX)
                yield chunk
        else:
            while lo < hi:
                chunk = entries[lo:min(hi, lo + size)]
                lo += len(chunk)
                size = min(size * 2, CHUNK_ENTRIES_MAX)
                yield chunk


def _key_chunks(base: list[bytes], fresh: list[bytes], start: bytes | None,
                end: bytes | None, reverse: bool, size: int) -> Iterator[list[bytes]]:
    """The keys of base and fresh (disjoint, sorted) in [start, end), in scan order, as
    chunks of growing size: each chunk is a slice of `base` plus the `fresh` keys that fall
    between it and the next one, found by bisection (never a walk over either list)."""
    bisect_left = bisect.bisect_left
    lo = 0 if start is None else bisect_left(base, start)
    hi = len(base) if end is None else bisect_left(base, end)
    flo = 0 if start is None else bisect_left(fresh, start)
    fhi = len(fresh) if end is None else bisect_left(fresh, end)
    if not reverse:
        pos, fpos = lo, flo
        while pos < hi:
            nxt = min(hi, pos + size)
            chunk = base[pos:nxt]
            if fpos < fhi:
                fend = bisect_left(fresh, base[nxt], fpos, fhi) if nxt < hi else fhi
                if fend > fpos:
                    chunk += fresh[fpos:fend]
                    chunk.sort()
                    fpos = fend
            pos = nxt
            size = min(size * 2, CHUNK_ENTRIES_MAX)
            yield chunk
        if fpos < fhi:  # no base key in the range: fresh alone (at most its bound)
            yield fresh[fpos:fhi]
    else:
        pos, fpos = hi, fhi
        while pos > lo:
            nxt = max(lo, pos - size)
            chunk = base[nxt:pos]
            if fpos > flo:
                fbeg = bisect_left(fresh, base[nxt], flo, fpos) if nxt > lo else flo
                if fbeg < fpos:
                    chunk += fresh[fbeg:fpos]
                    chunk.sort()
                    fpos = fbeg
            chunk.reverse()
            pos = nxt
            size = min(size * 2, CHUNK_ENTRIES_MAX)
            yield chunk
        if fpos > flo:
            chunk = fresh[flo:fpos]
            chunk.reverse()
            yield chunk

"""Range scans of the LSM engine: `LsmScan`, a mixin `LsmEngine` inherits.

The state (versions, pins, snapshots, locks, caches) stays on `LsmEngine` (keeldb/storage/
lsm.py); this module only holds the scan and page machinery, so a method here is looked up
on the engine's class like any other (no extra call layer). A scan of at most
`limits.scan_chunk_entries` pairs is a page read at once (`_page_unpinned`, `_scan_page`);
a longer one is a chunked merge that keeps its version pinned (`_scan_chunks`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

from keeldb import limits
from keeldb.errors import KeeldbError
from keeldb.storage.cache import TableCache
from keeldb.storage.engine import check_scan_args
from keeldb.storage.manifest import TableMeta
from keeldb.storage.merge import (
    SEQ_NEWEST,
    CleanSource,
    VisibleMerger,
    page_pairs,
    read_page,
    shares,
)

if TYPE_CHECKING:
    from keeldb.storage.lsm import Version

# A page scan reads each source's share of the page plus this many entries: the cut at
# the nearest last key read then rarely falls short of the page.
PAGE_SLACK_ENTRIES = 16
# After a page the column read could not tell, the next pages go to the general merge at
# once (1, 3, 7, ... of them after failures in a row, at most this many): where versions
# and tombstones hide much (many overwrites, old snapshots) the column read rarely tells a
# page, and trying first would only add its cost.
PAGE_SKIPS_MAX = 63
# Page reads size each source's share by the distinct keys of the version, estimated as
# the entries of all sources times the share of distinct keys among the entries the last
# pages merged (a moving average of weight PAGE_UNIQUE_WEIGHT, over pages that merged at
# least PAGE_UNIQUE_ENTRIES_MIN entries): after overwrites most keys sit in several
# sources, and shares of all entries would read too few of each.
PAGE_UNIQUE_WEIGHT = 0.125
PAGE_UNIQUE_ENTRIES_MIN = 16


class LsmScan:
    """Scan methods of `LsmEngine`; the attributes below are the engine state they use."""

    _mu: AbstractContextManager[Any]  # state lock: version swaps, seq and pin registration
    _rmu: AbstractContextManager[Any]  # read lock: shared table and block caches
    _version: Version
    _visible_seq: int
    _closed: bool
    _pins: dict[int, list[Any]]  # id(version) -> [version, count]
    # Pages the column read skips after failures in a row (see PAGE_SKIPS_MAX).
    _page_skips: int
    _page_skipped: int
    # Share of distinct keys among the entries pages merge lately (PAGE_UNIQUE_WEIGHT):
    # a racy hint like the counters above; the class value until the first page.
    _page_unique: float = 1.0
    table_cache: TableCache
    _check_open: Callable[[], None]
    _register: Callable[[int], None]
    _release_locked: Callable[[int], None]

    def scan(self, start: bytes | None = None, end: bytes | None = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self._check_open()
        return self._scan_at(None, start, end, reverse, limit)

    def _scan_at(self, seq: int | None, start: bytes | None, end: bytes | None, reverse: bool,
                 limit: int | None) -> Iterator[tuple[bytes, bytes]]:
        n = check_scan_args(start, end, limit)
        if n <= limits.scan_chunk_entries:
            pairs, again = self._page_unpinned(seq, start, end, reverse, n)
            if pairs is not None:
                return iter(pairs)
        else:
            again = False
        fresh = seq is None
        with self._mu:  # register seq + pin the version atomically with reading them
            if seq is None:
                seq = self._visible_seq
            self._register(seq)
            version = self._version
            pin = self._pins.setdefault(id(version), [version, 0])
            pin[1] += 1
        if n <= limits.scan_chunk_entries:
            # A page: read it now, in one hold of the read lock, and release at once.
            try:
                return iter(self._scan_page(version, seq, start, end, reverse, n, fresh,
                                            again))
            finally:
                self._unpin(version, seq)
        # chain.from_iterable hands out the pairs of each chunk in C; the generator below
        # runs once per chunk (and its `finally` unpins when the scan ends or is dropped).
        chunks = self._scan_chunks(version, seq, start, end, reverse, n)
        next(chunks)  # enter the try block, so dropping an unstarted scan still unpins
        return chain.from_iterable(chunks)

    def _page_unpinned(self, seq: int | None, start: bytes | None, end: bytes | None,
                       reverse: bool, n: int) -> tuple[list[tuple[bytes, bytes]] | None, bool]:
        """A page read at once (`_page_fast`) without registering its seq or pinning its
        version: the common short scan then costs one hold of each lock. Returns (pairs,
        _), or (None, again) when it cannot be answered so: then the caller reads it
        registered and pinned, with `_page_fast` again only if `again` (a race, not a
        page `_page_fast` cannot tell).

        Why that is safe: `seq` and `version` are read together under `mu`, so every
        table and frozen memtable of `version` holds nothing newer than `seq`. Only the
        active memtable may take writes meanwhile, and an overwrite drops the version a
        scan at `seq` would need unless a snapshot at `seq` is registered: a snapshot's
        scan has one; a fresh scan checks that no write reached the memtable after `seq`
        (its seq_max) and otherwise reads again, registered. A compaction may delete a
        table of an unpinned version: the read then fails with a KeeldbError, and is
        retried pinned when the version changed (as point reads do)."""
        if start is not None and end is not None and start >= end:
            return [], False
        if self._page_skipped:
            self._page_skipped -= 1
            return None, False
        fresh = seq is None
        with self._mu:
            if seq is None:
                seq = self._visible_seq
            version = self._version
        try:
            with self._rmu:
                pairs = self._page_fast(version, seq, start, end, reverse, n)
        except KeeldbError:
            if self._version is version or self._closed:
                raise
            return None, True  # a compaction deleted a table of `version` meanwhile
        if fresh and version.mem.seq_max > seq:
            return None, True  # a write raced the read
        return pairs, False

    def _unpin(self, version: Version, seq: int) -> None:
        with self._mu:
            self._release_locked(seq)
            pin = self._pins[id(version)]
            pin[1] -= 1
            if not pin[1]:
                del self._pins[id(version)]

    def _scan_page(self, version: Version, seq: int, start: bytes | None, end: bytes | None,
                   reverse: bool, n: int, fresh: bool,
                   fast: bool = True) -> list[tuple[bytes, bytes]]:
        """Up to n pairs, from `_page_fast` when `fast` and it can tell them; else from
        one read of each source as entries: each gives its share of n (by entry count)
        plus slack, one C-level merge resolves them (`page_pairs`); if that read was too
        short, a `VisibleMerger` goes on from it.

        `fresh`: `seq` is the visible seq read together with `version`, so no table or
        frozen memtable of it holds anything newer (the active memtable's iterator filters
        by seq itself): the merge skips its seq filter."""
        if start is not None and end is not None and start >= end:
            return []
        with self._rmu:
            if fast:
                pairs = self._page_fast(version, seq, start, end, reverse, n)
                if pairs is not None:
                    return pairs
            sources, sizes = self._sources(version, seq, start, end, reverse, n)
            if not sources:
                return []
            slack = PAGE_SLACK_ENTRIES if len(sources) > 1 else 1
            wants = [int(n * f) + slack for f in shares(sizes, len(sources))]
            read = [list(islice(src, want)) for src, want in zip(sources, wants, strict=True)]
            more = [len(buf) == want for buf, want in zip(read, wants, strict=True)]
            merge_seq = SEQ_NEWEST if fresh else seq
            pairs = page_pairs(read, more, merge_seq, reverse, n)
            if pairs is None:
                pairs = VisibleMerger(sources, merge_seq, reverse, sizes, read, more).take(n)
        return pairs

    def _page_fast(self, version: Version, seq: int, start: bytes | None, end: bytes | None,
                   reverse: bool, n: int) -> list[tuple[bytes, bytes]] | None:
        """`merge.read_page` (a page read as key and value columns); None if it cannot tell
        the page, and then the next pages skip it for a while (PAGE_SKIPS_MAX).
        Call with the read lock held."""
        counts = [0, 0]
        unique = self._page_unique
        pairs = read_page(version, self.table_cache, seq, start, end, reverse, n, unique,
                          counts)
        if counts[0] >= PAGE_UNIQUE_ENTRIES_MIN:  # a moving average of the distinct share
            self._page_unique = unique + (counts[1] / counts[0] - unique) * PAGE_UNIQUE_WEIGHT
        if pairs is None:  # the general merge reads this page and the next few
            self._page_skips = self._page_skipped = min(PAGE_SKIPS_MAX,
                                                        2 * self._page_skips + 1)
        else:
            self._page_skips = 0
        return pairs

    def _sources(self, version: Version, seq: int, start: bytes | None, end: bytes | None,
                 reverse: bool, page: int = 0) -> tuple[list[Iterator[Any]], list[int]]:
        """One iterator per non-empty memtable, overlapping L0 table and non-empty level,
        newest first, with their entry counts. Call with the read lock held.

        `page`: the scan reads about each source's share of this many entries first, so a
        memtable maps only that share in its first chunk (0: no hint)."""
        mems = [m for m in (version.mem,) + version.imms if len(m)]
        sizes = [len(m) for m in mems]  # entries per source: mergers read in proportion
        tables = [t for t in version.levels[0]
                  if (end is None or t.smallest < end) and (start is None or t.largest >= start)]
        sizes += [t.entries for t in tables]
        sizes += [entries for _, _, entries in version.deep]
        total, slack = sum(sizes), PAGE_SLACK_ENTRIES if len(sizes) > 1 else 1
        sources: list[Iterator[Any]] = [  # first chunk: the share `_scan_page` will read
            m.iter(start, end, reverse, seq, page * len(m) // total + slack) if page
            else m.iter(start, end, reverse, seq) for m in mems]
        sources += [self.table_cache.get(t.id, t.name).iter(start, end, reverse) for t in tables]
        sources += [self._level_iter(level_tables, start, end, reverse, largest)
                    for level_tables, largest, _ in version.deep]
        return sources, sizes

    def _scan_chunks(self, version: Version, seq: int, start: bytes | None, end: bytes | None,
                     reverse: bool, limit: int) -> Iterator[list[tuple[bytes, bytes]]]:
        try:
            yield []
            if start is not None and end is not None and start >= end:
                return
            with self._rmu:
                sources, sizes = self._sources(version, seq, start, end, reverse)
            if not sources:
                return
            puller: VisibleMerger | CleanSource
            if len(sources) == 1 and not version.levels[0] and not version.deep:
                puller = CleanSource(sources[0])  # one memtable: one visible entry per key
            else:
                puller = VisibleMerger(sources, seq, reverse, sizes)
            chunk_max = min(limit, limits.scan_chunk_entries)
            remaining = limit
            while remaining > 0 and not puller.exhausted:
                with self._rmu:
                    chunk = puller.take(min(remaining, chunk_max))
                remaining -= len(chunk)
                yield chunk
        finally:
            self._unpin(version, seq)

    def _level_iter(self, tables: tuple[TableMeta, ...], start: bytes | None, end: bytes | None,
                    reverse: bool, largest: list[bytes] | None = None) -> Iterator[Any]:
        """Entries of one sorted level; tables are opened only as the scan reaches them, and
        `chain` pulls each table's entries without a Python frame per entry."""
        return chain.from_iterable(self._level_tables(tables, start, end, reverse, largest))

    def _level_tables(self, tables: tuple[TableMeta, ...], start: bytes | None,
                      end: bytes | None, reverse: bool,
                      largest: list[bytes] | None = None) -> Iterator[Iterator[Any]]:
        if largest is None:
            largest = [t.largest for t in tables]
        if not reverse:
            i = 0 if start is None else bisect.bisect_left(largest, start)
            for t in islice(tables, i, None):
                if end is not None and t.smallest >= end:
                    return
                yield self.table_cache.get(t.id, t.name).iter(start, end)
        else:
            i = len(tables) if end is None else bisect.bisect_left(largest, end) + 1
            for t in reversed(tables[:i]):
                if start is not None and t.largest < start:
                    return
                yield self.table_cache.get(t.id, t.name).iter(start, end, True)

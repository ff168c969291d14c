"""Merging iterators: many sorted sources in, one resolved stream out.

Every source yields Entries `(key, seq, kind, value)` with keys in order (ascending, or
descending for reverse scans); a key may appear several times (in several sources, or as
several versions in one source). `heapq.merge` over the raw tuples keeps keys in order -- it
compares the key first, in C -- but does not promise any order between the versions of one
key, so the resolvers below look at a whole run of equal keys and pick by seq. That makes
the result independent of source order and of how each source orders versions.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator

from keeldb.storage.engine import KIND_DELETE

Entry = tuple[bytes, int, int, bytes]


def merge_sources(sources: list[Iterator[Entry]], reverse: bool = False) -> Iterator[Entry]:
    """One stream of all entries of `sources`, keys in order."""
    if len(sources) == 1:
        return sources[0]
    return heapq.merge(*sources, reverse=reverse)


def visible_pairs(merged: Iterable[Entry], seq: int, limit: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each key whose newest version with seq <= `seq` is a put."""
    if limit <= 0:
        return
    count = 0
    cur: bytes | None = None
    best: Entry | None = None
    for entry in merged:
        if entry[0] != cur:
            if best is not None and best[2]:
                yield best[0], best[3]
                count += 1
                if count >= limit:
                    return
            cur = entry[0]
            best = entry if entry[1] <= seq else None
        elif entry[1] <= seq and (best is None or entry[1] > best[1]):
            best = entry
    if best is not None and best[2]:
        yield best[0], best[3]


def compact_newest(
    merged: Iterable[Entry], drop_tombstones: bool, chunk_entries: int
) -> Iterator[list[Entry]]:
    """Keep only the newest version per key (no live snapshot needs older ones).

    Yields lists of at most about `chunk_entries` entries; a chunk never splits a key.
    """
    out: list[Entry] = []
    append = out.append
    cur: bytes | None = None
    best: Entry | None = None
    for entry in merged:
        if entry[0] != cur:
            if best is not None and (best[2] or not drop_tombstones):
                append(best)
                if len(out) >= chunk_entries:
                    yield out
                    out = []
                    append = out.append
            cur = entry[0]
            best = entry
        elif entry[1] > best[1]:  # type: ignore[index]
            best = entry
    if best is not None and (best[2] or not drop_tombstones):
        append(best)
    if out:
        yield out


def keep_versions(
    versions: list[Entry], snapshots: list[int], drop_tombstones: bool
) -> list[Entry]:
    """The versions of one key (newest first) that a reader may still see.

    The newest version is always kept; an older version is kept when some live snapshot S has
    version.seq <= S < seq of the next newer kept version (S would see exactly it). At the
    bottom level, tombstones at the old end of what is kept shadow nothing and are dropped.
    """
    kept = [versions[0]]
    newer_seq = versions[0][1]
    for version in versions[1:]:
        i = bisect.bisect_left(snapshots, version[1])
        if i < len(snapshots) and snapshots[i] < newer_seq:
            kept.append(version)
            newer_seq = version[1]
    if drop_tombstones:
        while kept and kept[-1][2] == KIND_DELETE:
            kept.pop()
    return kept


def compact_with_snapshots(
    merged: Iterable[Entry], snapshots: list[int], drop_tombstones: bool, chunk_entries: int
) -> Iterator[list[Entry]]:
    """Like `compact_newest` but keeps every version a live snapshot can read."""
    assert snapshots == sorted(snapshots), "snapshots must be sorted"
    out: list[Entry] = []
    group: list[Entry] = []
    for entry in merged:
        if group and entry[0] != group[0][0]:
            if len(group) > 1:
                group.sort(key=lambda e: -e[1])
            out.extend(keep_versions(group, snapshots, drop_tombstones))
            group = []
            if len(out) >= chunk_entries:
                yield out
                out = []
        group.append(entry)
    if group:
        if len(group) > 1:
            group.sort(key=lambda e: -e[1])
        out.extend(keep_versions(group, snapshots, drop_tombstones))
    if out:
        yield out

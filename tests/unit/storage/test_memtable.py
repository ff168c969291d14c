"""Memtable: newest-version dict, snapshot-driven retention, ordering, accounting."""

from __future__ import annotations

from keeldb.storage.engine import KIND_DELETE, KIND_PUT
from keeldb.storage.memtable import ENTRY_OVERHEAD_BYTES, Memtable


def test_apply_get_and_byte_accounting() -> None:
    m = Memtable(1)
    m.apply(1, [(KIND_PUT, b"b", b"22"), (KIND_PUT, b"a", b"1")], 5, -1)
    assert m.bytes == 5 + 2 * ENTRY_OVERHEAD_BYTES
    assert m.get_at(b"a", 1) == (b"a", 1, KIND_PUT, b"1")
    assert m.get_at(b"a", 0) is None
    m.apply(2, [(KIND_DELETE, b"a", b"")], 1, -1)
    assert m.get_at(b"a", 5) == (b"a", 2, KIND_DELETE, b"")
    assert m.get_at(b"a", 1) is None  # no snapshot: the old version was dropped
    assert m.seq_min == 1 and m.seq_max == 2 and len(m) == 2


def test_old_versions_kept_only_for_live_snapshots() -> None:
    m = Memtable(1)
    m.apply(1, [(KIND_PUT, b"k", b"v1")], 3, -1)
    m.apply(2, [(KIND_PUT, b"k", b"v2")], 3, 1)  # snapshot at 1 still needs v1
    m.apply(3, [(KIND_PUT, b"k", b"v3")], 3, 1)  # v2 (seq 2) is newer than every snapshot
    assert m.get_at(b"k", 1) == (b"k", 1, KIND_PUT, b"v1")
    assert m.get_at(b"k", 2) == (b"k", 1, KIND_PUT, b"v1")  # v2 was not retained
    assert m.get_at(b"k", 3) == (b"k", 3, KIND_PUT, b"v3")
    assert m.flush_entries() == [(b"k", 3, KIND_PUT, b"v3"), (b"k", 1, KIND_PUT, b"v1")]


def test_flush_entries_sorted_and_iter_bounds() -> None:
    m = Memtable(1)
    for seq, key in enumerate([b"d", b"a", b"c", b"b"], start=1):
        m.apply(seq, [(KIND_PUT, key, key)], 2, -1)
    assert [e[0] for e in m.flush_entries()] == [b"a", b"b", b"c", b"d"]
    assert [e[0] for e in m.iter(b"b", b"d", False, 10)] == [b"b", b"c"]
    assert [e[0] for e in m.iter(None, b"c", True, 10)] == [b"b", b"a"]
    assert [e[0] for e in m.iter(None, None, False, 2)] == [b"a", b"d"]  # seq filter


def test_sorted_view_invalidated_only_by_new_keys() -> None:
    m = Memtable(1)
    m.apply(1, [(KIND_PUT, b"a", b"1")], 2, -1)
    first = m.sorted_keys()
    m.apply(2, [(KIND_PUT, b"a", b"2")], 2, -1)
    assert m.sorted_keys() is first
    m.apply(3, [(KIND_PUT, b"b", b"2")], 2, -1)
    assert m.sorted_keys() == [b"a", b"b"]


def test_active_iterator_ignores_writes_after_its_seq() -> None:
    m = Memtable(1)
    m.apply(1, [(KIND_PUT, b"a", b"1"), (KIND_PUT, b"b", b"1")], 4, -1)
    it = m.iter(None, None, False, 1)
    assert next(it) == (b"a", 1, KIND_PUT, b"1")
    m.apply(2, [(KIND_PUT, b"b", b"2")], 2, 1)
    assert list(it) == [(b"b", 1, KIND_PUT, b"1")]

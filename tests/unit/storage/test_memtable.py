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


def _model_scan(model: dict[bytes, tuple[int, bytes]], start: bytes | None,
                reverse: bool) -> list[bytes]:
    keys = sorted(k for k in model if start is None or k >= start)
    return keys[::-1] if reverse else keys


def test_incremental_sorted_keys_and_entry_slices_match_a_model() -> None:
    """Interleaved batches, single puts, overwrites and scans: every scan sees exactly the
    model, whether it runs on the merged delta, a full re-sort or the sorted entry list."""
    import random

    from keeldb.storage import memtable as mt

    rng = random.Random(7)
    m = Memtable(1)
    model: dict[bytes, tuple[int, bytes]] = {}
    seq = 0
    paths = set()
    for step in range(400):
        seq += 1
        if step % 3 == 0:  # a batch, sometimes with a key twice
            keys = [b"%05d" % rng.randrange(3000) for _ in range(rng.choice((2, 20, 200)))]
            ops = [(KIND_PUT, k, b"v%d" % seq) for k in keys]
        else:
            ops = [(KIND_PUT, b"%05d" % rng.randrange(3000), b"v%d" % seq)]
        m.apply(seq, ops, sum(len(k) + len(v) for _, k, v in ops), -1)
        for _, k, v in ops:
            model[k] = (seq, v)
        # bursts of scans let the entry list get built; a write then must invalidate it
        for _ in range(rng.choice((1, 1, 60))):
            start = rng.choice((None, b"%05d" % rng.randrange(3000)))
            reverse = rng.random() < 0.3
            got = list(m.iter(start, None, reverse, seq) if not reverse
                       else m.iter(None, start, reverse, seq))
            if reverse:
                want = [k for k in _model_scan(model, None, True) if start is None or k < start]
            else:
                want = _model_scan(model, start, False)
            assert [e[0] for e in got] == want
            assert all(e[3] == model[e[0]][1] and e[1] == model[e[0]][0] for e in got)
            paths.add(m._entries is not None and m._entries[1] == m.seq_max)
        assert m.sorted_keys() == sorted(m.table)
    assert paths == {True, False}  # both the entry-list and the lookup path ran
    assert mt.ENTRIES_BUILD_SCANS_MIN > 1


def test_merged_sorted_list_is_a_new_list() -> None:
    """A scan keeps slicing the list it started with; merging new keys never mutates it."""
    m = Memtable(1)
    m.apply(1, [(KIND_PUT, b"%03d" % i, b"x") for i in range(0, 100, 2)], 200, -1)
    first = m.sorted_keys()
    snapshot = list(first)
    m.apply(2, [(KIND_PUT, b"001", b"y")], 4, -1)
    merged = m.sorted_keys()
    assert merged is not first and first == snapshot
    assert merged == sorted(m.table)
    it = m.iter(None, None, False, 2)
    assert next(it)[0] == b"000"
    m.apply(3, [(KIND_PUT, b"0005", b"z")], 5, -1)  # sorts between b"000" and b"001"
    assert [e[0] for e in it][:2] == [b"001", b"002"]  # the running scan is unaffected

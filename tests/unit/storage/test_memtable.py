"""Memtable: newest-version dict, snapshot-driven retention, ordering, accounting."""

from __future__ import annotations

import itertools
import random

import pytest

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


def test_scan_after_a_write_keeps_the_base_list_and_folds_only_past_the_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """New keys go to a small sorted `fresh` list; the big sorted list is neither copied nor
    merged per scan (the O(n) cost the MVCC read path paid) until `fresh` outgrows its bound."""
    from keeldb.storage import memtable as mt

    monkeypatch.setattr(mt, "FRESH_KEYS_MIN", 4)
    m = Memtable(1)
    m.apply(1, [(KIND_PUT, b"%04d" % i, b"x") for i in range(0, 400, 2)], 1000, -1)
    base, fresh = m.sorted_view()
    assert fresh == [] and len(base) == 200
    m.apply(2, [(KIND_PUT, b"0011", b"y")], 5, -1)
    m.apply(3, [(KIND_PUT, b"0011", b"z"), (KIND_PUT, b"0003", b"z")], 10, -1)  # overwrite
    base2, fresh2 = m.sorted_view()
    assert base2 is base and fresh2 == [b"0003", b"0011"]
    assert [e[0] for e in m.iter(b"0002", b"0013", False, 3)] == \
        [b"0002", b"0003", b"0004", b"0006", b"0008", b"0010", b"0011", b"0012"]
    for seq, key in enumerate((b"0001", b"0005", b"0007"), start=4):  # 5 > bound 4: fold
        m.apply(seq, [(KIND_PUT, key, b"w")], 5, -1)
    base3, fresh3 = m.sorted_view()
    assert base3 is not base and fresh3 == [] and base3 == sorted(m.table)
    assert fresh2 == [b"0003", b"0011"] and len(base) == 200  # published lists never change


def test_bounded_scans_over_base_and_fresh_match_a_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward and reverse scans with both bounds, tiny first chunks and ranges holding only
    fresh keys, while folds happen: always exactly the model, in order."""
    import random

    from keeldb.storage import memtable as mt

    monkeypatch.setattr(mt, "FRESH_KEYS_MIN", 16)
    rng = random.Random(11)
    m = Memtable(1)
    model: dict[bytes, bytes] = {}
    seen_fresh = 0
    for seq in range(1, 300):
        n_ops = rng.choice((1, 1, 3, 40))
        ops = [(KIND_PUT, b"%04d" % rng.randrange(2000), b"v%d" % seq) for _ in range(n_ops)]
        m.apply(seq, ops, 10 * n_ops, -1)
        model.update((k, v) for _, k, v in ops)
        seen_fresh += bool(m.sorted_view()[1])
        for _ in range(3):
            a, b = sorted((b"%04d" % rng.randrange(2000), b"%04d" % rng.randrange(2000)))
            start = rng.choice((None, a))
            end = rng.choice((None, b))
            reverse = rng.random() < 0.5
            want = sorted(k for k in model
                          if (start is None or k >= start) and (end is None or k < end))
            if reverse:
                want.reverse()
            got = list(m.iter(start, end, reverse, seq, first=rng.choice((1, 5, 128))))
            assert [e[0] for e in got] == want
            assert all(e[3] == model[e[0]] for e in got)
    assert seen_fresh > 50  # the two-list path ran, not only full merges


def test_first_chunk_hint_bounds_the_lookups() -> None:
    """A page reads only its share of a memtable: the first chunk maps `first` keys."""

    class CountingDict(dict):  # type: ignore[type-arg]
        lookups = 0

        def __getitem__(self, key: bytes) -> object:
            CountingDict.lookups += 1
            return super().__getitem__(key)

    m = Memtable(1)
    m.apply(1, [(KIND_PUT, b"%04d" % i, b"x") for i in range(1000)], 5000, -1)
    m.table = CountingDict(m.table)
    it = m.iter(b"0100", None, False, 1, first=20)
    assert [e[0] for e in itertools.islice(it, 20)] == [b"%04d" % i for i in range(100, 120)]
    assert CountingDict.lookups == 20


def test_apply_one_matches_a_batch_of_one() -> None:
    """The single put's memtable insert leaves the same state as `apply` of one op, with
    and without live snapshots (old versions kept or dropped alike)."""
    rng = random.Random("memtable:apply_one")
    one, batch = Memtable(wal_number=1), Memtable(wal_number=1)
    for seq in range(1, 600):
        key = b"k%03d" % rng.randrange(150)
        kind = KIND_DELETE if rng.random() < 0.1 else KIND_PUT
        value = b"" if kind == KIND_DELETE else b"v%d" % seq
        snapshot_max = rng.choice([-1, seq - 1, seq // 2])
        one.apply_one(seq, kind, key, value, len(key) + len(value), snapshot_max)
        batch.apply(seq, [(kind, key, value)], len(key) + len(value), snapshot_max)
        if seq % 97 == 0:
            assert one.sorted_keys() == batch.sorted_keys()
    assert one.table == batch.table and one.old == batch.old
    assert (one.bytes, one.versions, one.seq_min, one.seq_max) == \
        (batch.bytes, batch.versions, batch.seq_min, batch.seq_max)
    assert one.sorted_keys() == batch.sorted_keys() == sorted(one.table)
    one.freeze()
    with pytest.raises(AssertionError):
        one.apply_one(600, KIND_PUT, b"k", b"v", 2, -1)

"""Compaction planning and the merge/keep rules."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from keeldb import limits
from keeldb.storage import compaction as cp
from keeldb.storage.engine import KIND_DELETE, KIND_PUT, Options
from keeldb.storage.manifest import TableMeta
from keeldb.storage.merge import (
    VisibleMerger,
    compact_newest,
    compact_with_snapshots,
    keep_versions,
    merge_newest,
    merge_sources,
    visible_pairs,
)

OPTS = Options(l0_compaction_trigger=2, level1_bytes=1000, level_size_ratio=10)


def t(i: int, lo: bytes, hi: bytes, size: int = 100, seq: int = 1) -> TableMeta:
    return TableMeta(i, size, lo, hi, 1, 0, seq, seq)


def levels(**by_level: tuple[TableMeta, ...]) -> cp.Levels:
    out: list[tuple[TableMeta, ...]] = [()] * limits.level_count_max
    for name, tables in by_level.items():
        out[int(name[1:])] = tables
    return tuple(out)


def test_nothing_to_do_below_triggers() -> None:
    assert cp.pick_compaction(levels(L0=(t(1, b"a", b"c"),)), OPTS, {}) is None


def test_l0_trigger_takes_all_l0_and_overlapping_l1() -> None:
    lv = levels(L0=(t(5, b"b", b"d", seq=9), t(4, b"a", b"c", seq=8)),
                L1=(t(1, b"a", b"a"), t(2, b"c", b"e"), t(3, b"x", b"z")))
    plan = cp.pick_compaction(lv, OPTS, {})
    assert plan is not None and plan.level == 0 and not plan.trivial_move
    assert [x.id for x in plan.inputs] == [5, 4]
    assert [x.id for x in plan.overlaps] == [1, 2]
    assert plan.bottom
    out = cp.apply_compaction(lv, plan, (t(6, b"a", b"e"),))
    assert [x.id for x in out[1]] == [6, 3] and out[0] == ()


def test_level_over_target_round_robin_and_trivial_move() -> None:
    lv = levels(L1=(t(1, b"a", b"b", 600), t(2, b"c", b"d", 600)),
                L2=(t(3, b"c", b"c"),), L3=(t(4, b"a", b"z"),))
    plan = cp.pick_compaction(lv, OPTS, {})
    assert plan is not None and plan.level == 1 and [x.id for x in plan.inputs] == [1]
    assert plan.trivial_move and not plan.bottom  # L3 overlaps the range
    plan2 = cp.pick_compaction(lv, OPTS, {1: b"b"})
    assert plan2 is not None and [x.id for x in plan2.inputs] == [2]
    assert [x.id for x in plan2.overlaps] == [3] and not plan2.trivial_move


def test_force_merges_upper_levels_down() -> None:
    lv = levels(L0=(t(1, b"a", b"b"),), L2=(t(2, b"a", b"z"),))
    plan = cp.pick_compaction(lv, OPTS, {}, force=True)
    assert plan is not None and plan.level == 0
    assert cp.pick_compaction(levels(L3=(t(2, b"a", b"z"),)), OPTS, {}, force=True) is None


def test_scores() -> None:
    lv = levels(L0=(t(1, b"a", b"b"),) * 3, L1=(t(2, b"a", b"b", 2500),))
    s = cp.scores(lv, OPTS)
    assert s[0] == 1.5 and s[1] == 2.5 and s[-1] == 0.0


E = tuple[bytes, int, int, bytes]


def test_compact_newest_keeps_one_version_and_drops_bottom_tombstones() -> None:
    merged: list[E] = [(b"a", 1, KIND_PUT, b"x"), (b"a", 3, KIND_PUT, b"y"),
                       (b"b", 2, KIND_DELETE, b""), (b"c", 4, KIND_PUT, b"z")]
    assert [e for c in compact_newest(merged, False, 10) for e in c] == \
        [(b"a", 3, KIND_PUT, b"y"), (b"b", 2, KIND_DELETE, b""), (b"c", 4, KIND_PUT, b"z")]
    assert [e for c in compact_newest(merged, True, 10) for e in c] == \
        [(b"a", 3, KIND_PUT, b"y"), (b"c", 4, KIND_PUT, b"z")]
    chunks = list(compact_newest(merged, False, 1))
    assert [len(c) for c in chunks] == [1, 1, 1]


def test_keep_versions_for_snapshots() -> None:
    versions: list[E] = [(b"k", 9, KIND_DELETE, b""), (b"k", 6, KIND_PUT, b"v6"),
                         (b"k", 4, KIND_PUT, b"v4"), (b"k", 2, KIND_PUT, b"v2")]
    # snapshot 7 sees v6; snapshot 5 sees v4; nobody sees v2
    assert keep_versions(versions, [5, 7], False) == versions[:3]
    # no snapshot between: only the newest; at the bottom the lone tombstone goes
    assert keep_versions(versions, [], False) == versions[:1]
    assert keep_versions(versions, [], True) == []
    # a snapshot at 9 sees the tombstone: dropping it with everything below is still right
    assert keep_versions(versions, [9], True) == []
    assert keep_versions(versions, [3], True) == [versions[0], versions[3]]


def test_compact_with_snapshots_groups_keys() -> None:
    merged: list[E] = [(b"a", 5, KIND_PUT, b"new"), (b"a", 1, KIND_PUT, b"old"),
                       (b"b", 2, KIND_PUT, b"b")]
    out = [e for c in compact_with_snapshots(merged, [3], True, 1) for e in c]
    assert out == merged


def test_visible_pairs_picks_newest_visible_per_key() -> None:
    merged: list[E] = [(b"a", 5, KIND_PUT, b"5"), (b"a", 3, KIND_PUT, b"3"),
                       (b"b", 4, KIND_DELETE, b""), (b"b", 1, KIND_PUT, b"1"),
                       (b"c", 9, KIND_PUT, b"9")]
    assert list(visible_pairs(merged, 10, 100)) == [(b"a", b"5"), (b"c", b"9")]
    assert list(visible_pairs(merged, 3, 100)) == [(b"a", b"3"), (b"b", b"1")]
    assert list(visible_pairs(merged, 10, 1)) == [(b"a", b"5")]


# --- the fast chunked paths agree with the simple generators ----------------------------------

SOURCE = st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f"]),
                            st.integers(1, 60), st.sampled_from([KIND_PUT, KIND_DELETE])),
                  max_size=25)


def _sources(raw: list[list[tuple[bytes, int, int]]]) -> list[list[E]]:
    """Sorted sources (key asc, seq desc) with globally unique seqs."""
    seen: set[int] = set()
    out = []
    for src in raw:
        entries = []
        for key, seq, kind in src:
            if seq not in seen:
                seen.add(seq)
                entries.append((key, seq, kind, b"v%d" % seq if kind else b""))
        out.append(sorted(entries, key=lambda e: (e[0], -e[1])))
    return out


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(SOURCE, min_size=1, max_size=4), bottom=st.booleans(),
       chunk=st.integers(1, 6))
def test_merge_newest_equals_heap_merge(raw: list[list[tuple[bytes, int, int]]], bottom: bool,
                                        chunk: int) -> None:
    srcs = _sources(raw)
    expected = [e for c in compact_newest(merge_sources([iter(s) for s in srcs]), bottom, 100)
                for e in c]
    got = [e for c in merge_newest([iter(s) for s in srcs], bottom, chunk) for e in c]
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(SOURCE, min_size=1, max_size=4), seq=st.integers(0, 70),
       reverse=st.booleans(), sizes=st.lists(st.integers(1, 5), min_size=1, max_size=8))
def test_visible_merger_equals_visible_pairs(raw: list[list[tuple[bytes, int, int]]], seq: int,
                                             reverse: bool, sizes: list[int]) -> None:
    srcs = _sources(raw)
    if reverse:
        srcs = [s[::-1] for s in srcs]
    expected = list(visible_pairs(merge_sources([iter(s) for s in srcs], reverse), seq, 10**6))
    merger = VisibleMerger([iter(s) for s in srcs], seq, reverse)
    got: list[tuple[bytes, bytes]] = []
    i = 0
    while not merger.exhausted:
        part = merger.take(sizes[i % len(sizes)])
        assert len(part) <= sizes[i % len(sizes)]
        got += part
        i += 1
    assert got == expected

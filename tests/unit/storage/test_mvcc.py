"""storage/mvcc.py: version encoding, visibility at a timestamp, garbage collection."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import keeldb
from keeldb import limits
from keeldb.errors import InvalidKeyError
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage import mvcc
from keeldb.storage.engine import Options
from keeldb.storage.lsm import LsmEngine
from keeldb.storage.memory import MemoryEngine

TINY = dict(memtable_bytes=1024, block_bytes=128, table_bytes=256, level1_bytes=256,
            l0_compaction_trigger=2, l0_slowdown_files=6, l0_stop_files=8, level_size_ratio=3,
            block_cache_bytes=16 * 1024, table_cache_files=8)


class SteppedLsm:
    """An LsmEngine on MemoryDisk that runs its flush/compaction steps after every write."""

    def __init__(self) -> None:
        self.engine = LsmEngine(MemoryDisk(), Options(**TINY))  # type: ignore[arg-type]

    def get(self, key: bytes) -> bytes | None:
        return self.engine.get(key)

    def scan(self, start: bytes | None = None, end: bytes | None = None, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        return self.engine.scan(start, end, reverse, limit)

    def write(self, ops: list[tuple[int, bytes, bytes]]) -> int:
        seq = self.engine.write(ops)
        while self.engine.flush_step() or self.engine.compact_step():
            pass
        return seq


@pytest.fixture(params=["memory", "lsm", "embedded"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryEngine()
    elif request.param == "lsm":
        yield SteppedLsm()
    else:
        db = keeldb.open(tmp_path / "db", sync="never")
        yield db.txn_store  # the unfiltered view: plain db.scan hides the MVCC keyspace
        db.close()


keys = st.binary(min_size=1, max_size=6)


@given(st.lists(st.tuples(keys, st.integers(0, mvcc.TS_MAX)), min_size=1, max_size=40))
def test_engine_order_is_key_ascending_then_newest_first(pairs: list[tuple[bytes, int]]) -> None:
    encoded = sorted(mvcc.version_key(k, ts) for k, ts in set(pairs))
    expected = sorted(set(pairs), key=lambda p: (p[0], -p[1]))
    assert [(v.key, v.ts) for v in (mvcc.decode_version(e, b"\x00") for e in encoded)] \
        == expected


@given(keys, keys)
def test_key_prefixes_never_overlap(a: bytes, b: bytes) -> None:
    if a != b:
        assert not mvcc.key_prefix(a).startswith(mvcc.key_prefix(b))
    assert mvcc.unescape(mvcc.escape(a)) == a


def test_values_round_trip_and_tombstones() -> None:
    _, key, value = mvcc.put_op(b"k\x00", 7, b"v")
    assert mvcc.decode_version(key, value) == mvcc.Version(b"k\x00", 7, b"v")
    _, key, value = mvcc.put_op(b"k", 8, None)
    assert mvcc.decode_version(key, value).value is None


def test_key_too_long_after_encoding_is_refused() -> None:
    mvcc.check_user_key(b"a" * (limits.key_bytes_max - mvcc.KEY_OVERHEAD))
    with pytest.raises(InvalidKeyError, match="key_bytes_max"):
        mvcc.check_user_key(b"\x00" * (limits.key_bytes_max // 2))


def _model_at(history: list[tuple[int, bytes, bytes | None]], ts: int) -> dict[bytes, bytes]:
    state: dict[bytes, bytes | None] = {}
    for wts, key, value in history:
        if wts <= ts:
            state[key] = value
    return {k: v for k, v in sorted(state.items()) if v is not None}


def _write_history(engine: Any, seed: int, commits: int) -> list[tuple[int, bytes, bytes | None]]:
    rng = random.Random(f"{seed}:mvcc")
    history: list[tuple[int, bytes, bytes | None]] = []
    for ts in range(1, commits + 1):
        batch = []
        for key in rng.sample([b"a", b"a\x00", b"b", b"ba", b"c", b"d\xff"], rng.randint(1, 3)):
            value = None if rng.random() < 0.3 else f"{key!r}@{ts}".encode()
            batch.append(mvcc.put_op(key, ts, value))
            history.append((ts, key, value))
        batch.append(mvcc.meta_op(ts))
        engine.write(batch)
    return history


@pytest.mark.parametrize("seed", range(3))
def test_reads_at_every_timestamp_match_a_model(engine: Any, seed: int) -> None:
    history = _write_history(engine, seed, commits=25)
    assert mvcc.last_ts(engine) == 25
    for ts in range(0, 27):
        want = _model_at(history, ts)
        assert dict(mvcc.scan_at(engine, ts)) == want
        assert list(mvcc.scan_at(engine, ts, reverse=True)) == list(reversed(want.items()))
        assert list(mvcc.scan_at(engine, ts, b"a\x00", b"c")) == [
            (k, v) for k, v in want.items() if b"a\x00" <= k < b"c"]
        for key in (b"a", b"a\x00", b"b", b"ba", b"c", b"d\xff", b"zz"):
            assert mvcc.get_at(engine, key, ts) == want.get(key)


@pytest.mark.parametrize("horizon", [0, 5, 13, 30])
def test_gc_keeps_every_read_at_or_after_the_horizon(engine: Any, horizon: int) -> None:
    history = _write_history(engine, 7, commits=30)
    before = {ts: dict(mvcc.scan_at(engine, ts)) for ts in range(horizon, 31)}
    cursor: bytes | None = None
    steps = 0
    while True:  # tiny steps, so the cursor and whole-key rule are exercised
        step = mvcc.gc_step(engine, horizon, cursor, entries_max=3)
        if step.ops:
            engine.write(step.ops)
        steps += 1
        cursor = step.next_start
        if cursor is None:
            break
    assert steps > 1
    for ts, want in before.items():
        assert dict(mvcc.scan_at(engine, ts)) == want
    for key in {k for _, k, _ in history}:
        stored = mvcc.versions(engine, key)
        old = [v for v in stored if v.ts <= horizon]
        assert len(old) <= 1, f"{key!r} keeps {len(old)} versions at or below the horizon"
        assert all(v.value is not None for v in old), "a tombstone below the horizon stayed"
    if horizon >= 30:
        total = sum(len(mvcc.versions(engine, k)) for k in {k for _, k, _ in history})
        assert total == len(_model_at(history, 30))


def test_gc_of_one_huge_key_is_bounded_and_converges() -> None:
    engine = MemoryEngine()
    for ts in range(1, 3 * limits.mvcc_gc_step_entries):
        engine.write([mvcc.put_op(b"hot", ts, str(ts).encode())])
    last = 3 * limits.mvcc_gc_step_entries - 1
    step = mvcc.gc_step(engine, last, entries_max=1)
    assert step.next_start == b"hot" and 0 < len(step.ops) < last
    engine.write(step.ops)
    while step.next_start is not None:
        step = mvcc.gc_step(engine, last, step.next_start, entries_max=1)
        engine.write(step.ops)
    assert [v.ts for v in mvcc.versions(engine, b"hot")] == [last]


def test_gc_never_drops_a_tombstone_without_what_it_hides() -> None:
    engine = MemoryEngine()
    engine.write([mvcc.put_op(b"k", 1, b"old"), mvcc.put_op(b"k", 2, None)])
    plan = mvcc.gc_step(engine, horizon=1)
    assert plan.ops == []  # at horizon 1 the value is still what readers at 1 see
    plan = mvcc.gc_step(engine, horizon=2)
    assert sorted(op[1] for op in plan.ops) == sorted(
        [mvcc.version_key(b"k", 1), mvcc.version_key(b"k", 2)])

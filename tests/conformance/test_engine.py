"""The engine conformance suite: every engine answers exactly like the reference engine.

Parametrised over `engine_harness.ENGINE_KINDS` (memory, LSM on MemoryDisk with tiny sizes,
LSM on the real disk, the embedded DB). The hypothesis state machine at the end drives random
puts, deletes, batches, scans, snapshots, reopens, flushes and compactions against the
memory engine and compares every answer.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from keeldb import limits
from keeldb.errors import (
    ClosedError,
    InvalidKeyError,
    InvalidValueError,
    LimitExceededError,
    UsageError,
)
from keeldb.storage.engine import KIND_DELETE, KIND_PUT, Stats
from keeldb.storage.memory import MemoryEngine
from tests.conformance.engine_harness import ENGINE_KINDS, Harness


@pytest.fixture(params=ENGINE_KINDS)
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path)
    yield harness
    harness.close()


def k(i: int) -> bytes:
    return b"key%05d" % i


def test_put_get_delete(h: Harness) -> None:
    assert h.engine.get(b"a") is None
    h.put(b"a", b"1")
    assert h.engine.get(b"a") == b"1"
    h.put(b"a", b"2")
    assert h.engine.get(b"a") == b"2"
    h.delete(b"a")
    assert h.engine.get(b"a") is None
    h.put(b"empty", b"")
    assert h.engine.get(b"empty") == b""


def test_many_keys_survive_flush_compaction_and_reopen(h: Harness) -> None:
    for i in range(600):
        h.put(k(i), b"v%d" % i * 5)
    for i in range(0, 600, 3):
        h.delete(k(i))
    for i in range(0, 600, 5):
        h.put(k(i), b"new%d" % i)
    expected = {}
    for i in range(600):
        if i % 5 == 0:
            expected[k(i)] = b"new%d" % i
        elif i % 3:
            expected[k(i)] = b"v%d" % i * 5
    for step in ("flush", "compact", "reopen"):
        getattr(h, step)()
        assert dict(h.engine.scan()) == expected, step
        assert all(h.engine.get(key) == value for key, value in expected.items()), step
        assert h.engine.get(k(3)) is None


def test_batch_is_atomic_and_last_op_wins(h: Harness) -> None:
    h.write([(KIND_PUT, b"x", b"1"), (KIND_PUT, b"y", b"2"), (KIND_PUT, b"x", b"3"),
             (KIND_DELETE, b"y", b"")])
    assert h.engine.get(b"x") == b"3"
    assert h.engine.get(b"y") is None
    snap = h.engine.snapshot()
    h.write([(KIND_PUT, b"a", b"A"), (KIND_PUT, b"b", b"B")])
    assert snap.get(b"a") is None and snap.get(b"b") is None
    assert h.engine.get(b"a") == b"A" and h.engine.get(b"b") == b"B"
    snap.close()


def test_scan_bounds_reverse_and_limit(h: Harness) -> None:
    for i in range(0, 100, 2):
        h.put(k(i), b"%d" % i)
    h.flush()
    for i in range(1, 100, 2):
        h.put(k(i), b"%d" % i)
    h.delete(k(50))
    keys = [k(i) for i in range(100) if i != 50]
    assert [key for key, _ in h.engine.scan()] == keys
    assert [key for key, _ in h.engine.scan(reverse=True)] == keys[::-1]
    assert [key for key, _ in h.engine.scan(k(10), k(20))] == keys[10:20]
    assert [key for key, _ in h.engine.scan(k(10), k(20), reverse=True)] == keys[10:20][::-1]
    assert [key for key, _ in h.engine.scan(start=k(95))] == keys[94:]
    assert [key for key, _ in h.engine.scan(end=k(3), reverse=True)] == keys[:3][::-1]
    assert [key for key, _ in h.engine.scan(limit=7)] == keys[:7]
    assert [key for key, _ in h.engine.scan(reverse=True, limit=3)] == keys[-3:][::-1]
    assert list(h.engine.scan(limit=0)) == []
    assert list(h.engine.scan(k(20), k(10))) == []
    assert list(h.engine.scan(k(20), k(20))) == []
    assert list(h.engine.scan(b"zzz")) == []
    assert dict(h.engine.scan(k(48), k(52))) == {k(48): b"48", k(49): b"49", k(51): b"51"}


def test_snapshot_sees_a_fixed_state_across_flush_and_compaction(h: Harness) -> None:
    for i in range(200):
        h.put(k(i), b"old")
    snap = h.engine.snapshot()
    for i in range(200):
        if i % 2:
            h.delete(k(i))
        else:
            h.put(k(i), b"new")
    h.flush()
    h.compact()
    assert snap.get(k(1)) == b"old" and snap.get(k(2)) == b"old"
    assert dict(snap.scan()) == {k(i): b"old" for i in range(200)}
    assert len(list(snap.scan(reverse=True, limit=10))) == 10
    assert h.engine.get(k(1)) is None and h.engine.get(k(2)) == b"new"
    snap.close()
    with pytest.raises(ClosedError):
        snap.get(k(1))
    h.compact()
    assert dict(h.engine.scan()) == {k(i): b"new" for i in range(0, 200, 2)}


def test_tombstone_kept_under_live_snapshot_through_bottom_compaction(h: Harness) -> None:
    h.put(b"t", b"alive")
    h.compact()
    snap = h.engine.snapshot()
    h.delete(b"t")
    h.compact()  # the tombstone reaches the bottom level while the snapshot lives
    assert h.engine.get(b"t") is None
    assert snap.get(b"t") == b"alive"
    assert list(snap.scan()) == [(b"t", b"alive")]
    snap.close()
    h.compact()
    assert h.engine.get(b"t") is None and list(h.engine.scan()) == []


def test_scan_is_consistent_while_writes_happen(h: Harness) -> None:
    for i in range(50):
        h.put(k(i), b"a")
    it = h.engine.scan()
    first = next(it)
    for i in range(50):
        h.put(k(i), b"b")
    h.flush()
    rest = list(it)
    assert [first] + rest == [(k(i), b"a") for i in range(50)]


def test_bad_keys_and_values_give_typed_errors(h: Harness) -> None:
    with pytest.raises(InvalidKeyError, match="bytes"):
        h.put("text", b"v")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match="empty"):
        h.put(b"", b"v")
    with pytest.raises(InvalidKeyError, match="key_bytes_max"):
        h.put(b"k" * (limits.key_bytes_max + 1), b"v")
    with pytest.raises(InvalidValueError, match="bytes"):
        h.put(b"k", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        h.engine.get(None)
    with pytest.raises(UsageError):
        list(h.engine.scan(limit=-1))
    with pytest.raises(LimitExceededError):
        h.write([(KIND_PUT, b"k", b"v")] * (limits.batch_ops_max + 1))
    assert h.engine.get(b"k") is None  # nothing of a refused batch was applied


def test_value_over_limit_is_refused(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "value_bytes_max", 1000)
    with pytest.raises(InvalidValueError, match="value_bytes_max=1000"):
        h.put(b"k", b"v" * 1001)
    h.put(b"k", b"v" * 1000)
    assert h.engine.get(b"k") == b"v" * 1000


def test_large_values_round_trip(h: Harness) -> None:
    big = bytes(range(256)) * 1000
    h.put(b"big", big)
    h.flush()
    h.compact()
    h.reopen()
    assert h.engine.get(b"big") == big
    assert list(h.engine.scan()) == [(b"big", big)]


def test_use_after_close_is_a_typed_error(h: Harness) -> None:
    h.put(b"a", b"1")
    snap = h.engine.snapshot()
    h.engine.close()
    with pytest.raises(ClosedError):
        h.engine.get(b"a")
    with pytest.raises(ClosedError):
        h.put(b"a", b"2")
    with pytest.raises(ClosedError):
        h.engine.scan()
    with pytest.raises(ClosedError):
        snap.get(b"a")
    h.open()  # the fixture closes it again


def test_stats_and_verify(h: Harness) -> None:
    for i in range(300):
        h.put(k(i), b"v" * 50)
    h.flush()
    for i in range(300):
        assert h.engine.get(k(i)) == b"v" * 50
    h.engine.get(b"absent")
    stats = h.engine.stats()
    assert isinstance(stats, Stats)
    assert stats.last_seq >= 300
    assert stats.user_bytes_written > 300 * 50 or h.kind == "embedded"
    assert stats.reads >= 300 or h.kind == "embedded"
    report = h.engine.verify()
    assert report.ok, report.problems
    if h.kind != "memory":
        assert stats.flushes >= 1
        assert sum(level.files for level in stats.levels) >= 1
        assert stats.write_amplification > 1.0
        assert stats.disk_bytes > 0
        assert report.files_checked >= 2 and report.blocks_checked >= 1


# --- the stateful model test ------------------------------------------------------------------

KEYS = st.sampled_from([b"k%02d" % i for i in range(24)])
VALUES = st.binary(max_size=40)
BOUND = st.none() | KEYS


class EngineMachine(RuleBasedStateMachine):
    """Random operations against one engine kind and the oracle; every answer compared."""

    kind = "lsm-memdisk"
    snapshots = Bundle("snapshots")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="keeldb-conf-"))
        self.h = Harness(self.kind, self.tmp)
        self.oracle = MemoryEngine()
        self.open_snaps: list[tuple[object, object]] = []

    def teardown(self) -> None:
        self.h.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(key=KEYS, value=VALUES)
    def put(self, key: bytes, value: bytes) -> None:
        self.h.put(key, value)
        self.oracle.put(key, value)

    @rule(key=KEYS)
    def delete(self, key: bytes) -> None:
        self.h.delete(key)
        self.oracle.delete(key)

    @rule(ops=st.lists(st.tuples(st.sampled_from([KIND_PUT, KIND_DELETE]), KEYS, VALUES),
                       min_size=1, max_size=12))
    def batch(self, ops: list[tuple[int, bytes, bytes]]) -> None:
        ops = [(kind, key, value if kind == KIND_PUT else b"") for kind, key, value in ops]
        self.h.write(ops)
        self.oracle.write(list(ops))

    @rule(key=KEYS)
    def get(self, key: bytes) -> None:
        assert self.h.engine.get(key) == self.oracle.get(key)

    @rule(start=BOUND, end=BOUND, reverse=st.booleans(),
          limit=st.none() | st.integers(min_value=0, max_value=10))
    def scan(self, start: bytes | None, end: bytes | None, reverse: bool,
             limit: int | None) -> None:
        got = list(self.h.engine.scan(start, end, reverse, limit))
        assert got == list(self.oracle.scan(start, end, reverse, limit))

    @rule(target=snapshots)
    def take_snapshot(self) -> tuple[object, object]:
        pair = (self.h.engine.snapshot(), self.oracle.snapshot())
        self.open_snaps.append(pair)
        return pair

    @rule(pair=snapshots, key=KEYS, start=BOUND, reverse=st.booleans())
    def read_snapshot(self, pair: tuple[object, object], key: bytes, start: bytes | None,
                      reverse: bool) -> None:
        if pair not in self.open_snaps:
            return
        mine, theirs = pair
        assert mine.get(key) == theirs.get(key)  # type: ignore[attr-defined]
        got = list(mine.scan(start, None, reverse))  # type: ignore[attr-defined]
        assert got == list(theirs.scan(start, None, reverse))  # type: ignore[attr-defined]

    @rule(pair=consumes(snapshots))
    def release_snapshot(self, pair: tuple[object, object]) -> None:
        if pair in self.open_snaps:
            self.open_snaps.remove(pair)
            for snap in pair:
                snap.close()  # type: ignore[attr-defined]

    @rule()
    def flush(self) -> None:
        self.h.flush()

    @rule()
    def compact(self) -> None:
        self.h.compact()

    @precondition(lambda self: not self.open_snaps)
    @rule()
    def reopen(self) -> None:
        self.h.reopen()

    @invariant()
    def last_key_agrees(self) -> None:
        assert self.h.engine.get(b"k00") == self.oracle.get(b"k00")


def _machine_for(kind: str, examples: int, steps: int) -> Any:
    machine = type(f"EngineMachine_{kind.replace('-', '_')}", (EngineMachine,), {"kind": kind})
    machine.TestCase.settings = settings(  # type: ignore[attr-defined]
        max_examples=examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    return machine


TestMachineLsmMemdisk = _machine_for("lsm-memdisk", 60, 60).TestCase
TestMachineLsmRealdisk = _machine_for("lsm-realdisk", 15, 40).TestCase
TestMachineEmbedded = _machine_for("embedded", 10, 30).TestCase
TestMachineMemory = _machine_for("memory", 10, 30).TestCase

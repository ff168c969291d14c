"""The history checkers on small hand-written histories with known verdicts."""

from __future__ import annotations

from typing import Any

from keeldb.check.history import Op
from keeldb.testing.checkers import bank_total, linearizability, lost_appends, lost_writes


def h(*rows: tuple[Any, str, str, Any, Any, int]) -> list[Op]:
    """Rows of (process, type, f, key, value, time)."""
    return [Op(i, p, t, f, k, v, time) for i, (p, t, f, k, v, time) in enumerate(rows)]


def test_read_of_a_value_overwritten_by_an_acknowledged_write_is_a_lost_write() -> None:
    hist = h((0, "invoke", "write", "x", 1, 0), (0, "ok", "write", "x", 1, 1),
             (0, "invoke", "write", "x", 2, 2), (0, "ok", "write", "x", 2, 3),
             (1, "invoke", "read", "x", None, 4), (1, "ok", "read", "x", 1, 5))
    (v,) = lost_writes(hist)
    assert v.checker == "lost-write" and "acknowledged write lost" in v.message
    assert v.ops == (4, 0, 2)
    assert linearizability(hist)  # the linearizability checker agrees


def test_concurrent_or_unknown_writes_are_not_lost() -> None:
    # write 2 overlaps the read: reading 1 is fine
    concurrent = h((0, "invoke", "write", "x", 1, 0), (0, "ok", "write", "x", 1, 1),
                   (0, "invoke", "write", "x", 2, 2), (1, "invoke", "read", "x", None, 3),
                   (0, "ok", "write", "x", 2, 4), (1, "ok", "read", "x", 1, 5))
    assert lost_writes(concurrent) == [] and linearizability(concurrent) == []
    # write 1 was info (unknown): it may land any time, even after write 2
    unknown = h((0, "invoke", "write", "x", 1, 0), (0, "info", "write", "x", 1, 1),
                (2, "invoke", "write", "x", 2, 2), (2, "ok", "write", "x", 2, 3),
                (1, "invoke", "read", "x", None, 4), (1, "ok", "read", "x", 1, 5))
    assert lost_writes(unknown) == []


def test_nil_read_after_an_ack_and_garbage_reads_are_flagged() -> None:
    nil = h((0, "invoke", "write", "x", 1, 0), (0, "ok", "write", "x", 1, 1),
            (1, "invoke", "read", "x", None, 2), (1, "ok", "read", "x", None, 3))
    assert "saw no value" in lost_writes(nil)[0].message
    garbage = h((0, "invoke", "write", "x", 1, 0), (0, "ok", "write", "x", 1, 1),
                (1, "invoke", "read", "x", None, 2), (1, "ok", "read", "x", 99, 3))
    assert "no operation wrote" in lost_writes(garbage)[0].message


def test_cas_counts_as_a_write_and_failed_cas_does_not() -> None:
    hist = h((0, "invoke", "write", "x", 1, 0), (0, "ok", "write", "x", 1, 1),
             (0, "invoke", "cas", "x", [1, 2], 2), (0, "ok", "cas", "x", [1, 2], 3),
             (0, "invoke", "cas", "x", [9, 3], 4), (0, "fail", "cas", "x", [9, 3], 5),
             (1, "invoke", "read", "x", None, 6), (1, "ok", "read", "x", 2, 7))
    assert lost_writes(hist) == []
    stale = [*hist[:6], Op(6, 1, "invoke", "read", "x", None, 6), Op(7, 1, "ok", "read", "x", 1, 7)]
    assert lost_writes(stale)


def test_lost_appends() -> None:
    def txn(p: int, t: str, ops: list[list[Any]], time: int) -> tuple[Any, ...]:
        return (p, t, "txn", None, ops, time)

    ok = h(txn(0, "invoke", [["append", "l", 1]], 0), txn(0, "ok", [["append", "l", 1]], 1),
           txn(1, "invoke", [["r", "l", None]], 2), txn(1, "ok", [["r", "l", [1]]], 3))
    assert lost_appends(ok) == []
    lost = h(txn(0, "invoke", [["append", "l", 1]], 0), txn(0, "ok", [["append", "l", 1]], 1),
             txn(1, "invoke", [["r", "l", None]], 2), txn(1, "ok", [["r", "l", []]], 3))
    (v,) = lost_appends(lost)
    assert v.checker == "lost-append" and v.ops == (0, 2)


def test_bank_total() -> None:
    good = [Op(0, 0, "ok", "read-accounts", None, {"a": 70, "b": 130})]
    bad = [Op(0, 0, "ok", "read-accounts", None, {"a": 70, "b": 100})]
    assert bank_total(good, 200) == []
    assert "sums to 170" in bank_total(bad, 200)[0].message

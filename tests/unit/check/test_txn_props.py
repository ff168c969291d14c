"""Property tests of the transactional checker on generated list-append histories.

1. A serial execution of random transactions (appends of unique elements, reads returning
   the list as it is at that point), ending with one transaction that reads every key, then
   overlapped where that cannot reorder it: completions stay in serial order and each
   invocation moves earlier by a random amount (never past its own completion). The serial
   order is then a legal order at every level, including strict serializability: the
   checker must say valid for all of them, and infer at least one dependency.
2. The same history with one earlier read's list tampered (an element dropped from inside
   it, or two elements swapped) no longer agrees with the final read: the checker must say
   invalid at read committed and above.
3. A fully serial history (no overlap) with one read made stale (its last element dropped,
   after that element's writer completed) must be invalid under strict serializability.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keeldb.check.history import Op
from keeldb.check.txn import transactions
from keeldb.check.txn_anomalies import LEVELS

KEYS = ("x", "y", "z")

Mop = list[Any]


@st.composite
def serial_txns(draw: st.DrawFn) -> list[list[Mop]]:
    """Transactions in serial order with reads filled in; the last one reads every key."""
    state: dict[str, list[int]] = {k: [] for k in KEYS}
    # One append up front: a history of reads alone has no dependency to check ("unknown").
    first = draw(st.sampled_from(KEYS))
    state[first].append(1)
    counter = 1
    txns: list[list[Mop]] = [[["append", first, 1]]]
    for _ in range(draw(st.integers(1, 12))):
        txn: list[Mop] = []
        for _ in range(draw(st.integers(1, 4))):
            key = draw(st.sampled_from(KEYS))
            if draw(st.booleans()):
                counter += 1
                state[key].append(counter)
                txn.append(["append", key, counter])
            else:
                txn.append(["r", key, list(state[key]) or None])
        txns.append(txn)
    txns.append([["r", k, list(state[k]) or None] for k in KEYS])
    return txns


def to_history(txns: list[list[Mop]], lags: list[int]) -> list[Op]:
    """Completions in serial order; invocation i just before completion i - lags[i]."""
    events: list[tuple[tuple[int, int, int], str, int]] = []
    for i, _ in enumerate(txns):
        start = max(0, i - lags[i % len(lags)]) if lags else i
        events.append(((start, 0, i), "invoke", i))
        events.append(((i, 1, i), "ok", i))
    events.sort()
    free: list[int] = []
    next_process = 0
    process_of: dict[int, int] = {}
    ops: list[Op] = []
    for _, kind, i in events:
        if kind == "invoke":
            if free:
                process_of[i] = free.pop()
            else:
                process_of[i] = next_process
                next_process += 1
            value = [[f, k, None if f == "r" else v] for f, k, v in txns[i]]
        else:
            free.append(process_of[i])
            value = txns[i]
        ops.append(Op(len(ops), process_of[i], kind, "txn", value=value))
    return ops


@settings(max_examples=60, deadline=None)
@given(serial_txns(), st.lists(st.integers(0, 3), min_size=1, max_size=8))
def test_serial_histories_are_valid_at_every_level(txns: list[list[Mop]],
                                                   lags: list[int]) -> None:
    history = to_history(txns, lags)
    for level in LEVELS:
        result = transactions(history, level)
        assert result.valid, f"{level}:\n{result.explanation}"
    assert transactions(history, "strict-serializable").details["edge_count"] > 0


@st.composite
def tampered(draw: st.DrawFn) -> tuple[list[list[Mop]], list[list[Mop]]]:
    """A serial execution and a copy with one non-final read of 2+ elements tampered."""
    txns = draw(serial_txns())
    spots = [(i, j) for i, txn in enumerate(txns[:-1]) for j, (f, _, v) in enumerate(txn)
             if f == "r" and v and len(v) >= 2]
    if not spots:  # make one: a read of a key with two appends
        base = max((v for t in txns for f, _, v in t if f == "append"), default=0)
        txns.insert(0, [["append", "w", base + 1], ["append", "w", base + 2],
                        ["r", "w", [base + 1, base + 2]]])
        txns[-1].append(["r", "w", [base + 1, base + 2]])
        spots = [(0, 2)]
    i, j = draw(st.sampled_from(spots))
    bad = [[list(m) for m in t] for t in txns]
    read = list(bad[i][j][2])
    if draw(st.booleans()):
        del read[draw(st.integers(0, len(read) - 2))]  # drop one, not the last
    else:
        a = draw(st.integers(0, len(read) - 2))
        read[a], read[a + 1] = read[a + 1], read[a]
    bad[i][j][2] = read
    return txns, bad


@settings(max_examples=60, deadline=None)
@given(tampered(), st.lists(st.integers(0, 3), min_size=1, max_size=8))
def test_one_tampered_read_is_invalid(pair: tuple[list[list[Mop]], list[list[Mop]]],
                                      lags: list[int]) -> None:
    good, bad = pair
    assert transactions(to_history(good, lags), "strict-serializable").valid
    history = to_history(bad, lags)
    for level in LEVELS[1:]:
        result = transactions(history, level)
        assert not result.valid and not result.unknown, level
        assert result.details["not"], result.details


@st.composite
def stale(draw: st.DrawFn) -> list[list[Mop]]:
    """A serial execution with one read missing the latest element(s) of its key."""
    txns = draw(serial_txns())
    # Reads of keys their own transaction does not append to: every element they hold was
    # appended by a transaction that completed before this one began (serial history).
    spots = [(i, j) for i, txn in enumerate(txns) for j, (f, k, v) in enumerate(txn)
             if f == "r" and v and not any(g == "append" and x == k for g, x, _ in txn)]
    if not spots:
        txns.insert(0, [["append", "w", 10_000]])
        txns.append([["r", "w", [10_000]]])
        spots = [(len(txns) - 1, 0)]
    i, j = draw(st.sampled_from(spots))
    read = txns[i][j][2]
    keep = draw(st.integers(0, len(read) - 1))
    txns[i][j][2] = read[:keep] or None
    return txns


@settings(max_examples=60, deadline=None)
@given(stale())
def test_stale_read_is_not_strict_serializable(txns: list[list[Mop]]) -> None:
    history = to_history(txns, [])
    result = transactions(history, "strict-serializable")
    assert not result.valid and not result.unknown, result.details

"""txn/retry.py: `transactional` retries retryable errors only, with bounded backoff."""

from __future__ import annotations

import random

import pytest

from keeldb import limits
from keeldb.errors import SerializationConflict, TransactionConflict, UsageError
from keeldb.storage.memory import MemoryEngine
from keeldb.txn import SERIALIZABLE, Transaction, TransactionManager, transactional
from keeldb.txn.retry import backoff_seconds


def test_retries_a_conflict_then_commits() -> None:
    mgr = TransactionManager(MemoryEngine())
    mgr.put(b"n", b"0")
    slept: list[float] = []
    calls = []

    @transactional(mgr, isolation=SERIALIZABLE, sleep=slept.append)
    def increment(tx: Transaction, by: int) -> int:
        n = int(tx.get(b"n") or b"0") + by
        calls.append(n)
        if len(calls) == 1:
            mgr.put(b"n", b"100")  # a concurrent writer sneaks in: the first attempt loses
        tx.put(b"n", str(n).encode())
        return n

    assert increment(1) == 101
    assert calls == [1, 101] and len(slept) == 1
    assert 0 <= slept[0] <= limits.txn_backoff_ms_min / 1000
    assert mgr.get(b"n") == b"101"


def test_gives_up_after_retries_max_with_the_last_error() -> None:
    mgr = TransactionManager(MemoryEngine())
    slept: list[float] = []
    attempts = []

    @transactional(mgr, retries_max=4, sleep=slept.append, backoff_ms_min=10,
                   backoff_ms_max=30)
    def always_conflicts(tx: Transaction) -> None:
        attempts.append(tx.id)
        raise SerializationConflict("lost", key=b"k", other_txn=0)

    with pytest.raises(TransactionConflict):
        always_conflicts()
    assert len(attempts) == 4 and len(slept) == 3
    assert all(0 <= s <= 0.030 for s in slept)
    assert mgr.active_count() == 0 and mgr.stats["aborts"] == 4


def test_other_errors_are_not_retried() -> None:
    mgr = TransactionManager(MemoryEngine())
    attempts = []

    @transactional(mgr, sleep=lambda s: None)
    def broken(tx: Transaction) -> None:
        attempts.append(1)
        tx.put(b"k", b"v")
        raise KeyError("bug")

    with pytest.raises(KeyError):
        broken()
    assert attempts == [1] and mgr.get(b"k") is None


def test_uses_the_manager_sleep_port_by_default() -> None:
    slept: list[float] = []
    mgr = TransactionManager(MemoryEngine(), sleep=slept.append)
    tries = []

    @transactional(mgr, retries_max=2)
    def once_conflicting(tx: Transaction) -> str:
        tries.append(1)
        if len(tries) == 1:
            raise SerializationConflict("x", key=b"k", other_txn=1)
        return "done"

    assert once_conflicting() == "done" and len(slept) == 1


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random("backoff")
    caps = [max(backoff_seconds(a, rng, 1, 50) for _ in range(200)) for a in range(10)]
    assert caps[0] <= 0.001 and caps[3] <= 0.008 and max(caps) <= 0.050
    assert caps[9] > 0.040  # full jitter reaches close to the cap


def test_bad_arguments() -> None:
    mgr = TransactionManager(MemoryEngine())
    with pytest.raises(UsageError, match="retries_max"):
        transactional(mgr, retries_max=0)
    with pytest.raises(UsageError, match="backoff_ms_min"):
        transactional(mgr, backoff_ms_min=5, backoff_ms_max=1)

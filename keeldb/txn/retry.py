"""`transactional`: run a function in a transaction, retrying only retryable errors.

    @transactional(mgr, isolation="serializable")
    def transfer(tx, src, dst, amount): ...

    transfer(b"alice", b"bob", 10)   # the transaction is passed as the first argument

Each attempt runs in a fresh transaction that commits when the function returns. An error
whose `retryable` is true (`TransactionConflict`, `TransactionTooOldError`, ...) rolls back
and tries again after a full-jitter exponential backoff, at most `retries_max` attempts in
all; the last error is raised. Any other error rolls back and propagates at once. Waiting
goes through `sleep` (default: the manager's `sleep` port), so tests need no wall clock.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from keeldb import limits
from keeldb.errors import UsageError
from keeldb.txn.local import Transaction

P = ParamSpec("P")
R = TypeVar("R")


class _Begins(Protocol):
    def transaction(self, isolation: str = ...) -> Transaction: ...


def backoff_seconds(attempt: int, rng: random.Random, ms_min: int = limits.txn_backoff_ms_min,
                    ms_max: int = limits.txn_backoff_ms_max) -> float:
    """Full jitter: uniform in [0, min(ms_max, ms_min * 2**attempt)] milliseconds."""
    cap = min(ms_max, ms_min * (2 ** min(attempt, 30)))
    return rng.uniform(0, cap) / 1000.0


def transactional(
    db_or_mgr: _Begins, *, isolation: str = "serializable",
    retries_max: int = limits.txn_retries_max_default,
    backoff_ms_min: int = limits.txn_backoff_ms_min,
    backoff_ms_max: int = limits.txn_backoff_ms_max,
    sleep: Callable[[float], None] | None = None,
    rng: random.Random | None = None,
) -> Callable[[Callable[Concatenate[Transaction, P], R]], Callable[P, R]]:
    """Decorate `fn(tx, ...)` so that calling `fn(...)` runs it in a retried transaction.

    `db_or_mgr` is anything with `transaction(isolation=...)`: a `TransactionManager` or an
    embedded `DB` offering it.
    """
    if not 1 <= retries_max <= 1_000:
        raise UsageError(f"retries_max={retries_max!r} must be between 1 and 1000 attempts")
    if not 0 <= backoff_ms_min <= backoff_ms_max:
        raise UsageError(
            f"backoff_ms_min={backoff_ms_min} and backoff_ms_max={backoff_ms_max} must satisfy "
            "0 <= min <= max"
        )
    wait: Callable[[float], None] = sleep if sleep is not None else _sleep_port(db_or_mgr)

    def decorate(fn: Callable[Concatenate[Transaction, P], R]) -> Callable[P, R]:
        jitter = rng if rng is not None else random.Random(f"transactional:{fn.__qualname__}")

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            for attempt in range(retries_max):
                tx = db_or_mgr.transaction(isolation=isolation)
                try:
                    with tx:
                        result = fn(tx, *args, **kwargs)
                    return result
                except Exception as exc:
                    if not getattr(exc, "retryable", False) or attempt + 1 >= retries_max:
                        raise
                wait(backoff_seconds(attempt, jitter, backoff_ms_min, backoff_ms_max))
            raise AssertionError("unreachable: the loop returns or raises")

        return run

    return decorate


def _sleep_port(db_or_mgr: Any) -> Callable[[float], None]:
    """The manager's (or the DB's manager's) sleep port, else no waiting at all."""
    for candidate in (db_or_mgr, getattr(db_or_mgr, "_txns", None)):
        sleep = getattr(candidate, "sleep", None)
        if callable(sleep):
            return sleep  # type: ignore[no-any-return]
    return lambda seconds: None

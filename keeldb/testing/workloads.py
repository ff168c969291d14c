"""Workload generators: what clients ask for, what they read at the end, and how it is judged.

- `register`: read / write / cas per key over a few keys; written values are unique per run,
  so a read names the write it saw. Checked by `lost_writes` and linearizability.
- `list-append`: transactions of appends (unique values) and reads over a few lists. Checked by
  `lost_appends`.
- `bank`: transfers between accounts and reads of all balances. Checked by `bank_total`.

Each workload draws from the `random.Random` it is given (one per client, from the seed tree).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from keeldb.check.history import Op
from keeldb.errors import UsageError
from keeldb.testing import checkers
from keeldb.testing.checkers import Violation
from keeldb.testing.kvstate import BANK_INITIAL

Command = tuple[str, Any, Any]  # (f, key, value)


class Workload(Protocol):
    name: str

    def next_op(self, rng: random.Random) -> Command: ...

    def final_ops(self) -> list[Command]:
        """Reads run after the faults healed: they must succeed (liveness) and be checked."""

    def check(self, history: Sequence[Op]) -> list[Violation]: ...


class RegisterWorkload:
    name = "register"

    def __init__(self, keys: int = 3, linearizability: bool = True) -> None:
        assert keys > 0, keys
        self.keys = [f"k{i}" for i in range(keys)]
        self.next_value = 0
        self.linearizability = linearizability
        self.recent: dict[str, int] = {}

    def next_op(self, rng: random.Random) -> Command:
        key = self.keys[rng.randrange(len(self.keys))]
        r = rng.random()
        if r < 0.4:
            return ("read", key, None)
        self.next_value += 1
        new = self.next_value
        if r < 0.8:
            self.recent[key] = new
            return ("write", key, new)
        return ("cas", key, [self.recent.get(key), new])

    def final_ops(self) -> list[Command]:
        return [("read", k, None) for k in self.keys]

    def check(self, history: Sequence[Op]) -> list[Violation]:
        found = checkers.lost_writes(history)
        if self.linearizability and not found:
            found = checkers.linearizability(history)
        return found


def random_txn(rng: random.Random, keys: list[str], ops_max: int, write_f: str,
               next_value: int) -> tuple[Command, int]:
    """A `txn` of 1..ops_max micro-ops, each a read or a `write_f` ("append" or "w") of a
    unique value (the next after `next_value`) on a random key; returns (op, last value)."""
    micro: list[list[Any]] = []
    for _ in range(rng.randrange(1, ops_max + 1)):
        key = keys[rng.randrange(len(keys))]
        if rng.random() < 0.5:
            micro.append(["r", key, None])
        else:
            next_value += 1
            micro.append([write_f, key, next_value])
    return ("txn", None, micro), next_value


class ListAppendWorkload:
    name = "list-append"

    def __init__(self, keys: int = 4, ops_max: int = 4) -> None:
        assert keys > 0 and ops_max > 0, (keys, ops_max)
        self.keys = [f"l{i}" for i in range(keys)]
        self.ops_max = ops_max
        self.next_value = 0

    def next_op(self, rng: random.Random) -> Command:
        op, self.next_value = random_txn(rng, self.keys, self.ops_max, "append", self.next_value)
        return op

    def final_ops(self) -> list[Command]:
        return [("txn", None, [["r", k, None]]) for k in self.keys]

    def check(self, history: Sequence[Op]) -> list[Violation]:
        return checkers.lost_appends(history)


class BankWorkload:
    name = "bank"

    def __init__(self, accounts: int = 5, amount_max: int = 30) -> None:
        assert accounts >= 2 and amount_max > 0, (accounts, amount_max)
        self.accounts = [f"a{i}" for i in range(accounts)]
        self.amount_max = amount_max
        self.total = BANK_INITIAL * accounts

    def next_op(self, rng: random.Random) -> Command:
        if rng.random() < 0.3:
            return ("read-accounts", None, list(self.accounts))
        src, dst = rng.sample(self.accounts, 2)
        return ("transfer", None, [src, dst, rng.randrange(1, self.amount_max + 1)])

    def final_ops(self) -> list[Command]:
        return [("read-accounts", None, list(self.accounts))]

    def check(self, history: Sequence[Op]) -> list[Violation]:
        return checkers.bank_total(history, self.total)


WORKLOADS: dict[str, type] = {
    "register": RegisterWorkload,
    "list-append": ListAppendWorkload,
    "bank": BankWorkload,
}


def make_workload(name: str) -> Workload:
    if name not in WORKLOADS:
        raise UsageError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    workload: Workload = WORKLOADS[name]()
    return workload

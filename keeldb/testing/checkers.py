"""Checkers over recorded histories, each returning the violations it found (empty: fine).

- `lost_writes`: "no acknowledged write lost" for registers. A write (or successful cas) that
  was acknowledged before a read began must not be hidden from that read by an OLDER value:
  if the read returns the value of a write that completed before the acknowledged write was
  even invoked, the acknowledged write was lost. Sound for any linearizable register history
  whose written values are unique per key (the workloads guarantee it).
- `lost_appends`: an append acknowledged before a read of that list began must be in it.
- `bank_total`: every successful read of all accounts sums to the initial total.
- `linearizability`: keeldb.check.linearizable with the cas-register model, split by key.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keeldb.check.history import Op

INF = float("inf")


@dataclass(frozen=True, slots=True)
class Violation:
    checker: str
    message: str
    ops: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"[{self.checker}] {self.message}"


@dataclass(slots=True)
class _Done:
    """An invocation paired with its completion (None: never completed or `info`)."""

    inv: Op
    comp: Op | None

    @property
    def start(self) -> int:
        return self.inv.time or 0

    @property
    def end(self) -> float:
        if self.comp is None or self.comp.type == "info":
            return INF
        return self.comp.time or 0


def pair(history: Sequence[Op]) -> list[_Done]:
    """Pair each invocation with the completion of the same process, in history order."""
    open_: dict[Any, _Done] = {}
    out: list[_Done] = []
    for op in history:
        if op.type == "invoke":
            d = _Done(op, None)
            open_[op.process] = d
            out.append(d)
        else:
            d2 = open_.pop(op.process, None)
            if d2 is not None:
                d2.comp = op
    return out


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def lost_writes(history: Sequence[Op]) -> list[Violation]:
    """See the module docstring. Also flags reads of values nobody wrote."""
    writes: dict[Any, dict[Any, _Done]] = {}  # key -> written value -> the write
    acked: dict[Any, list[tuple[float, int, int]]] = {}  # key -> (end, start, index)
    reads: list[_Done] = []
    for d in pair(history):
        f = d.inv.f
        if f in ("write", "cas"):
            new = d.inv.value if f == "write" else d.inv.value[1]
            if d.comp is not None and d.comp.type == "fail":
                continue
            writes.setdefault(d.inv.key, {})[_hashable(new)] = d
            if d.comp is not None and d.comp.type == "ok":
                acked.setdefault(d.inv.key, []).append((d.end, d.start, d.inv.index))
        elif f == "read" and d.comp is not None and d.comp.type == "ok":
            reads.append(d)
    found: list[Violation] = []
    prefix_max: dict[Any, tuple[list[float], list[tuple[int, int]]]] = {}
    for key, items in acked.items():
        items.sort()
        ends, best, cur = [], [], (-1, -1)
        for end, start, index in items:
            if start > cur[0]:
                cur = (start, index)
            ends.append(end)
            best.append(cur)
        prefix_max[key] = (ends, best)
    for r in reads:
        key, value = r.inv.key, _hashable(r.comp.value)  # type: ignore[union-attr]
        if key not in prefix_max:
            continue
        ends, best = prefix_max[key]
        n = bisect.bisect_left(ends, r.start)  # acked writes that completed before the read
        if n == 0:
            continue
        latest_start, w_index = best[n - 1]
        if value is None:
            found.append(Violation("lost-write", f"read of {key!r} at op {r.inv.index} saw no "
                                   f"value although write op {w_index} was acknowledged "
                                   "before it began", (r.inv.index, w_index)))
            continue
        src = writes.get(key, {}).get(value)
        if src is None:
            found.append(Violation("lost-write", f"read of {key!r} at op {r.inv.index} saw "
                                   f"{value!r}, which no operation wrote", (r.inv.index,)))
        elif src.end < latest_start:
            found.append(Violation(
                "lost-write", f"read of {key!r} at op {r.inv.index} saw {value!r} (written by "
                f"op {src.inv.index}), but op {w_index} overwrote it and was acknowledged "
                "before the read began: acknowledged write lost",
                (r.inv.index, src.inv.index, w_index)))
    return found


def lost_appends(history: Sequence[Op]) -> list[Violation]:
    """Every append acknowledged before a read of the list began must appear in that read."""
    appends: dict[Any, list[tuple[float, Any, int]]] = {}
    reads: list[tuple[_Done, Any, Any]] = []
    for d in pair(history):
        if d.inv.f != "txn" or d.comp is None or d.comp.type != "ok":
            continue
        for mf, k, v in d.comp.value:
            if mf == "append":
                appends.setdefault(k, []).append((d.end, v, d.inv.index))
            elif mf == "r":
                reads.append((d, k, v))
    for items in appends.values():
        items.sort(key=lambda t: (t[0], t[2]))
    found: list[Violation] = []
    for d, k, seen in reads:
        present = set(seen or ())
        for end, v, index in appends.get(k, ()):
            if end >= d.start:
                break
            if v not in present:
                found.append(Violation("lost-append", f"append of {v!r} to {k!r} (op {index}) "
                                       f"was acknowledged before the read at op {d.inv.index} "
                                       f"began, which saw {seen!r}", (index, d.inv.index)))
                break
    return found


def bank_total(history: Sequence[Op], total: int) -> list[Violation]:
    """Every ok `read-accounts` must sum to `total` (transfers move money, never make it)."""
    found: list[Violation] = []
    for op in history:
        if op.f == "read-accounts" and op.type == "ok":
            s = sum(op.value.values())
            if s != total:
                found.append(Violation("bank-total", f"read at op {op.index} sums to {s}, "
                                       f"expected {total}: {op.value!r}", (op.index,)))
    return found


def linearizability(history: Sequence[Op]) -> list[Violation]:
    """The cas-register linearizability check; an `unknown` verdict is not a violation."""
    from keeldb.check import linearizable

    ops = [op for op in history if op.f in ("read", "write", "cas")]
    result = linearizable(ops, "cas-register")
    if result.valid or result.unknown:
        return []
    first = result.anomalies[0] if result.anomalies else None
    text = first.explanation if first else result.explanation
    return [Violation("linearizable", f"not linearizable: {text}",
                      tuple(first.ops) if first else ())]

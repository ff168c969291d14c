"""Property tests of the linearizability checker.

1. A sequential execution of a register, cas-register or kv map, stretched into overlapping
   intervals that each contain the operation's original point (invoke before, complete after),
   is linearizable by construction: the checker must say valid. Some completions are turned
   into `info` (the op took effect but the client never heard): still valid.
2. The same with one read corrupted to a stale value: a read placed after two writes
   `W_old(a)`, `W_new(b)` that are separated in real time (W_old completes before W_new is
   invoked, W_new completes before the read is invoked), now returning `a`. Written values are
   unique, so no order can explain it: the checker must say invalid.
3. On small random histories the checker agrees with a brute-force search over all orders.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keeldb.check import linearizable
from keeldb.check.history import Op
from keeldb.check.linear import pair_history
from keeldb.check.models import Model, Operation, model_by_name

SPACING = 10  # distance between consecutive linearization points
KEYS = ("a", "b")


@dataclass
class SeqOp:
    f: str
    key: str
    arg: Any
    result: Any
    point: int = 0
    call: int = 0
    ret: int = 0
    info: bool = False


def _run(model_name: str, plan: list[tuple[str, str, int]]) -> list[SeqOp]:
    """Execute `plan` sequentially; written values are unique (1, 2, ...)."""
    state: dict[str, Any] = {}
    out: list[SeqOp] = []
    fresh = itertools.count(1)
    for f, key, pick in plan:
        cur: Any = state.get(key, "" if model_name == "kv" else None)
        if f == "read":
            out.append(SeqOp("get" if model_name == "kv" else "read", key, None, cur))
        elif model_name == "kv":  # a planned write or cas becomes put or append
            token = f"x{next(fresh)}y"
            state[key] = token if pick % 2 else cur + token
            out.append(SeqOp("put" if pick % 2 else "append", key, token, None))
        elif f == "write" or model_name == "register":
            value = next(fresh)
            state[key] = value
            out.append(SeqOp("write", key, value, None))
        else:  # cas: from the current value (succeeds) or from a stale guess (fails)
            frm = cur if pick % 2 else -pick
            to = next(fresh)
            ok = frm == cur
            if ok:
                state[key] = to
            out.append(SeqOp("cas", key, [frm, to], ok))
    return out


def _write_op(model_name: str, key: str, value: int) -> SeqOp:
    if model_name == "kv":
        return SeqOp("put", key, f"w{value}w", None)
    return SeqOp("write", key, value, None)


def _read_op(model_name: str, key: str, value: Any) -> SeqOp:
    return SeqOp("get" if model_name == "kv" else "read", key, None, value)


def _stretch(seq: list[SeqOp], before: list[int], after: list[int], infos: set[int],
             tight: set[int]) -> tuple[list[Op], dict[int, int]]:
    """Give op i the point SPACING*(i+1) and an interval around it; emit a history.

    Returns the history and, per op position, the index of its completion event. A new
    process is used whenever every existing one is still busy (a process runs one op at a
    time; after an `info` it is never used again). `tight` ops get a zero-width interval.
    """
    for i, op in enumerate(seq):
        op.point = SPACING * (i + 1)
        b = 0 if i in tight else before[i % len(before)]
        a = 0 if i in tight else after[i % len(after)]
        op.call, op.ret, op.info = op.point - b, op.point + a, i in infos
    free_at: list[int] = []  # per process: the time it is free again
    events: list[tuple[int, int, int, int, str]] = []  # time, order, op position, process, type
    for i, op in sorted(enumerate(seq), key=lambda t: t[1].call):
        p = next((p for p, free in enumerate(free_at) if free < op.call), len(free_at))
        if p == len(free_at):
            free_at.append(0)
        free_at[p] = op.ret if not op.info else 10**9
        events.append((op.call, 0, i, p, "invoke"))
        events.append((op.ret, 1, i, p, "info" if op.info else "ok"))
    events.sort(key=lambda e: (e[0], e[1]))  # at equal times invocations go first
    hist: list[Op] = []
    ret_index: dict[int, int] = {}
    for idx, (_, _, i, proc, typ) in enumerate(events):
        op = seq[i]
        value: Any = op.arg
        if op.f == "cas" and typ == "ok" and not op.result:
            typ = "fail"
        elif op.f in ("read", "get"):
            value = op.result if typ == "ok" else None
        if typ != "invoke":
            ret_index[i] = idx
        hist.append(Op(idx, proc, typ, op.f, key=op.key, value=value))
    return hist, ret_index


plans = st.lists(st.tuples(st.sampled_from(("read", "write", "cas")), st.sampled_from(KEYS),
                           st.integers(0, 5)), min_size=1, max_size=24)
gaps = st.lists(st.integers(0, 3 * SPACING), min_size=1, max_size=8)
model_names = st.sampled_from(("register", "cas-register", "kv"))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(model_names, plans, gaps, gaps, st.sets(st.integers(0, 23), max_size=4))
def test_stretched_sequential_execution_is_linearizable(
        model_name: str, plan: list[tuple[str, str, int]], before: list[int],
        after: list[int], infos: set[int]) -> None:
    seq = _run(model_name, plan)
    hist, _ = _stretch(seq, before, after, infos, set())
    r = linearizable(hist, model_by_name(model_name))
    assert r.valid, r.explanation


@settings(max_examples=150, deadline=None, derandomize=True)
@given(model_names, plans, gaps, gaps, st.integers(0, 24), st.sampled_from(KEYS),
       st.sets(st.integers(0, 23), max_size=3))
def test_one_stale_read_makes_it_non_linearizable(
        model_name: str, plan: list[tuple[str, str, int]], before: list[int],
        after: list[int], at: int, key: str, infos: set[int]) -> None:
    seq = _run(model_name, plan)
    at = min(at, len(seq))
    old, new = 1_000_001, 1_000_002  # never written elsewhere
    w_old, w_new = _write_op(model_name, key, old), _write_op(model_name, key, new)
    read = _read_op(model_name, key, w_new.arg)
    seq[at:at] = [w_old, w_new, read]
    seq = _rerun(model_name, seq)  # later reads of `key` now see the new value
    tight = {at, at + 1, at + 2}
    infos = {i for i in infos if i not in tight}
    hist, ret_index = _stretch(seq, before, after, infos, tight)
    assert linearizable(hist, model_by_name(model_name)).valid  # uncorrupted: fine
    target = ret_index[at + 2]
    assert hist[target].f == read.f and hist[target].value == w_new.arg
    hist[target] = Op(target, hist[target].process, "ok", read.f, key, w_old.arg)
    r = linearizable(hist, model_by_name(model_name))
    assert not r.valid and not r.unknown, "a stale read was accepted"


def _rerun(model_name: str, seq: list[SeqOp]) -> list[SeqOp]:
    """Recompute results of a sequence whose ops are fixed (writes keep their values)."""
    state: dict[str, Any] = {}
    for op in seq:
        cur = state.get(op.key, "" if model_name == "kv" else None)
        if op.f in ("read", "get"):
            op.result = cur
        elif op.f in ("write", "put"):
            state[op.key] = op.arg
        elif op.f == "append":
            state[op.key] = cur + op.arg
        else:
            op.result = op.arg[0] == cur
            if op.result:
                state[op.key] = op.arg[1]
    return seq


# --- agreement with brute force on small random histories -------------------------------------

def _brute_force(ops: list[Operation], model: Model) -> bool:
    """Try every order of every subset containing all completed ops (open ops optional)."""
    must = [o for o in ops if o.ret is not None and model.include(o)]
    maybe = [o for o in ops if o.ret is None]
    for r in range(len(maybe) + 1):
        for extra in itertools.combinations(maybe, r):
            chosen = must + list(extra)
            for order in itertools.permutations(chosen):
                if _legal(order, model):
                    return True
    return False


def _legal(order: tuple[Operation, ...], model: Model) -> bool:
    for i, a in enumerate(order):  # real time: nothing later may have returned before a began
        for b in order[i + 1:]:
            if b.ret is not None and b.ret < a.call:
                return False
    state: Hashable = model.init()
    for o in order:
        ok, state = model.step(state, o.input, o.output)
        if not ok:
            return False
    return True


@st.composite
def small_histories(draw: st.DrawFn) -> list[Op]:
    events: list[Op] = []
    open_ops: dict[int, Op] = {}
    for _ in range(draw(st.integers(1, 12))):
        p = draw(st.integers(0, 2))
        if p in open_ops:
            inv = open_ops.pop(p)
            typ = draw(st.sampled_from(("ok", "ok", "ok", "info", "fail")))
            value = inv.value
            if inv.f == "read":
                value = draw(st.sampled_from((None, 0, 1, 2))) if typ == "ok" else None
            events.append(Op(len(events), p, typ, inv.f, value=value))
        elif len([e for e in events if e.type == "invoke"]) < 6:
            f = draw(st.sampled_from(("read", "write", "cas")))
            value = (None if f == "read" else draw(st.integers(0, 2)) if f == "write"
                     else [draw(st.integers(0, 2)), draw(st.integers(0, 2))])
            inv = Op(len(events), p, "invoke", f, value=value)
            open_ops[p] = inv
            events.append(inv)
    return events


@settings(max_examples=300, deadline=None, derandomize=True)
@given(small_histories(), st.sampled_from(("no-effect", "not-from")))
def test_agrees_with_brute_force(hist: list[Op], failed_cas: str) -> None:
    model = model_by_name("cas-register", initial=0, failed_cas=failed_cas)
    expected = _brute_force(pair_history(hist), model)
    r = linearizable(hist, model)
    assert not r.unknown
    assert r.valid == expected, (hist, r.explanation)

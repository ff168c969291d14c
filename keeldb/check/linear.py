"""The linearizability checker: Wing & Gong's search with Lowe's cache and P-compositionality.

A history is linearizable under a model when every operation can be given one point between its
invocation and its completion such that, taken in the order of those points, the operations
are legal for the model. The search (after Wing & Gong, Lowe, and Porcupine's implementation
of Horn & Kroening's P-compositionality):

1. pair invocations with completions (`pair_history`); `fail` ops are dropped unless the model
   keeps them; `info` ops and ops that never completed stay open until the end of the history
   and are optional (they may have taken effect at any point after their invocation, or never);
2. split the operations into independent parts with `model.partition` (by key for registers
   and key-value maps) and check the parts round-robin, a slice of steps each, stopping at the
   first part that fails;
3. in each part, keep the call and return events in a doubly linked list in real-time order.
   Walk it from the head: a call whose operation the model accepts in the current state is
   linearized (pushed on a stack with the state before it) and both its events are lifted out
   of the list; a return reached while scanning means its call could not be placed: pop the
   last linearized operation, put its events back (undo) and try the next candidate. A set of
   visited (linearized-set bitset, state) pairs prunes configurations already explored.
   Success: the list is empty, or the first return left belongs to an optional operation.

Order constraints (pipelines): an invocation may name, in its `after` field, the invocation of
an op it must take effect after (requests of one pipelined connection are concurrent in real
time but applied in the order sent). In the search such an op is a candidate only once its
predecessor is linearized. Coverage under the per-key split: the constraint is followed along
the chain of `after` links to the nearest earlier op of the same part, so `SET x; SET y;
GET x` still orders `GET x` after `SET x`; order between ops of different keys is not
checked (each key is its own part). A predecessor that failed or whose outcome is unknown
(`info`, never completed) imposes nothing: it may never have happened. Histories without
`after` take the old path (one `is None` test per candidate).

The search is iterative (an explicit stack), so no history is too deep for Python's recursion.
It counts steps; past `limits.linear_search_steps_max` in one part it answers "unknown", which
`Result` reports as not valid and `unknown`, never as valid.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keeldb import limits
from keeldb.check.history import Op
from keeldb.check.models import Input, Model, Operation, Output, freeze, model_by_name
from keeldb.check.result import Anomaly, Result
from keeldb.errors import CheckError

NEMESIS = "nemesis"


def pair_history(history: Sequence[Op]) -> list[Operation]:
    """Pair each completion with the open invocation of its process, in history order.

    Events of the `nemesis` process are ignored (Jepsen's fault injector). An invocation that
    never completes, or completes with `info`, becomes an open operation (`ret` None).
    """
    if len(history) > limits.linear_history_ops_max:
        raise CheckError(f"history has {len(history)} events, more than "
                         f"linear_history_ops_max={limits.linear_history_ops_max}; split it")
    pending: dict[Any, tuple[int, Op]] = {}
    done: list[tuple[int, Op, int | None, Op | None]] = []
    pos = 0
    for ev in history:
        if ev.process == NEMESIS:
            continue
        proc = _proc_key(ev.process)
        if ev.type == "invoke":
            if proc in pending:
                raise CheckError(f"index {ev.index}: process {ev.process!r} invoked {ev.f!r} "
                                 f"while its op at index {pending[proc][1].index} is still "
                                 f"open; a process runs one operation at a time")
            pending[proc] = (pos, ev)
        else:
            if proc not in pending:
                raise CheckError(f"index {ev.index}: {ev.type} {ev.f!r} of process "
                                 f"{ev.process!r} has no open invocation to complete")
            cpos, inv = pending.pop(proc)
            if inv.f != ev.f:
                raise CheckError(f"index {ev.index}: completion {ev.f!r} does not match the "
                                 f"invocation {inv.f!r} at index {inv.index}")
            done.append((cpos, inv, pos, ev))
        pos += 1
    for cpos, inv in pending.values():
        done.append((cpos, inv, None, None))
    done.sort(key=lambda d: d[0])
    return [_operation(i, *d) for i, d in enumerate(done)]


def _proc_key(process: Any) -> Hashable:
    return tuple(process) if isinstance(process, list) else process  # type: ignore[no-any-return]


def _operation(i: int, cpos: int, inv: Op, rpos: int | None, comp: Op | None) -> Operation:
    key = inv.key if inv.key is not None else (comp.key if comp is not None else None)
    if comp is None or comp.type == "info":
        output = Output("info", None)
        ret, ret_index = None, (comp.index if comp is not None else None)
    else:
        output = Output(comp.type, comp.value)
        ret, ret_index = rpos, comp.index
    return Operation(id=i, process=inv.process, input=Input(inv.f, key, inv.value),
                     output=output, call=cpos, ret=ret, call_index=inv.index,
                     ret_index=ret_index)


@dataclass
class PartOutcome:
    """What the search found in one part (partition) of the history."""

    key: Any
    ops: list[Operation]
    verdict: str = "unchecked"  # valid / invalid / unknown / unchecked
    steps: int = 0
    cache_size: int = 0
    # On failure: the longest linearization found (op ids with the state after each), the
    # operation whose completion was reached before it could be placed, and the candidates
    # that were tried next and refused.
    linearized: list[tuple[int, Any]] = field(default_factory=list)
    blocking: int | None = None
    refused: list[int] = field(default_factory=list)
    state_after: Any = None


def _search(part: PartOutcome, model: Model, steps_max: int, slice_steps: int,
            preds: list[int] | None = None) -> Generator[None, None, None]:
    """Run the search on one part, yielding every `slice_steps` steps; fill in `part`.

    `preds[i]` is the local index of the op that op i must follow (-1: none).
    """
    ops = part.ops
    n = len(ops)
    end = max((max(op.call, op.ret or 0) for op in ops), default=0) + 1
    # Node 0 is the head; op i has call node 2i+1 and return node 2i+2.
    order: list[tuple[int, int, int]] = []
    for i, op in enumerate(ops):
        order.append((op.call, 0, 2 * i + 1))
        ret = op.ret if op.ret is not None else end
        assert op.ret is None or op.ret > op.call, f"op {op.id} returns before its call"
        order.append((ret, op.call, 2 * i + 2))
    order.sort()
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = 0
    for _, _, node in order:
        nxt[last] = node
        prv[node] = last
        last = node
    optional = [op.ret is None for op in ops]
    inputs = [op.input for op in ops]
    outputs = [op.output for op in ops]
    step = model.step
    state: Any = model.init()
    bits = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []  # (op index, state before it)
    best = -1
    steps = 0
    pause_at = min(slice_steps, steps_max)
    node = nxt[0]
    while True:
        if nxt[0] == -1:
            part.verdict = "valid"
            break
        steps += 1
        if steps >= pause_at:
            if steps >= steps_max:
                part.verdict = "unknown"
                break
            pause_at = min(steps + slice_steps, steps_max)
            part.steps, part.cache_size = steps, len(cache)
            yield
        assert node != -1, "scan ran past the last event"
        if node & 1:  # a call: try to linearize it now
            i = node >> 1
            if preds is not None and preds[i] >= 0 and not bits >> preds[i] & 1:
                node = nxt[node]  # its pipeline predecessor is not placed yet
                continue
            ok, new_state = step(state, inputs[i], outputs[i])
            if ok:
                new_bits = bits | (1 << i)
                entry = (new_bits, new_state)
                if entry not in cache:
                    cache.add(entry)
                    stack.append((i, state))
                    state, bits = new_state, new_bits
                    _lift(nxt, prv, node)
                    node = nxt[0]
                    continue
            node = nxt[node]
            continue
        i = (node >> 1) - 1  # a return: its call was not placed in time
        if optional[i]:  # every completed op is placed; open ones may never have happened
            part.verdict = "valid"
            break
        if len(stack) > best:
            best = len(stack)
            _record_best(part, nxt, node, stack, state)
        if not stack:
            part.verdict = "invalid"
            break
        j, state = stack.pop()
        bits &= ~(1 << j)
        _unlift(nxt, prv, 2 * j + 1)
        node = nxt[2 * j + 1]
    part.steps = steps
    part.cache_size = len(cache)
    if part.verdict == "valid":
        assert all(optional[k] or bits >> k & 1 for k in range(n)), "a completed op was left out"


def _lift(nxt: list[int], prv: list[int], call: int) -> None:
    """Take a call node and its return node (call + 1) out of the list."""
    for node in (call, call + 1):
        p, q = prv[node], nxt[node]
        nxt[p] = q
        if q != -1:
            prv[q] = p


def _unlift(nxt: list[int], prv: list[int], call: int) -> None:
    """Undo `_lift` (return node first: the exact reverse of the removals)."""
    for node in (call + 1, call):
        p, q = prv[node], nxt[node]
        nxt[p] = node
        if q != -1:
            prv[q] = node


def _record_best(part: PartOutcome, nxt: list[int], ret_node: int,
                 stack: list[tuple[int, Any]], state: Any) -> None:
    """Remember the deepest point: the linearization so far and what could not follow it."""
    # States after each linearized op: the state before the next one, then the current one.
    afters = [s for _, s in stack[1:]] + [state] if stack else []
    part.linearized = [(i, s) for (i, _), s in zip(stack, afters, strict=True)]
    part.state_after = state
    part.blocking = (ret_node >> 1) - 1
    refused = []
    node = nxt[0]
    while node != ret_node and node != -1:
        if node & 1:
            refused.append(node >> 1)
        node = nxt[node]
    part.refused = refused


def resolve_model(model: Model | str, **options: Any) -> Model:
    if isinstance(model, Model):
        if options:
            raise CheckError("model options apply only to a model given by name")
        return model
    return model_by_name(model, **options)


def check_operations(ops: Sequence[Operation], model: Model,
                     steps_max: int = limits.linear_search_steps_max,
                     after: dict[int, int] | None = None) -> tuple[Result, list[PartOutcome]]:
    """Check paired operations; return the `Result` and every part's outcome.

    `after` maps an op's `call_index` to the `call_index` of the op it must follow
    (see the module doc, "Order constraints"); None or empty: no constraints.
    """
    included = [op for op in ops if model.include(op)]
    for op in included:
        model.validate(op)
    parts_ops = model.partition(included)
    parts = []
    for p in parts_ops:
        key = p[0].input.key if p and model.per_key else None
        local = [_renumber(op, i) for i, op in enumerate(p)]
        parts.append(PartOutcome(key=key, ops=local))
    preds = [_part_preds(p.ops, after) for p in parts] if after else [None] * len(parts)
    _run_round_robin(parts, model, steps_max, preds)
    return _result(parts, model, ops), parts


def _part_preds(ops: list[Operation], after: dict[int, int]) -> list[int] | None:
    """Local predecessor of each op of a part (-1: none); None when the part has none.

    Follows the `after` chain through ops of other parts (or dropped ones) to the nearest
    earlier op of this part; only a completed (not optional) op counts as a predecessor.
    """
    local = {op.call_index: i for i, op in enumerate(ops) if op.ret is not None}
    preds = [-1] * len(ops)
    found = False
    for i, op in enumerate(ops):
        p = after.get(op.call_index)
        hops = 0
        while p is not None and p not in local:
            p = after.get(p)
            hops += 1
            assert hops <= len(after), f"cycle in the after links from index {op.call_index}"
        if p is not None:
            j = local[p]
            assert ops[j].call < op.call, (f"op at index {op.call_index} must follow index {p}, "
                                           f"which was invoked later")
            preds[i] = j
            found = True
    return preds if found else None


def _renumber(op: Operation, i: int) -> Operation:
    """A part's copy of `op`: local id i (its bitset position), values made hashable once
    (lists become tuples, dicts sorted item tuples) so models compare them directly."""
    inp = Input(op.input.f, op.input.key, freeze(op.input.value))
    out = Output(op.output.status, freeze(op.output.value))
    return Operation(id=i, process=op.process, input=inp, output=out, call=op.call,
                     ret=op.ret, call_index=op.call_index, ret_index=op.ret_index)


def _run_round_robin(parts: list[PartOutcome], model: Model, steps_max: int,
                     preds: Sequence[list[int] | None] | None = None) -> None:
    """Advance every part a slice at a time; stop everything at the first invalid part."""
    slice_steps = limits.linear_search_slice_steps
    per = preds if preds is not None else [None] * len(parts)
    active = [(part, _search(part, model, steps_max, slice_steps, pp))
              for part, pp in zip(parts, per, strict=True)]
    while active:
        still = []
        for part, gen in active:
            try:
                next(gen)
            except StopIteration:
                if part.verdict == "invalid":
                    return
                continue
            still.append((part, gen))
        active = still


def _result(parts: list[PartOutcome], model: Model, ops: Sequence[Operation]) -> Result:
    verdicts = [p.verdict for p in parts]
    details: dict[str, Any] = {
        "model": model.name,
        "operations": len(ops),
        "parts": len(parts),
        "steps": sum(p.steps for p in parts),
        "per_part": [{"key": p.key, "verdict": p.verdict, "ops": len(p.ops), "steps": p.steps,
                      "cache": p.cache_size} for p in parts],
    }
    if "invalid" in verdicts:
        bad = parts[verdicts.index("invalid")]
        text, anomaly_ops, extra = explain_failure(bad, model)
        details.update(extra)
        anomaly = Anomaly(kind="nonlinearizable", explanation=text, ops=anomaly_ops,
                          data={"key": bad.key})
        return Result(valid=False, checker="linearizable", anomalies=(anomaly,),
                      explanation=text, details=details)
    if "unknown" in verdicts:
        keys = [p.key for p in parts if p.verdict == "unknown"]
        text = (f"unknown: the search gave up after linear_search_steps_max="
                f"{limits.linear_search_steps_max} steps on part(s) {keys!r}; no violation "
                f"was found in the other parts")
        return Result(valid=False, unknown=True, checker="linearizable", explanation=text,
                      details=details)
    assert all(v == "valid" for v in verdicts), verdicts
    text = (f"linearizable: {len(ops)} operations in {len(parts)} part(s) under model "
            f"{model.name!r}")
    return Result(valid=True, checker="linearizable", explanation=text, details=details)


def explain_failure(part: PartOutcome, model: Model) -> tuple[str, tuple[int, ...],
                                                             dict[str, Any]]:
    """A readable account of a failed part: the longest linearization, then what could not
    follow it. Returns the text, the history indexes involved and JSON-able details."""
    by_id = {op.id: op for op in part.ops}
    assert part.blocking is not None, "a failed part names its blocking operation"
    blocking = by_id[part.blocking]
    shown = limits.linear_explain_ops_max
    lin = part.linearized
    where = "" if part.key is None else f", key {part.key!r}"
    lines = [
        f"not linearizable (model {model.name!r}{where}): {len(lin)} of {len(part.ops)} "
        f"operations were linearized in the longest attempt, then none of the pending "
        f"operations could be placed before {_brief(blocking, model)} completed "
        f"(index {blocking.ret_index}).",
        "Every order the search tried failed; the longest linearizable prefix it found "
        f"({len(lin)} ops" +
        (f", last {shown} shown):" if len(lin) > shown else "):"),
    ]
    for k, (i, after) in enumerate(lin[-shown:], start=max(0, len(lin) - shown) + 1):
        lines.append(f"  {k:>4}. {_brief(by_id[i], model)}  ->  state "
                     f"{model.describe_state(after)}")
    lines.append(f"State after the prefix: {model.describe_state(part.state_after)}")
    lines.append("Could not be placed next:")
    refused = [i for i in part.refused if i != part.blocking][:shown]
    for i in [part.blocking, *refused]:
        lines.append(f"  {_brief(by_id[i], model)}")
    involved = tuple(sorted({by_id[i].call_index for i in [part.blocking, *refused]}))
    extra = {
        "failed_key": part.key,
        "linearized": [by_id[i].call_index for i, _ in lin],
        "linearized_states": [model.describe_state(st) for _, st in lin],
        "blocking": blocking.call_index,
        "refused": [by_id[i].call_index for i in refused],
        "prefix_end_index": blocking.ret_index,
    }
    return "\n".join(lines), involved, extra


def _brief(op: Operation, model: Model) -> str:
    end = "open" if op.ret_index is None or op.output.status == "info" else op.ret_index
    return f"p{op.process} {model.describe_op(op)} [index {op.call_index}..{end}]"


def linearizable(history: Sequence[Op] | str | Path, model: Model | str = "cas-register",
                 *, fmt: str = "auto", steps_max: int = limits.linear_search_steps_max,
                 **model_options: Any) -> Result:
    """Check a history for linearizability under `model`; return a `Result`.

    `history` is a list of `Op`, a `Path` to a history file, or a `str` holding either a
    file name or the history text itself (text when it has a newline or starts like JSON/EDN);
    `fmt` (auto, jsonl, edn, jepsen-log, porcupine-kv) says how to read a file or text.
    `model` is a `Model` instance or a name (register, cas-register, kv, mutex,
    multi-register) built with `model_options` (e.g. `initial=0`, `nil_read_any=True`).

    >>> from keeldb.check.history import Op
    >>> h = [Op(0, 1, "invoke", "write", value=1), Op(1, 1, "ok", "write", value=1),
    ...      Op(2, 2, "invoke", "read"), Op(3, 2, "ok", "read", value=0)]
    >>> linearizable(h, "register", initial=0).valid
    False
    """
    m = resolve_model(model, **model_options)
    if isinstance(history, (str, Path)):
        from keeldb.check.jepsen_log import load_history, parse_history

        if isinstance(history, str) and ("\n" in history or history[:1] in ("{", "[", ";")):
            history = parse_history(history, fmt)
        else:
            history = load_history(Path(history), fmt)
    after = {ev.index: ev.after for ev in history
             if ev.type == "invoke" and ev.after is not None}
    result, _ = check_operations(pair_history(history), m, steps_max, after or None)
    return result

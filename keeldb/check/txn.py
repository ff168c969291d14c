"""Transactional-anomaly checker after Elle: `transactions(history, isolation=...) -> Result`.

A history is a list of `keeldb.check.history.Op` with `f == "txn"` and a value that is a
list of micro-ops `[f, key, value]`. Two workloads are understood:

- **list-append**: `["append", k, e]` appends a unique element, `["r", k, [e1, e2, ...]]`
  reads the whole list. Every read reveals a prefix of the key's version order, so the
  order of appends is recovered from the longest read;
- **rw-register**: `["w", k, v]` writes a unique value, `["r", k, v]` reads one. Version
  orders are only partly known: the initial `None` precedes everything, and optionally
  writes follow reads inside a transaction (`wfr_keys`), each process sees keys in order
  (`sequential_keys`), keys are linearizable (`linearizable_keys`), or a commit order is
  given (`transaction_order`).

From the version orders come ww, wr and rw edges between transactions (plus process and
real-time edges when the checked model needs them); cycles in that graph are classified as
G0, G1c, G-single-item, G-nonadjacent-item or G2-item (and their -process/-realtime
variants) by `keeldb.check.txn_graph`. Anomalies visible without a cycle (G1a, G1b,
internal, future-read, dirty-update, duplicate-elements, incompatible-order, lost-update,
cyclic-versions, garbage-read) are checked directly. Which anomalies fail the check follows
Elle's consistency-model lattice in `keeldb.check.txn_anomalies`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keeldb import limits
from keeldb.check import txn_anomalies as ta
from keeldb.check import txn_graph as tg
from keeldb.check.history import Op
from keeldb.check.result import Anomaly, Result
from keeldb.check.txn_workloads import Analysis, Txn, analyze_list_append, analyze_rw_register
from keeldb.errors import CheckError

WORKLOADS: tuple[str, ...] = ("list-append", "rw-register")
ISOLATION_LEVELS: tuple[str, ...] = ta.LEVELS

# Cycle classes, in Elle's sense, whose search needs process or real-time edges.
_CYCLE_BASES = ("G0", "G1c", "G-single", "G-single-item", "G-nonadjacent",
                "G-nonadjacent-item", "G2-item", "G2")


@dataclass(frozen=True)
class TxnOptions:
    """What to check. `consistency_models=None` checks only the listed `anomalies`."""

    consistency_models: tuple[str, ...] | None = ("strict-serializable",)
    anomalies: tuple[str, ...] = ()
    workload: str = "list-append"
    linearizable_keys: bool = False
    sequential_keys: bool = False
    wfr_keys: bool = False
    transaction_order: Mapping[int, int] | None = None
    garbage_reads: bool = True


def transactions(
    history: Sequence[Op],
    isolation: str | Sequence[str] | None = "serializable",
    workload: str = "list-append",
    *,
    anomalies: Iterable[str] = (),
    linearizable_keys: bool = False,
    sequential_keys: bool = False,
    wfr_keys: bool = False,
    transaction_order: Mapping[int, int] | None = None,
    garbage_reads: bool = True,
) -> Result:
    """Check a transactional history against an isolation level (or several, or none).

    `isolation`: `read-uncommitted`, `read-committed`, `snapshot-isolation`, `serializable`,
    `strict-serializable`, or any model of Elle's lattice (`repeatable-read`,
    `strong-session-snapshot-isolation`, ...). `anomalies` names further anomaly classes to
    fail on. The result's `details` hold `anomaly_types` (what failed or made it unknown),
    `not` (the weakest models the history violates) and `levels` (per isolation level, the
    found anomalies it forbids).
    """
    models: tuple[str, ...] | None
    if isolation is None:
        models = None
    elif isinstance(isolation, str):
        models = (isolation,)
    else:
        models = tuple(isolation)
    opts = TxnOptions(consistency_models=models, anomalies=tuple(anomalies),
                      workload=workload, linearizable_keys=linearizable_keys,
                      sequential_keys=sequential_keys, wfr_keys=wfr_keys,
                      transaction_order=transaction_order, garbage_reads=garbage_reads)
    return check(history, opts)


def collect_txns(history: Sequence[Op]) -> tuple[list[Txn], list[tuple[str, int]]]:
    """Pair invocations with completions per process; return transactions and the
    ("invoke"|"ok", txn id) events in history order (for the real-time order).

    Operations other than `f == "txn"` (nemesis events) are skipped. An invocation never
    completed is an `info` transaction: it may have taken effect at any time.
    """
    if len(history) > limits.txn_history_ops_max:
        raise CheckError(f"history has {len(history)} events, over the limit of "
                         f"{limits.txn_history_ops_max} (limits.txn_history_ops_max); "
                         "split it")
    # Open invocations per process, oldest first (a process normally has at most one open;
    # a few hand-written histories queue several and complete them in order).
    pending: dict[Any, deque[tuple[int, Op]]] = {}
    done: list[tuple[int, int | None, Op]] = []  # (position of completion, invoke pos, op)
    for pos, op in enumerate(history):
        if op.f != "txn":
            continue
        queue = pending.setdefault(_hashable_process(op), deque())
        if op.type == "invoke":
            queue.append((pos, op))
            continue
        inv = queue.popleft() if queue else None
        done.append((pos, inv[0] if inv else None, op))
    for queue in pending.values():  # never completed: outcome unknown
        for pos, op in queue:
            done.append((len(history) + pos, pos, Op(op.index, op.process, "info", op.f,
                                                     op.key, op.value, op.time)))
    done.sort(key=lambda d: d[0])
    txns: list[Txn] = []
    events: list[tuple[int, str, int]] = []
    for pos, inv_pos, op in done:
        tid = len(txns)
        invoke_index = history[inv_pos].index if inv_pos is not None else None
        txns.append(Txn(tid, op.index, invoke_index, op.type, op.process,
                        _mops(op), op.time))
        if inv_pos is not None and op.type != "fail":
            events.append((inv_pos, "invoke", tid))
        if op.type == "ok":
            events.append((pos, "ok", tid))
    events.sort()
    return txns, [(kind, tid) for _, kind, tid in events]


def _hashable_process(op: Op) -> Any:
    try:
        hash(op.process)
    except TypeError as exc:
        raise CheckError(f"op {op.index}: process must be a number or a name, "
                         f"got {op.process!r}") from exc
    return op.process


def _mops(op: Op) -> tuple[tuple[str, Any, Any], ...]:
    value = op.value
    if not isinstance(value, (list, tuple)):
        raise CheckError(f"op {op.index}: a txn's value must be a list of [f, key, value] "
                         f"micro-ops, got {value!r}")
    out = []
    for mop in value:
        if not isinstance(mop, (list, tuple)) or len(mop) != 3 or not isinstance(mop[0], str):
            raise CheckError(f"op {op.index}: micro-op {mop!r} is not [f, key, value]")
        f, k, v = mop
        try:
            hash(k)
        except TypeError as exc:
            raise CheckError(f"op {op.index}: key {k!r} must be a number or a string") from exc
        if isinstance(v, list):
            v = tuple(v)
        out.append((f, k, v))
    return tuple(out)


def _needs_order(reportable: set[str], suffix: str) -> bool:
    return any(a.endswith(suffix) and a.removesuffix(suffix) in _CYCLE_BASES
               for a in reportable)


def check(history: Sequence[Op], opts: TxnOptions) -> Result:
    """Run the full check with explicit options (see `TxnOptions`)."""
    if opts.workload not in WORKLOADS:
        raise CheckError(f"unknown workload {opts.workload!r}; use one of "
                         f"{', '.join(WORKLOADS)}")
    try:
        prohibited = ta.prohibited_for(opts.consistency_models, opts.anomalies)
    except ValueError as exc:
        raise CheckError(str(exc)) from exc
    reportable = prohibited | ta.UNKNOWN_TYPES
    txns, events = collect_txns(history)
    graph = tg.Graph(len(txns))
    analysis = (analyze_list_append(txns, graph, opts.garbage_reads)
                if opts.workload == "list-append"
                else analyze_rw_register(txns, graph, events, opts))
    if _needs_order(reportable, "-realtime"):
        tg.realtime_edges(graph, events)
    elif _needs_order(reportable, "-process"):
        tg.process_edges(graph, ((t.process, t.id) for t in txns if t.type == "ok"))
    found = dict(analysis.cases)
    if graph.edge_count == 0:
        found["empty-transaction-graph"] = [Anomaly(
            "empty-transaction-graph",
            "no dependency between any two transactions could be inferred; nothing to check")]
    components = tg.analyze(graph)
    for item in components:
        found.setdefault(item.type, []).append(_found_anomaly(item, txns, analysis))
    return _result(found, prohibited, reportable, opts, len(txns), graph)


def _found_anomaly(item: tg.Found, txns: Sequence[Txn], analysis: Analysis) -> Anomaly:
    if item.steps:
        return explain_cycle(item.type, item.steps, txns, analysis)
    ops = tuple(txns[t].index for t in item.scc)
    if item.type == "cycle-search-timeout":
        return Anomaly(item.type, f"the search for a {item.searched} cycle among "
                       f"{len(item.scc)} transactions ran out of its budget "
                       f"({limits.txn_cycle_search_steps_max} steps)", ops[:16],
                       {"searched": item.searched, "scc_size": len(item.scc)})
    return Anomaly(item.type, f"a cycle forbidden by {ta.friendly(item.model)} exists among "
                   f"{len(item.scc)} transactions (ops {list(ops[:16])})", ops[:16],
                   {"model": ta.friendly(item.model), "scc_size": len(item.scc)})


def _cycle_exists_model(anomaly_type: str) -> str | None:
    for model, *_ in ta.CYCLE_EXISTS_SPECS:
        if ta.cycle_exists_type(model) == anomaly_type:
            return model
    return None


def _result(found: dict[str, list[Anomaly]], prohibited: set[str], reportable: set[str],
            opts: TxnOptions, n_txns: int, graph: tg.Graph) -> Result:
    report = {t for t in found if t in reportable}
    others = [t for t in report if _cycle_exists_model(t) is None]
    impossible = ta.impossible_models(others)
    report = {t for t in report if _cycle_exists_model(t) not in impossible}
    bad = report & prohibited
    not_models, also_not = ta.boundary(found)
    details: dict[str, Any] = {
        "workload": opts.workload,
        "consistency_models": list(opts.consistency_models or ()),
        "anomalies_asked": list(opts.anomalies),
        "anomaly_types": sorted(report),
        "found_types": sorted(found),
        "not": not_models,
        "also_not": also_not,
        "levels": ta.violated_levels(set(found) - ta.UNKNOWN_TYPES),
        "txn_count": n_txns,
        "edge_count": graph.edge_count,
    }
    if not report:
        details["elle_valid"] = True
        allowed = sorted(set(found) - ta.UNKNOWN_TYPES)
        text = "no forbidden anomaly found" + (
            f" (seen but allowed here: {', '.join(allowed)})" if allowed else "")
        return Result(True, "transactions", (), text, details)
    cap = limits.txn_cases_per_anomaly_max
    kept = tuple(a for t in sorted(report) for a in found[t][:cap])
    details["elle_valid"] = False if bad else "unknown"
    lines = [f"{'INVALID' if bad else 'UNKNOWN'}: found {', '.join(sorted(report))}"]
    if not_models:
        lines.append(f"violates (weakest): {', '.join(not_models)}")
    for t in sorted(report):
        lines.append(f"{t} ({len(found[t])} case{'s' if len(found[t]) != 1 else ''}):")
        lines.extend("  " + line for line in found[t][0].explanation.splitlines())
    return Result(False, "transactions", kept, "\n".join(lines), details, unknown=not bad)


def _show(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, tuple):
        return "[" + " ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _show_txn(t: Txn) -> str:
    mops = " ".join(f"[{f} {_show(k)} {_show(v)}]" for f, k, v in t.mops)
    return f"op {t.index} ({t.type}, process {t.process}): [{mops}]"


def explain_step(step: tg.Step, names: Mapping[int, str], txns: Sequence[Txn],
                 analysis: Analysis) -> tuple[str, dict[str, Any]]:
    """One "A < B because ..." line and its data."""
    a, b, bit = step
    an, bn = names[a], names[b]
    kind = tg.EDGE_NAMES[bit]
    data: dict[str, Any] = {"from": txns[a].index, "to": txns[b].index, "type": kind}
    if bit == tg.PROCESS:
        why = f"process {txns[a].process} executed {an} before {bn}"
    elif bit == tg.REALTIME:
        why = (f"{an} completed at index {txns[a].index} before the invocation of {bn}, "
               f"at index {txns[b].invoke_index}")
    else:
        k, v, v2 = analysis.reasons[(a, b, bit)]
        data.update({"key": k, "value": v, "value2": v2})
        why = analysis.describe(kind, an, bn, k, v, v2)
    return f"{an} < {bn} because {why}", data


def explain_cycle(cycle_type: str, steps: Sequence[tg.Step], txns: Sequence[Txn],
                  analysis: Analysis) -> Anomaly:
    """A cycle as readable text: who is who, then each dependency with its reason."""
    order = [a for a, _, _ in steps]
    names = {t: f"T{i + 1}" for i, t in enumerate(order)}
    lines = [f"{cycle_type}: a cycle of {len(order)} transactions"]
    lines += [f"  {names[t]} = {_show_txn(txns[t])}" for t in order]
    step_data = []
    for step in steps:
        text, data = explain_step(step, names, txns, analysis)
        lines.append("  " + text)
        step_data.append(data)
    ops = tuple(txns[t].index for t in order)
    return Anomaly(cycle_type, "\n".join(lines), ops,
                   {"cycle": list(ops) + [ops[0]], "steps": step_data})


def g1a_cases(history: Sequence[Op], workload: str = "list-append") -> list[Anomaly]:
    """Aborted reads alone (Elle's `g1a-cases`): reads of a failed transaction's write."""
    return _direct(history, workload).cases.get("G1a", [])


def g1b_cases(history: Sequence[Op], workload: str = "list-append") -> list[Anomaly]:
    """Intermediate reads alone (Elle's `g1b-cases`)."""
    return _direct(history, workload).cases.get("G1b", [])


def _direct(history: Sequence[Op], workload: str) -> Analysis:
    txns, events = collect_txns(history)
    graph = tg.Graph(len(txns))
    if workload == "list-append":
        return analyze_list_append(txns, graph, garbage_reads=False)
    return analyze_rw_register(txns, graph, events, TxnOptions(workload=workload,
                                                               garbage_reads=False))

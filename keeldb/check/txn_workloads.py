"""Workload analyzers: version orders, dependency edges and the anomalies seen directly.

`analyze_list_append` and `analyze_rw_register` take paired transactions, add ww/wr/rw edges
to a `txn_graph.Graph` (remembering one reason per edge for explanations) and return the
anomaly cases that need no cycle: G1a, G1b, internal, future-read, dirty-update,
duplicate-elements, incompatible-order, lost-update, cyclic-versions and garbage-read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keeldb import limits
from keeldb.check import txn_graph as tg
from keeldb.check.result import Anomaly
from keeldb.errors import CheckError

if TYPE_CHECKING:
    from keeldb.check.txn import TxnOptions

INIT = "<init>"  # the version before the first append (the empty list)
Mop = tuple[str, Any, Any]


@dataclass(frozen=True)
class Txn:
    """One transaction: its completion (or, never completed, its invocation) and micro-ops."""

    id: int
    index: int
    invoke_index: int | None
    type: str  # ok, info or fail
    process: Any
    mops: tuple[Mop, ...]
    time: int | None = None


@dataclass
class Analysis:
    """Edges' reasons, the direct anomaly cases, and how to phrase a dependency."""

    describe: Callable[[str, str, str, Any, Any, Any], str]
    reasons: dict[tuple[int, int, int], tuple[Any, Any, Any]] = field(default_factory=dict)
    cases: dict[str, list[Anomaly]] = field(default_factory=dict)

    def add(self, kind: str, text: str, ops: Iterable[int], **data: Any) -> None:
        self.cases.setdefault(kind, []).append(Anomaly(kind, text, tuple(ops), data))

    def link(self, graph: tg.Graph, a: Txn, b: Txn, bit: int, reason: tuple[Any, Any, Any]
             ) -> None:
        if a.id != b.id:
            graph.link(a.id, b.id, bit)
            self.reasons.setdefault((a.id, b.id, bit), reason)


def _v(x: Any) -> str:
    if x is None or x == INIT:
        return "nil" if x is None else "the initial (empty) state"
    if isinstance(x, tuple):
        return "[" + " ".join(_v(e) for e in x) + "]"
    return repr(x) if isinstance(x, str) else str(x)


def _check_fs(txns: Sequence[Txn], allowed: tuple[str, str], workload: str) -> None:
    for t in txns:
        for f, _, v in t.mops:
            if f not in allowed:
                raise CheckError(f"op {t.index}: micro-op {f!r} is not part of the {workload} "
                                 f"workload (use {allowed[0]!r} and {allowed[1]!r})")
            if f == allowed[0] and isinstance(v, tuple):
                raise CheckError(f"op {t.index}: {f} of {v!r}: written values must be "
                                 "numbers or strings")


def _lost_updates(txns: Sequence[Txn], write: str, analysis: Analysis) -> None:
    """Two committed transactions read the same version of a key and both wrote it."""
    groups: dict[tuple[Any, Any], list[Txn]] = {}
    for t in txns:
        if t.type != "ok":
            continue
        reads: dict[Any, Any] = {}
        written: set[Any] = set()
        for f, k, v in t.mops:
            if f == write:
                if k not in written and k in reads:
                    groups.setdefault((k, reads[k]), []).append(t)
                written.add(k)
            elif k not in reads and k not in written:
                reads[k] = v
    for (k, v), ts in groups.items():
        if len(ts) > 1:
            analysis.add("lost-update", f"{len(ts)} transactions (ops "
                         f"{[t.index for t in ts]}) read {_v(k)} = {_v(v)} and each wrote "
                         f"{_v(k)}: all but one update is lost", [t.index for t in ts],
                         key=k, value=v)


# --- list-append -----------------------------------------------------------------------


def _describe_append(kind: str, a: str, b: str, k: Any, v: Any, v2: Any) -> str:
    if kind == "ww":
        return f"{b} appended {_v(v2)} after {a} appended {_v(v)} to key {_v(k)}"
    if kind == "wr":
        return f"{b} observed {a}'s append of {_v(v)} to key {_v(k)}"
    if v == INIT:
        return (f"{a} observed the initial (empty) state of key {_v(k)}, which {b} changed "
                f"by appending {_v(v2)}")
    return f"{a} did not observe {b}'s append of {_v(v2)} to key {_v(k)}"


def _la_internal(t: Txn, analysis: Analysis) -> None:
    """Reads must agree with the transaction's own earlier reads and appends."""
    state: dict[Any, tuple[bool, tuple[Any, ...]]] = {}  # key -> (prefix known?, list)
    for f, k, v in t.mops:
        if f == "append":
            known, lst = state.get(k, (False, ()))
            state[k] = (known, lst + (v,))
            continue
        seen = v or ()
        if k in state:
            known, lst = state[k]
            if known:
                bad = seen != lst
            else:
                bad = len(seen) < len(lst) or seen[len(seen) - len(lst):] != lst
            if bad:
                expected = _v(lst) if known else "[... " + " ".join(_v(e) for e in lst) + "]"
                analysis.add("internal", f"op {t.index} read {_v(k)} = {_v(seen)} but its own "
                             f"earlier reads and appends imply {expected}", [t.index],
                             key=k, read=seen, expected=lst)
                return
        state[k] = (True, seen)


def _la_future_read(t: Txn, analysis: Analysis) -> None:
    """A transaction must not read an element it appends only later."""
    later: dict[Any, dict[Any, int]] = {}  # key -> element -> position of its append
    for i, (f, k, v) in enumerate(t.mops):
        if f == "append":
            later.setdefault(k, {})[v] = i
    if not later:
        return
    for i, (f, k, v) in enumerate(t.mops):
        mine = later.get(k)
        if f != "r" or not v or not mine:
            continue
        hits = [e for e in mine.keys() & set(v) if mine[e] > i]
        if hits:
            e = min(hits, key=mine.__getitem__)
            analysis.add("future-read", f"op {t.index} read {_v(k)} = {_v(v)}, which holds "
                         f"{_v(e)}, before appending {_v(e)} itself", [t.index],
                         key=k, element=e)
            return


def _sorted_values(possible: Sequence[Txn]) -> dict[Any, list[tuple[Any, ...]]]:
    """Per key, every distinct non-empty list read, shortest first."""
    values: dict[Any, dict[tuple[Any, ...], None]] = {}  # insertion-ordered sets
    appends: dict[Any, list[Any]] = {}
    for t in possible:
        for f, k, v in t.mops:
            if f == "r" and v:
                values.setdefault(k, {})[v] = None
            elif f == "append":
                appends.setdefault(k, []).append(v)
    for k, es in appends.items():
        if len(es) == 1:  # a key appended once took the values [] then [e]
            values[k] = {(es[0],): None}
    # Stable: reads of equal length stay in history order, so the result is deterministic.
    return {k: sorted(vs, key=len) for k, vs in values.items()}


def _incompatible(sorted_values: dict[Any, list[tuple[Any, ...]]], analysis: Analysis) -> None:
    for k, vs in sorted_values.items():
        for a, b in zip(vs, vs[1:], strict=False):
            if b[:len(a)] != a:
                analysis.add("incompatible-order", f"reads of key {_v(k)} saw {_v(a)} and "
                             f"{_v(b)}: no single order of appends gives both", [],
                             key=k, values=[a, b])
                break


def _dirty_updates(orders: dict[Any, list[Any]], writers: dict[tuple[Any, Any], Txn],
                   analysis: Analysis) -> None:
    """A committed append on top of a failed one: the failed write became visible."""
    for k, order in orders.items():
        t1_type: str = "ok"
        t1: Txn | None = None
        vs: list[Any] = []
        for e in order:
            t2 = writers.get((k, e))
            if t2 is None:
                continue  # garbage, reported separately
            vs = vs + [e]
            if t2.type == "ok":
                if t1_type == "fail" and t1 is not None:
                    analysis.add("dirty-update", f"op {t2.index} committed an append to key "
                                 f"{_v(k)} on top of {_v(tuple(vs))}, which includes failed op "
                                 f"{t1.index}'s append", [t1.index, t2.index],
                                 key=k, values=list(vs))
                t1_type, t1, vs = "ok", t2, [e]
            elif t2.type == "fail" and t1_type != "fail":
                t1_type, t1, vs = "fail", t2, [e]


def analyze_list_append(txns: Sequence[Txn], graph: tg.Graph, garbage_reads: bool = True
                        ) -> Analysis:
    """Recover each key's append order from the longest read and link the transactions."""
    _check_fs(txns, ("append", "r"), "list-append")
    analysis = Analysis(_describe_append)
    writers: dict[tuple[Any, Any], Txn] = {}
    intermediate: dict[tuple[Any, Any], Txn] = {}
    for t in txns:
        last: dict[Any, Any] = {}
        for f, k, v in t.mops:
            if f != "append":
                continue
            if (k, v) in writers:
                raise CheckError(f"op {t.index}: element {v!r} appended to key {k!r} again "
                                 f"(also by op {writers[(k, v)].index}); list-append needs "
                                 "unique elements per key")
            writers[(k, v)] = t
            if k in last:
                intermediate[(k, last[k])] = t
            last[k] = v
    ok = [t for t in txns if t.type == "ok"]
    possible = [t for t in txns if t.type != "fail"]
    failed: dict[Any, dict[Any, Txn]] = {}  # key -> element -> failed appender
    written: dict[Any, set[Any]] = {}
    for (k, e), w in writers.items():
        written.setdefault(k, set()).add(e)
        if w.type == "fail":
            failed.setdefault(k, {})[e] = w
    for t in ok:
        _la_internal(t, analysis)
        _la_future_read(t, analysis)
        for f, k, v in t.mops:
            if f != "r" or not v:
                continue
            seen = set(v)  # set algebra runs in C: reads can be long
            for e in sorted(failed.get(k, {}).keys() & seen, key=v.index):
                aborted = failed[k][e]
                analysis.add("G1a", f"op {t.index} read {_v(k)} = {_v(v)}, which holds "
                             f"{_v(e)} from failed op {aborted.index}",
                             [t.index, aborted.index], key=k, element=e, writer=aborted.index)
            if garbage_reads:
                for e in sorted(seen - written.get(k, set()), key=v.index):
                    analysis.add("garbage-read", f"op {t.index} read {_v(k)} = {_v(v)}, "
                                 f"but no transaction ever appended {_v(e)}", [t.index],
                                 key=k, element=e)
            im = intermediate.get((k, v[-1]))
            if im is not None and im.id != t.id:
                analysis.add("G1b", f"op {t.index} read {_v(k)} = {_v(v)}, ending in "
                             f"{_v(v[-1])}, which op {im.index} appended but then appended "
                             "more", [t.index, im.index], key=k, element=v[-1],
                             writer=im.index)
    for t in possible:
        for f, k, v in t.mops:
            if f == "r" and v and len(set(v)) != len(v):
                dups = sorted({e for e in v if v.count(e) > 1}, key=repr)
                analysis.add("duplicate-elements", f"op {t.index} read {_v(k)} = {_v(v)}, "
                             f"holding {_v(tuple(dups))} more than once", [t.index],
                             key=k, duplicates=dups)
    sorted_values = _sorted_values(possible)
    _incompatible(sorted_values, analysis)
    orders = {k: list(dict.fromkeys(vs[-1])) for k, vs in sorted_values.items()}
    # Dirty updates are judged on the order seen with failed transactions' appends counted.
    every = _sorted_values(txns)
    _dirty_updates({k: list(dict.fromkeys(vs[-1])) for k, vs in every.items()}, writers,
                   analysis)
    _lost_updates(txns, "append", analysis)
    _la_edges(possible, orders, writers, graph, analysis)
    return analysis


def _la_edges(possible: Sequence[Txn], orders: dict[Any, list[Any]],
              writers: dict[tuple[Any, Any], Txn], graph: tg.Graph, analysis: Analysis) -> None:
    position = {(k, e): i for k, order in orders.items() for i, e in enumerate(order)}
    readers: dict[tuple[Any, Any], list[Txn]] = {}
    for t in possible:
        for f, k, v in t.mops:
            if f == "r" and not (t.type == "info" and v is None):
                readers.setdefault((k, v[-1] if v else INIT), []).append(t)
    for t in possible:
        for f, k, v in t.mops:
            if f == "r":
                w = writers.get((k, v[-1])) if v else None
                if w is not None and w.type != "fail":
                    analysis.link(graph, w, t, tg.WR, (k, v[-1], None))
                continue
            i = position.get((k, v))
            order = orders.get(k, [])
            if i is None:  # never read: it can only follow everything that was read
                prev = order[-1] if order else INIT
            else:
                prev = order[i - 1] if i > 0 else INIT
            w = writers.get((k, prev)) if prev != INIT else None
            if w is not None and w.type != "fail":
                analysis.link(graph, w, t, tg.WW, (k, prev, v))
            for r in readers.get((k, prev), ()):
                analysis.link(graph, r, t, tg.RW, (k, prev, v))


# --- rw-register -------------------------------------------------------------------------


def _describe_register(kind: str, a: str, b: str, k: Any, v: Any, v2: Any) -> str:
    if kind == "ww":
        return (f"{a} set key {_v(k)} to {_v(v)}, and {b} set it to {_v(v2)}, which came "
                "later in the version order")
    if kind == "wr":
        return f"{a} wrote {_v(k)} = {_v(v)}, which was read by {b}"
    return (f"{a} read key {_v(k)} = {_v(v)}, and {b} set it to {_v(v2)}, which came later "
            "in the version order")


def ext_reads(t: Txn) -> dict[Any, Any]:
    """Keys the transaction read before writing them, with the first value read."""
    out: dict[Any, Any] = {}
    written: set[Any] = set()
    for f, k, v in t.mops:
        if f == "w":
            written.add(k)
        elif k not in written and k not in out:
            out[k] = v
    return out


def ext_writes(t: Txn) -> dict[Any, Any]:
    """Keys the transaction wrote, with the last value written."""
    return {k: v for f, k, v in t.mops if f == "w"}


def _rw_direct(txns: Sequence[Txn], analysis: Analysis, garbage_reads: bool) -> None:
    writers: dict[tuple[Any, Any], Txn] = {}
    intermediate: dict[tuple[Any, Any], Txn] = {}
    for t in txns:
        last: dict[Any, Any] = {}
        for f, k, v in t.mops:
            if f == "w":
                writers.setdefault((k, v), t)
                if k in last:
                    intermediate[(k, last[k])] = t
                last[k] = v
    for t in txns:
        if t.type != "ok":
            continue
        state: dict[Any, Any] = {}
        internal_done = False
        for f, k, v in t.mops:
            if f == "w":
                state[k] = v
                continue
            if k in state and state[k] != v and not internal_done:
                analysis.add("internal", f"op {t.index} read {_v(k)} = {_v(v)} but expected "
                             f"{_v(state[k])} from its own earlier read or write", [t.index],
                             key=k, read=v, expected=state[k])
                internal_done = True
            state[k] = v
            w = writers.get((k, v))
            if w is not None and w.type == "fail":
                analysis.add("G1a", f"op {t.index} read {_v(k)} = {_v(v)}, written by failed "
                             f"op {w.index}", [t.index, w.index], key=k, value=v,
                             writer=w.index)
            w = intermediate.get((k, v))
            if w is not None and w.id != t.id:
                analysis.add("G1b", f"op {t.index} read {_v(k)} = {_v(v)}, an intermediate "
                             f"write of op {w.index}", [t.index, w.index], key=k, value=v,
                             writer=w.index)
        if garbage_reads:
            for k, v in ext_reads(t).items():
                if v is not None and (k, v) not in writers:
                    analysis.add("garbage-read", f"op {t.index} read {_v(k)} = {_v(v)}, a "
                                 "value no transaction wrote", [t.index], key=k, value=v)


VersionGraphs = dict[Any, set[tuple[Any, Any]]]


def _initial_versions(txns: Sequence[Txn]) -> VersionGraphs:
    out: VersionGraphs = {}
    for t in txns:
        if t.type == "fail":
            continue
        kvs = list(ext_writes(t).items())
        if t.type == "ok":
            kvs += list(ext_reads(t).items())
        for k, v in kvs:
            if v is not None:
                out.setdefault(k, set()).add((None, v))
    return out


def _order_versions(txns: Sequence[Txn], order: dict[int, int]) -> VersionGraphs:
    per_key: dict[Any, list[tuple[float, int, Any]]] = {}
    for t in txns:
        if t.type == "fail":
            continue
        pos = order.get(t.index)
        rank = float("-inf") if pos is None else float(pos)  # unordered ones sort first
        for k, v in ext_writes(t).items():
            per_key.setdefault(k, []).append((rank, t.id, v))
    out: VersionGraphs = {}
    for k, vs in per_key.items():
        vs.sort(key=lambda x: (x[0], x[1]))
        out[k] = {(a[2], b[2]) for a, b in zip(vs, vs[1:], strict=False) if a[2] != b[2]}
    return out


def _wfr_versions(txns: Sequence[Txn]) -> VersionGraphs:
    out: VersionGraphs = {}
    for t in txns:
        if t.type != "ok":
            continue
        writes = ext_writes(t)
        for k, v in ext_reads(t).items():
            if v is not None and k in writes and writes[k] != v:
                out.setdefault(k, set()).add((v, writes[k]))
    return out


def _touch(t: Txn, k: Any, first: bool) -> tuple[bool, Any]:
    """Did `t` interact with `k` externally, and with which value (first or last)?"""
    writes = ext_writes(t)
    if t.type == "info":
        return (k in writes, writes.get(k))
    reads = ext_reads(t)
    if k not in reads and k not in writes:
        return (False, None)
    if first:
        return (True, reads[k] if reads.get(k) is not None else writes.get(k))
    return (True, writes[k] if writes.get(k) is not None else reads.get(k))


def _graph_versions(txns: Sequence[Txn], graph: tg.Graph) -> VersionGraphs:
    """Assume keys respect a transaction order (process or real time): the last version a
    transaction saw of k precedes the first version the next transactions on k saw."""
    out: VersionGraphs = {}
    budget = limits.txn_version_inference_steps_max
    for a in txns:
        if a.type == "fail":
            continue
        keys = set(ext_writes(a)) | (set(ext_reads(a)) if a.type == "ok" else set())
        for k in sorted(keys, key=repr):
            touched, v1 = _touch(a, k, first=False)
            if not touched:
                continue
            seen = {a.id}
            queue = deque(graph.out[a.id])
            while queue:
                budget -= 1
                if budget < 0:
                    raise CheckError("inferring register version orders took over "
                                     f"{limits.txn_version_inference_steps_max} steps "
                                     "(limits.txn_version_inference_steps_max); check a "
                                     "shorter history or drop sequential/linearizable keys")
                b = queue.popleft()
                if b in seen:
                    continue
                seen.add(b)
                hit, v = _touch(txns[b], k, first=True)
                if hit:
                    if v != v1:
                        out.setdefault(k, set()).add((v1, v))
                    continue
                queue.extend(graph.out[b])
    return out


def _cycles_in(graphs: VersionGraphs) -> list[tuple[Any, list[Any]]]:
    found = []
    for k, edges in graphs.items():
        values = sorted({x for e in edges for x in e}, key=repr)
        ids = {v: i for i, v in enumerate(values)}
        succ: dict[int, list[int]] = {i: [] for i in range(len(values))}
        for a, b in edges:
            succ[ids[a]].append(ids[b])
        for comp in tg.tarjan(list(range(len(values))), succ.__getitem__):
            if len(comp) > 1:
                found.append((k, sorted((values[i] for i in comp), key=repr)))
    return found


def _version_graphs(txns: Sequence[Txn], events: Sequence[tuple[str, int]],
                    opts: TxnOptions, analysis: Analysis) -> VersionGraphs:
    sources: list[tuple[str, Callable[[], VersionGraphs]]] = [
        ("initial-state", lambda: _initial_versions(txns))]
    if opts.transaction_order is not None:
        order = {int(i): int(p) for i, p in opts.transaction_order.items()}
        sources.append(("transaction-order", lambda: _order_versions(txns, order)))
    if opts.wfr_keys:
        sources.append(("wfr-keys", lambda: _wfr_versions(txns)))
    if opts.sequential_keys:
        def sequential() -> VersionGraphs:
            g = tg.Graph(len(txns))
            tg.process_edges(g, ((t.process, t.id) for t in txns if t.type == "ok"))
            return _graph_versions(txns, g)
        sources.append(("sequential-keys", sequential))
    if opts.linearizable_keys:
        def linearizable() -> VersionGraphs:
            g = tg.Graph(len(txns))
            tg.realtime_edges(g, events)
            return _graph_versions(txns, g)
        sources.append(("linearizable-keys", linearizable))
    merged: VersionGraphs = {}
    used: list[str] = []
    for name, build in sources:
        candidate = {k: set(v) for k, v in merged.items()}
        for k, edges in build().items():
            candidate.setdefault(k, set()).update(edges)
        cycles = _cycles_in(candidate)
        if not cycles:
            merged, used = candidate, used + [name]
            continue
        for k, scc in cycles:  # this source contradicts itself or the others: drop it
            analysis.add("cyclic-versions", f"the version order of key {_v(k)} inferred "
                         f"from {', '.join(used + [name])} is cyclic: "
                         f"{', '.join(_v(x) for x in scc)}", [], key=k, scc=scc,
                         sources=used + [name])
    return merged


def analyze_rw_register(txns: Sequence[Txn], graph: tg.Graph, events: Sequence[tuple[str, int]],
                        opts: TxnOptions) -> Analysis:
    """Link register transactions by the (partial) version orders that can be inferred."""
    _check_fs(txns, ("w", "r"), "rw-register")
    graph.priority = (tg.WR, tg.WW, tg.RW, tg.PROCESS, tg.REALTIME)
    analysis = Analysis(_describe_register)
    _rw_direct(txns, analysis, opts.garbage_reads)
    _lost_updates(txns, "w", analysis)
    ok = [t for t in txns if t.type == "ok"]
    ext_w: dict[tuple[Any, Any], list[Txn]] = {}
    ext_r: dict[tuple[Any, Any], list[Txn]] = {}
    for t in ok:
        for k, v in ext_writes(t).items():
            ext_w.setdefault((k, v), []).append(t)
        for k, v in ext_reads(t).items():
            ext_r.setdefault((k, v), []).append(t)
    for (k, v), ws in ext_w.items():
        if len(ws) > 1:
            raise CheckError(f"ops {[w.index for w in ws[:4]]} all wrote {k!r} = {v!r}; "
                             "rw-register needs unique values per key")
    for (k, v), rs in ext_r.items():
        for w in ext_w.get((k, v), ()):
            for r in rs:
                analysis.link(graph, w, r, tg.WR, (k, v, None))
    for k, edges in sorted(_version_graphs(txns, events, opts, analysis).items(),
                           key=lambda kv: repr(kv[0])):
        for v1, v2 in sorted(edges, key=repr):
            for w2 in ext_w.get((k, v2), ()):
                for w1 in ext_w.get((k, v1), ()):
                    analysis.link(graph, w1, w2, tg.WW, (k, v1, v2))
                for r1 in ext_r.get((k, v1), ()):
                    analysis.link(graph, r1, w2, tg.RW, (k, v1, v2))
    return analysis

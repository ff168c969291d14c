"""The transaction dependency graph and the search for anomalous cycles in it.

Vertices are transactions (0..n-1). An edge a -> b carries a bit set of relations: ww (b
overwrote a), wr (b read a's write), rw (b overwrote what a read), process (same client, a
first) and realtime (a completed before b began). The search follows Elle:

1. split the graph into strongly connected components (iterative Tarjan): a cycle never
   leaves its component;
2. in each component, prove which models a cycle violates by looking for components in
   filtered subgraphs (ww only, ww+wr, ww+wr extended by one rw hop, ...); those that stay
   acyclic rule whole cycle classes out without searching for them;
3. search the remaining classes, worst first: pick a pivot edge of the class's special
   relation (a wr edge for G1c, the rw edge of a G-single, ...), check with a reachability
   bit set that the pivot's head reaches its tail again, and only then run a breadth-first
   search over (vertex, automaton state) for the shortest way back that meets the class's
   rules (exactly one rw, no two rw in a row, at least one realtime edge, ...).

Every search is bounded by `limits.txn_cycle_search_steps_max`; running out is reported as
`cycle-search-timeout`, as Elle does, never as a pass.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from keeldb import limits
from keeldb.check import txn_anomalies as ta

WW, WR, RW, PROCESS, REALTIME = 1, 2, 4, 8, 16
EDGE_BITS: tuple[int, ...] = (WW, WR, RW, PROCESS, REALTIME)
EDGE_NAMES: dict[int, str] = {WW: "ww", WR: "wr", RW: "rw", PROCESS: "process",
                              REALTIME: "realtime"}
_BY_NAME = {v: k for k, v in EDGE_NAMES.items()}

Step = tuple[int, int, int]  # (from txn, to txn, one edge bit)


def rels(names: str) -> int:
    """Bit set of space-separated relation names (`"ww wr"` -> WW | WR)."""
    bits = 0
    for name in names.split():
        bits |= _BY_NAME[name]
    return bits


@dataclass
class Graph:
    """A directed graph of transactions whose edges are bit sets of relations."""

    n: int
    out: list[dict[int, int]] = field(default_factory=list)
    edge_count: int = 0
    # Which relation names an edge that carries several (Elle explains a pair by the first
    # analyzer that can: list-append ww, wr, rw; registers wr, ww, rw; then process/realtime).
    priority: tuple[int, ...] = (WW, WR, RW, PROCESS, REALTIME)

    def __post_init__(self) -> None:
        if not self.out:
            self.out = [{} for _ in range(self.n)]

    def link(self, a: int, b: int, bit: int) -> bool:
        """Add relation `bit` to edge a -> b; self-edges are dropped. True if it was new."""
        if a == b:
            return False
        edges = self.out[a]
        old = edges.get(b, 0)
        if old & bit:
            return False
        if not old:
            self.edge_count += 1
        edges[b] = old | bit
        return True

    def label(self, bits: int) -> int:
        """The one relation a multi-relation edge is explained (and searched) as."""
        for bit in self.priority:
            if bits & bit:
                return bit
        raise AssertionError(f"an edge without relations: {bits}")

    def vertices_with_edges(self) -> int:
        seen = set()
        for a, edges in enumerate(self.out):
            if edges:
                seen.add(a)
                seen.update(edges)
        return len(seen)


def tarjan(vertices: Sequence[int], succ: Callable[[int], Iterable[int]]) -> list[list[int]]:
    """Strongly connected components, iteratively (no recursion limit), sinks first."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in vertices:
        if root in index:
            continue
        work: list[tuple[int, Iterable[int]]] = [(root, iter(succ(root)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            pushed = False
            for w in it:  # type: ignore[attr-defined]
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ(w))))
                    pushed = True
                    break
                if w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
            if pushed:
                continue
            work.pop()
            if work and low[v] < low[work[-1][0]]:
                low[work[-1][0]] = low[v]
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
    return out


def _succ_fn(graph: Graph, members: set[int], mask: int, labelled: bool = False
             ) -> Callable[[int], list[int]]:
    out = graph.out
    label = graph.label

    def succ(v: int) -> list[int]:
        return [w for w, bits in out[v].items()
                if (label(bits) if labelled else bits) & mask and w in members]
    return succ


def sccs(graph: Graph, members: Sequence[int], mask: int) -> list[list[int]]:
    """Components of size > 1 of the subgraph on `members` using relations in `mask`."""
    comps = tarjan(members, _succ_fn(graph, set(members), mask))
    return [sorted(c) for c in comps if len(c) > 1]


def _extension_has_cycle(graph: Graph, members: Sequence[int], base: int) -> list[int]:
    """A component of base U (base ; rw): cycles whose rw edges never touch. [] if none."""
    mset = set(members)
    ext: dict[int, set[int]] = {v: set() for v in members}
    for a in members:
        for b, bits in graph.out[a].items():
            if b not in mset or not bits & base:
                continue
            ext[a].add(b)
            for c, bits2 in graph.out[b].items():
                if bits2 & RW and c in mset:
                    if c == a:
                        return [a, b]  # a -base-> b -rw-> a: a one-step loop
                    ext[a].add(c)
    comps = tarjan(list(members), ext.__getitem__)
    big: list[list[int]] = sorted((c for c in comps if len(c) > 1), key=len)
    return sorted(big[0]) if big else []


@dataclass(frozen=True)
class Found:
    """One anomaly found in a component: a cycle, a proven-cyclic model, or a timeout."""

    type: str
    steps: tuple[Step, ...] = ()
    scc: tuple[int, ...] = ()
    model: str = ""
    searched: str = ""


def cycle_exists_cases(graph: Graph, members: Sequence[int]) -> list[Found]:
    """For each model whose forbidden-cycle subgraph has a component here, one case."""
    cases: list[Found] = []
    redundant: set[str] = set()
    for model, base, extra, extension in ta.CYCLE_EXISTS_SPECS:
        if model in redundant:
            continue
        mask = rels(base) | (rels(extra) if extra else 0)
        if extension:
            comp = _extension_has_cycle(graph, members, mask)
        else:
            found = sccs(graph, members, mask)
            comp = sorted(found, key=len)[0] if found else []
        if comp:
            cases.append(Found(ta.cycle_exists_type(model), scc=tuple(comp), model=model))
            redundant |= ta.stronger_models([model])
    return cases


def impossible_cycle_types(cases: Iterable[Found]) -> set[str]:
    """Cycle classes that cannot exist: those forbidden by every model still possible."""
    impossible = ta.stronger_models(c.model for c in cases)
    possible = [m for m, *_ in ta.CYCLE_EXISTS_SPECS if m not in impossible]
    banned: set[str] = set()
    for m in possible:
        banned |= ta.prohibited_by([m])
    return banned & set(ta.CYCLE_TYPES)


def classify(steps: Sequence[Step]) -> str:
    """Elle's name for a cycle, from the relations of its steps."""
    kinds = [bit for _, _, bit in steps]
    n_rw = kinds.count(RW)
    if n_rw == 1:
        base = "G-single-item"
    elif n_rw > 1:
        adjacent = any(kinds[i] == RW and kinds[i - 1] == RW for i in range(len(kinds)))
        base = "G2-item" if adjacent else "G-nonadjacent-item"
    elif WR in kinds:
        base = "G1c"
    elif WW in kinds:
        base = "G0"
    else:  # only process/realtime edges: impossible, those orders are acyclic
        raise AssertionError(f"a cycle of only process/realtime edges: {steps}")
    if REALTIME in kinds:
        return base + "-realtime"
    if PROCESS in kinds:
        return base + "-process"
    return base


class SearchBudgetExceeded(Exception):
    """The cycle search for one class in one component ran out of steps."""


_VAR, _RW_SEEN, _LAST_RW = 1, 2, 4


@dataclass(frozen=True)
class _Spec:
    pivot: int  # the relation of the cycle's first edge
    allowed: int  # relations the way back may use
    need_var: int  # a process/realtime relation the cycle must contain (0: none)
    need_rw: bool  # the way back must hold at least one more rw
    nonadjacent: bool  # no two rw edges in a row (cyclically)


def _spec(cycle_type: str) -> _Spec:
    var = REALTIME if cycle_type.endswith("-realtime") else (
        PROCESS if cycle_type.endswith("-process") else 0)
    base = cycle_type.removesuffix("-realtime").removesuffix("-process")
    if base == "G0":
        return _Spec(var or WW, WW | var, var, False, False)
    if base == "G1c":
        return _Spec(WR, WW | WR | var, var, False, False)
    if base == "G-single-item":
        return _Spec(RW, WW | WR | var, var, False, False)
    if base == "G-nonadjacent-item":
        return _Spec(RW, WW | WR | RW | var, var, True, True)
    assert base == "G2-item", cycle_type
    return _Spec(RW, WW | WR | RW | var, var, True, False)


class _Reach:
    """Reachability between vertices of one subgraph, as bit sets over its components."""

    def __init__(self, graph: Graph, members: Sequence[int], mask: int) -> None:
        succ = _succ_fn(graph, set(members), mask, labelled=True)
        comps = tarjan(members, succ)  # sinks first: successors are done before us
        self.comp: dict[int, int] = {}
        for i, c in enumerate(comps):
            for v in c:
                self.comp[v] = i
        self.reach: list[int] = []
        for i, c in enumerate(comps):
            bits = 1 << i
            for v in c:
                for w in succ(v):
                    j = self.comp[w]
                    if j != i:
                        bits |= self.reach[j]
            self.reach.append(bits)

    def reaches(self, a: int, b: int) -> bool:
        return bool(self.reach[self.comp[a]] >> self.comp[b] & 1)


def _way_back(graph: Graph, members: set[int], spec: _Spec, a: int, b: int,
              budget: list[int]) -> list[Step] | None:
    """Shortest walk b -> a completing the pivot a -> b into a cycle of the spec's class."""
    start = 0
    if not spec.need_var or spec.pivot == spec.need_var:
        start |= _VAR
    if not spec.need_rw:
        start |= _RW_SEEN
    if spec.pivot == RW:
        start |= _LAST_RW
    parent: dict[tuple[int, int], tuple[tuple[int, int], int] | None] = {(b, start): None}
    queue = deque([(b, start)])
    out = graph.out
    while queue:
        v, state = queue.popleft()
        budget[0] -= 1
        if budget[0] < 0:
            raise SearchBudgetExceeded
        for w, bits in out[v].items():
            bit = graph.label(bits)
            if not bit & spec.allowed or w not in members:
                continue
            if bit == RW and spec.nonadjacent and state & _LAST_RW:
                continue
            nstate = (state & ~_LAST_RW) | (_LAST_RW if bit == RW else 0)
            if bit == RW:
                nstate |= _RW_SEEN
            if bit == spec.need_var:
                nstate |= _VAR
            if w == a:
                if (nstate & _VAR and nstate & _RW_SEEN
                        and not (spec.nonadjacent and nstate & _LAST_RW)):
                    return _unwind(parent, (v, state), [(v, a, bit)])
                continue
            key = (w, nstate)
            if key not in parent:
                parent[key] = ((v, state), bit)
                queue.append(key)
    return None


def _unwind(parent: dict[tuple[int, int], tuple[tuple[int, int], int] | None],
            node: tuple[int, int], tail: list[Step]) -> list[Step]:
    steps = tail
    while True:
        entry = parent[node]
        if entry is None:
            break
        prev, bit = entry
        steps.append((prev[0], node[0], bit))
        node = prev
    steps.reverse()
    return steps


def search(graph: Graph, members: Sequence[int], cycle_type: str,
           budget: list[int]) -> list[Step] | None:
    """A short cycle of `cycle_type` within `members`, or None if there is none."""
    spec = _spec(cycle_type)
    mset = set(members)
    # Reachability bit sets cost members^2 bits: past the limit every pivot is searched and
    # the step budget bounds the work instead.
    reach = (_Reach(graph, members, spec.allowed)
             if len(members) <= limits.txn_reach_members_max else None)
    best: list[Step] | None = None
    tried = 0
    for a in members:
        for b, bits in sorted(graph.out[a].items()):
            if graph.label(bits) != spec.pivot or b not in mset:
                continue
            if reach is not None and not reach.reaches(b, a):
                continue
            back = _way_back(graph, mset, spec, a, b, budget)
            if back is None:
                continue
            cycle = [(a, b, spec.pivot), *back]
            if best is None or len(cycle) < len(best):
                best = cycle
            tried += 1
            if tried >= limits.txn_cycle_candidates_max or len(best) == 2:
                return best
    return best


def any_cycle(graph: Graph, members: Sequence[int]) -> list[Step]:
    """Some cycle through the first member, on any relations (fallback after a timeout)."""
    mset = set(members)
    a = members[0]
    parent: dict[int, tuple[int, int] | None] = {a: None}
    queue = deque([a])
    while queue:
        v = queue.popleft()
        for w, bits in graph.out[v].items():
            if w not in mset:
                continue
            bit = graph.label(bits)
            if w == a:
                steps = [(v, a, bit)]
                node = v
                while parent[node] is not None:
                    prev, pbit = parent[node]  # type: ignore[misc]
                    steps.append((prev, node, pbit))
                    node = prev
                steps.reverse()
                return steps
            if w not in parent:
                parent[w] = (v, bit)
                queue.append(w)
    raise AssertionError("a strongly connected component always has a cycle")


def analyze_component(graph: Graph, members: Sequence[int]) -> list[Found]:
    """Every anomaly class this component proves: cycles found, models proven cyclic."""
    exists = cycle_exists_cases(graph, members)
    skip = impossible_cycle_types(exists)
    cycles: list[Found] = []
    for cycle_type in ta.CYCLE_TYPES:
        if cycle_type in skip:
            continue
        budget = [limits.txn_cycle_search_steps_max]
        try:
            steps = search(graph, members, cycle_type, budget)
        except SearchBudgetExceeded:
            fallback = any_cycle(graph, members)
            cycles.append(Found("cycle-search-timeout", scc=tuple(members),
                                searched=cycle_type))
            cycles.append(Found(classify(fallback), steps=tuple(fallback)))
            break
        if steps is not None:
            found_type = classify(steps)
            cycles.append(Found(found_type, steps=tuple(steps)))
            skip |= ta.implied_anomalies([found_type])
    # A model proven cyclic by a specific cycle needs no "a cycle exists somewhere" case.
    proven = ta.impossible_models(c.type for c in cycles)
    return [c for c in exists if c.model not in proven] + cycles


def analyze(graph: Graph) -> list[Found]:
    """Anomalies of every strongly connected component of the whole graph."""
    everything = list(range(graph.n))
    found: list[Found] = []
    for comp in sccs(graph, everything, WW | WR | RW | PROCESS | REALTIME):
        found.extend(analyze_component(graph, comp))
    return found


def process_edges(graph: Graph, order: Iterable[tuple[object, int]]) -> None:
    """Link each process's committed transactions in order. `order`: (process, txn)."""
    last: dict[object, int] = {}
    for process, t in order:
        if process in last:
            graph.link(last[process], t, PROCESS)
        last[process] = t


def realtime_edges(graph: Graph, events: Iterable[tuple[str, int]]) -> None:
    """Link a -> b whenever a completed before b was invoked (a transitive reduction).

    `events`: ("invoke", txn) and ("ok", txn) in history order. Completed transactions wait
    in a frontier; an invocation links the whole frontier to it, and a completion drops from
    the frontier every transaction already linked to it (they are implied through it).
    """
    frontier: set[int] = set()
    out = graph.out
    for kind, t in events:
        if kind == "invoke":
            for f in frontier:
                graph.link(f, t, REALTIME)
        else:
            frontier = {f for f in frontier if not out[f].get(t, 0) & REALTIME}
            frontier.add(t)

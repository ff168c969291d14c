"""Which anomalies exist, what implies what, and which consistency model forbids which.

These are the facts of Adya's isolation levels as organised by Elle's consistency-model
lattice (jepsen-io/elle, `consistency_model.clj`): three small graphs held as data.

- `IMPLIES`: anomaly a -> anomalies a is also an instance of (G0 is a G1c, G1a is a G1, ...);
- `MODEL_IMPLIES`: model m -> weaker models m also satisfies (serializable -> repeatable read);
- `PROSCRIBES`: model m -> anomalies m forbids directly (a model also forbids everything its
  weaker models forbid, and every anomaly that implies a forbidden one).

Model names are canonical inside (`PL-2`); `friendly` gives the names users type
(`read-committed`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

IMPLIES: dict[str, tuple[str, ...]] = {
    "G0": ("G1c", "G0-process"),
    "G0-process": ("G1c-process", "G0-realtime"),
    "G0-realtime": ("G1c-realtime",),
    "G1a": ("G1",),
    "G1b": ("G1",),
    "G1c": ("G1", "G1c-process"),
    "G1c-process": ("G1c-realtime", "G1-process"),
    "G1c-realtime": ("G1-realtime",),
    "G1": ("G1-process",),
    "G1-process": ("G1-realtime",),
    "G-single-item": ("G-single", "G-single-item-process", "G-nonadjacent-item"),
    "G-single-item-process": ("G-single-process", "G-single-item-realtime",
                              "G-nonadjacent-item-process"),
    "G-single-item-realtime": ("G-single-realtime", "G-nonadjacent-item-realtime"),
    "G-single": ("G-nonadjacent", "GSIb", "G-single-process"),
    "G-single-process": ("G-nonadjacent-process", "G-single-realtime"),
    "G-single-realtime": ("G-nonadjacent-realtime",),
    "G-nonadjacent-item": ("G-nonadjacent", "G2-item", "G-nonadjacent-item-process"),
    "G-nonadjacent-item-process": ("G-nonadjacent-process", "G2-item-process",
                                   "G-nonadjacent-item-realtime"),
    "G-nonadjacent-item-realtime": ("G2-item-realtime", "G-nonadjacent-realtime"),
    "G-nonadjacent": ("G2", "G-nonadjacent-process"),
    "G-nonadjacent-process": ("G2-process", "G-nonadjacent-realtime"),
    "G-nonadjacent-realtime": ("G2-realtime",),
    "G2": ("G2-process",),
    "G2-item": ("G2", "G2-item-process"),
    "G2-item-process": ("G2-process", "G2-item-realtime"),
    "G2-item-realtime": ("G2-realtime",),
    "G2-process": ("G2-realtime",),
    "GSIa": ("GSI",),
    "GSIb": ("GSI",),
    # Two reads that no single order of appends explains: someone saw uncommitted state.
    "incompatible-order": ("G1a",),
    # A transaction observing its own later write is a one-transaction cycle.
    "future-read": ("G1c",),
    "dirty-update": ("G1a",),
    "lost-update": ("write-skew", "G2-item"),
    "write-skew": ("G2",),
}

# Not implication, only "worse than": used to order the cycle searches, worst first.
SEVERITY: dict[str, tuple[str, ...]] = {
    "G0": ("G1c",),
    "G0-process": ("G1c-process",),
    "G0-realtime": ("G1c-realtime",),
    "G1c": ("G-single", "G2-item"),
    "G1c-process": ("G-single-process", "G2-item-process"),
    "G1c-realtime": ("G-single-realtime", "G2-item-realtime"),
    "G2": ("G0-process",),
    "G2-process": ("G0-realtime",),
}

CANONICAL: dict[str, str] = {
    "consistent-view": "PL-2+",
    "conflict-serializable": "PL-3",
    "cursor-stability": "PL-CS",
    "forward-consistent-view": "PL-FCV",
    "monotonic-snapshot-read": "PL-MSR",
    "monotonic-view": "PL-2L",
    "read-committed": "PL-2",
    "read-uncommitted": "PL-1",
    "repeatable-read": "PL-2.99",
    "serializable": "PL-3",
    "snapshot-isolation": "PL-SI",
    "strict-serializable": "PL-SS",
    "strong-serializable": "PL-SS",
    "update-serializable": "PL-3U",
    "strong-session-read-uncommitted": "strong-session-PL-1",
    "strong-session-read-committed": "strong-session-PL-2",
    "strong-read-uncommitted": "strong-PL-1",
    "strong-read-committed": "strong-PL-2",
}

# Canonical -> the one name we print (several friendly names share PL-3 and PL-SS).
FRIENDLY: dict[str, str] = {
    **{canon: name for name, canon in CANONICAL.items()
       if name not in ("conflict-serializable", "strong-serializable")},
}

_MODEL_EDGES: dict[str, tuple[str, ...]] = {
    "causal-cerone": ("read-atomic",),
    "consistent-view": ("cursor-stability", "monotonic-view"),
    "conflict-serializable": ("view-serializable",),
    "cursor-stability": ("read-committed", "PL-2"),
    "forward-consistent-view": ("consistent-view",),
    "PL-2": ("PL-1",),
    "PL-3": ("repeatable-read", "update-serializable"),
    "update-serializable": ("forward-consistent-view",),
    "monotonic-atomic-view": ("read-committed",),
    "monotonic-view": ("PL-2",),
    "monotonic-snapshot-read": ("PL-2",),
    "parallel-snapshot-isolation": ("causal-cerone", "update-atomic"),
    "prefix": ("causal-cerone",),
    "read-atomic": ("monotonic-atomic-view",),
    "read-committed": ("read-uncommitted",),
    "repeatable-read": ("cursor-stability", "monotonic-atomic-view"),
    "update-atomic": ("read-atomic",),
    "serializable": ("repeatable-read", "snapshot-isolation", "view-serializable"),
    "session-serializable": ("1SR",),
    "snapshot-isolation": ("forward-consistent-view", "monotonic-atomic-view",
                           "monotonic-snapshot-read", "parallel-snapshot-isolation", "prefix"),
    "strict-serializable": ("PL-3", "serializable", "linearizable", "snapshot-isolation",
                            "strong-snapshot-isolation", "strong-session-serializable"),
    "strong-session-PL-1": ("PL-1",),
    "strong-session-PL-2": ("PL-2", "strong-session-PL-1"),
    "strong-PL-1": ("strong-session-PL-1",),
    "strong-PL-2": ("strong-session-PL-2", "strong-PL-1"),
    "strong-session-serializable": ("serializable", "strong-session-snapshot-isolation"),
    "strong-session-snapshot-isolation": ("snapshot-isolation", "strong-session-PL-2"),
    "strong-serializable": ("session-serializable",),
    "strong-snapshot-isolation": ("strong-session-snapshot-isolation", "strong-PL-2"),
    "linearizable": ("sequential",),
    "sequential": ("causal",),
    "causal": ("writes-follow-reads", "PRAM"),
    "PRAM": ("monotonic-reads", "monotonic-writes", "read-your-writes"),
}


def canonical(model: str) -> str:
    """The canonical name of a consistency model (`read-committed` -> `PL-2`)."""
    return CANONICAL.get(model, model)


def friendly(model: str) -> str:
    """The name users know a canonical model by (`PL-2` -> `read-committed`)."""
    return FRIENDLY.get(model, model)


def _canonical_graph(edges: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for src, dsts in edges.items():
        out.setdefault(canonical(src), set()).update(canonical(d) for d in dsts)
    return out


MODEL_IMPLIES: dict[str, set[str]] = _canonical_graph(_MODEL_EDGES)

PROSCRIBES: dict[str, set[str]] = _canonical_graph({
    "causal-cerone": ("internal", "G1a"),
    "cursor-stability": ("G1", "G-cursor", "lost-update"),
    "monotonic-view": ("G1", "G-monotonic"),
    "monotonic-snapshot-read": ("G1", "G-MSR"),
    "consistent-view": ("G1", "G-single"),
    "forward-consistent-view": ("G1", "G-SIb"),
    "parallel-snapshot-isolation": ("internal", "G1a"),
    "PL-3": ("G1", "G2", "predicate-read-miss", "PL-3-cycle-exists"),
    "PL-2": ("G1", "PL-2-cycle-exists"),
    # No Adya history has duplicated appends or a cyclic version order.
    "PL-1": ("G0", "duplicate-elements", "cyclic-versions", "garbage-read",
             "PL-1-cycle-exists"),
    "prefix": ("internal", "G1a"),
    "serializable": ("internal",),
    "snapshot-isolation": ("internal", "G1", "G-SI", "G-nonadjacent", "PL-SI-cycle-exists"),
    "read-atomic": ("internal", "G1a", "future-read"),
    "repeatable-read": ("G1", "G2-item", "PL-2.99-cycle-exists", "lost-update"),
    "update-atomic": ("lost-update",),
    "strict-serializable": ("G1", "G1c-realtime", "G2-realtime", "PL-SS-cycle-exists"),
    "strong-session-PL-1": ("strong-session-PL-1-cycle-exists", "G0-process"),
    "strong-session-PL-2": ("strong-session-PL-2-cycle-exists", "G1c-process"),
    "strong-PL-1": ("strong-PL-1-cycle-exists", "G0-realtime"),
    "strong-PL-2": ("strong-PL-2-cycle-exists", "G1c-realtime"),
    "strong-session-snapshot-isolation": ("internal", "G1-process", "G-nonadjacent-process",
                                          "strong-session-snapshot-isolation-cycle-exists"),
    "strong-snapshot-isolation": ("internal", "G1-realtime", "G-nonadjacent-realtime",
                                  "strong-snapshot-isolation-cycle-exists"),
    "strong-session-serializable": ("G1-process", "G2-process",
                                    "strong-session-serializable-cycle-exists"),
    "update-serializable": ("G1", "G-update"),
})

ALL_MODELS: frozenset[str] = frozenset(
    set(MODEL_IMPLIES) | {m for ms in MODEL_IMPLIES.values() for m in ms}
    | set(PROSCRIBES) | set(CANONICAL) | set(CANONICAL.values()))

# Anomalies that make a verdict "unknown" rather than "invalid".
UNKNOWN_TYPES: frozenset[str] = frozenset({"empty-transaction-graph", "cycle-search-timeout"})

# The isolation levels keeldb names in its reports, weakest first.
LEVELS: tuple[str, ...] = ("read-uncommitted", "read-committed", "snapshot-isolation",
                           "serializable", "strict-serializable")


def _closure(start: Iterable[str], edges: Mapping[str, Iterable[str]]) -> set[str]:
    """Everything reachable from `start` (inclusive) along `edges`."""
    seen = set(start)
    stack = list(seen)
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _reverse(edges: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    rev: dict[str, set[str]] = {}
    for src, dsts in edges.items():
        for d in dsts:
            rev.setdefault(d, set()).add(src)
    return rev


_IMPLIED_BY = _reverse(IMPLIES)
_MODEL_IMPLIED_BY = _reverse(MODEL_IMPLIES)
_PROSCRIBED_BY = _reverse(PROSCRIBES)


def validate_models(models: Iterable[str]) -> list[str]:
    """Return the models' canonical names; raise ValueError naming an unknown one."""
    out = []
    for m in models:
        if m not in ALL_MODELS:
            known = ", ".join(sorted(FRIENDLY.get(x, x) for x in LEVELS))
            raise ValueError(f"unknown consistency model {m!r}; known levels include {known}")
        out.append(canonical(m))
    return out


def implied_anomalies(anomalies: Iterable[str]) -> set[str]:
    """The anomalies, plus every anomaly they are instances of."""
    return _closure(anomalies, IMPLIES)


def anomalies_implying(anomalies: Iterable[str]) -> set[str]:
    """The anomalies, plus every anomaly that is an instance of one of them."""
    return _closure(anomalies, _IMPLIED_BY)


def prohibited_by(models: Iterable[str]) -> set[str]:
    """Every anomaly that cannot be present if all of `models` hold."""
    direct: set[str] = set()
    for m in _closure(validate_models(models), MODEL_IMPLIES):
        direct |= PROSCRIBES.get(m, set())
    return anomalies_implying(direct)


def impossible_models(anomalies: Iterable[str]) -> set[str]:
    """Canonical models ruled out by the presence of `anomalies`."""
    direct: set[str] = set()
    for a in implied_anomalies(anomalies):
        direct |= _PROSCRIBED_BY.get(a, set())
    return _closure(direct, _MODEL_IMPLIED_BY)


def stronger_models(models: Iterable[str]) -> set[str]:
    """The models plus every model that implies one of them (all impossible if they are)."""
    return _closure((canonical(m) for m in models), _MODEL_IMPLIED_BY)


def weakest(models: Iterable[str]) -> set[str]:
    """The subset of `models` not implying another member (the boundary of what failed)."""
    ms = set(models)
    return {m for m in ms if not (_closure([m], MODEL_IMPLIES) - {m}) & ms}


def boundary(anomalies: Iterable[str]) -> tuple[list[str], list[str]]:
    """(`not`, `also_not`): the weakest models ruled out, and the other ruled-out ones."""
    impossible = impossible_models(anomalies)
    weak = weakest(impossible)
    return (sorted(friendly(m) for m in weak),
            sorted({friendly(m) for m in impossible - weak}))


def _depths() -> dict[str, int]:
    """Topological depth of each anomaly in IMPLIES + SEVERITY (0 = implied by none)."""
    edges: dict[str, set[str]] = {}
    for graph in (IMPLIES, SEVERITY):
        for src, dsts in graph.items():
            edges.setdefault(src, set()).update(dsts)
            for d in dsts:
                edges.setdefault(d, set())
    indeg = {v: 0 for v in edges}
    for targets in edges.values():
        for d in targets:
            indeg[d] += 1
    depth: dict[str, int] = {}
    layer = sorted(v for v, n in indeg.items() if n == 0)
    level = 0
    while layer:
        nxt = []
        for v in layer:
            depth[v] = level
            for d in edges[v]:
                indeg[d] -= 1
                if indeg[d] == 0:
                    nxt.append(d)
        layer = sorted(nxt)
        level += 1
    assert len(depth) == len(edges), "the anomaly graphs must be acyclic"
    return depth


DEPTH: dict[str, int] = _depths()

# The cycle classes the searcher can report (item-level only: no predicates here), in the
# order they are searched: worst first, by depth then name.
_BASE_CYCLES = ("G0", "G1c", "G-single-item", "G-nonadjacent-item", "G2-item")
CYCLE_TYPES: tuple[str, ...] = tuple(sorted(
    (base + variant for base in _BASE_CYCLES for variant in ("", "-process", "-realtime")),
    key=lambda t: (DEPTH.get(t, 0), t)))

# Models whose violation a bare strongly connected component proves, with the edges (and the
# one-rw "extension" for SI) that its dependency graph is built from.
CYCLE_EXISTS_SPECS: tuple[tuple[str, str, str, bool], ...] = (
    # (canonical model, base relations, extra relation, extension by rw?)
    ("PL-1", "ww", "", False),
    ("PL-2", "ww wr", "", False),
    ("PL-SI", "ww wr", "", True),
    ("PL-2.99", "ww wr rw", "", False),
    ("PL-3", "ww wr rw", "", False),
    ("strong-session-PL-1", "ww", "process", False),
    ("strong-session-PL-2", "ww wr", "process", False),
    ("strong-session-snapshot-isolation", "ww wr", "process", True),
    ("strong-session-serializable", "ww wr rw", "process", False),
    ("strong-PL-1", "ww", "realtime", False),
    ("strong-PL-2", "ww wr", "realtime", False),
    ("strong-snapshot-isolation", "ww wr", "realtime", True),
    ("PL-SS", "ww wr rw", "realtime", False),
)


def cycle_exists_type(model: str) -> str:
    """The anomaly name for "some cycle forbidden by `model` exists" (friendly model name)."""
    return f"{model}-cycle-exists"


def prohibited_for(models: Iterable[str] | None, anomalies: Iterable[str] = ()) -> set[str]:
    """Anomalies that fail a check asking for `models` to hold and `anomalies` to be absent."""
    return anomalies_implying(anomalies) | (prohibited_by(models) if models else set())


def violated_levels(found: Iterable[str]) -> dict[str, list[str]]:
    """For each of `LEVELS`, the found anomalies it forbids (empty list: the level holds)."""
    ordered = sorted(set(found))
    out: dict[str, list[str]] = {}
    for level in LEVELS:
        banned = prohibited_by([level])
        out[level] = [a for a in ordered if a in banned]
    return out

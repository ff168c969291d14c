"""Unit tests of the transactional checker: lattice, graph search, workloads, explanations."""

from __future__ import annotations

from typing import Any

import pytest

from keeldb import limits
from keeldb.check import txn_anomalies as ta
from keeldb.check import txn_graph as tg
from keeldb.check.history import Op
from keeldb.check.txn import collect_txns, transactions
from keeldb.check.txn_edn import parse_history, read_all
from keeldb.errors import CheckError


def ok(*mops: list[Any], process: int = 0) -> dict[str, Any]:
    return {"type": "ok", "process": process, "value": [list(m) for m in mops]}


def history(*ops: dict[str, Any]) -> list[Op]:
    return [Op(i, o["process"], o["type"], o.get("f", "txn"), value=o["value"])
            for i, o in enumerate(ops)]


# --- the lattice ----------------------------------------------------------------------


@pytest.mark.parametrize(("found", "weakest"), [
    (["G0"], ["read-uncommitted"]),
    (["G1b"], ["read-committed"]),
    (["G-single-item"], ["consistent-view", "repeatable-read"]),
    (["G-nonadjacent-item"], ["repeatable-read", "snapshot-isolation"]),
    (["G2-item"], ["repeatable-read"]),
    (["lost-update"], ["cursor-stability", "update-atomic"]),
    (["G-single-item-realtime"], ["strong-snapshot-isolation"]),
    (["internal"], ["read-atomic"]),
    (["empty-transaction-graph"], []),
])
def test_boundary_names_the_weakest_violated_models(found: list[str],
                                                   weakest: list[str]) -> None:
    assert ta.boundary(found)[0] == weakest


def test_levels_forbid_what_the_literature_says() -> None:
    levels = ta.violated_levels(["G2-item"])  # write skew
    assert levels["read-committed"] == [] and levels["snapshot-isolation"] == []
    assert levels["serializable"] == ["G2-item"] == levels["strict-serializable"]
    levels = ta.violated_levels(["G-single-item", "G1a"])
    assert levels["read-uncommitted"] == []
    assert levels["read-committed"] == ["G1a"]
    assert levels["snapshot-isolation"] == ["G-single-item", "G1a"]
    assert ta.violated_levels(["G1c-realtime"])["serializable"] == []
    assert ta.violated_levels(["G1c-realtime"])["strict-serializable"] == ["G1c-realtime"]


def test_implications() -> None:
    assert {"G1c", "G1", "G0-realtime"} <= ta.implied_anomalies(["G0"])
    assert "G2-item" in ta.implied_anomalies(["lost-update"])
    assert {"G0", "G1a", "G1b", "G1c", "dirty-update"} <= ta.prohibited_for(None, ["G1"])
    assert "G2-item" not in ta.prohibited_for(["snapshot-isolation"])
    with pytest.raises(ValueError, match="unknown consistency model 'bogus'"):
        ta.prohibited_by(["bogus"])


# --- graph algorithms ------------------------------------------------------------------


def test_tarjan_is_iterative_on_a_long_cycle() -> None:
    n = 50_000  # far deeper than Python's recursion limit
    g = tg.Graph(n)
    for i in range(n):
        g.link(i, (i + 1) % n, tg.WW)
    comps = tg.sccs(g, list(range(n)), tg.WW)
    assert len(comps) == 1 and len(comps[0]) == n
    assert tg.classify(tg.search(g, list(range(n)), "G0", [10 * n]) or []) == "G0"


@pytest.mark.parametrize("reach_max", [limits.txn_reach_members_max, 0])
def test_search_honours_cycle_rules(monkeypatch: pytest.MonkeyPatch, reach_max: int) -> None:
    monkeypatch.setattr(limits, "txn_reach_members_max", reach_max)  # 0: no bit sets
    g = tg.Graph(4)
    # 0 -rw-> 1 -wr-> 2 -rw-> 3 -wr-> 0: two rw edges, never adjacent.
    g.link(0, 1, tg.RW)
    g.link(1, 2, tg.WR)
    g.link(2, 3, tg.RW)
    g.link(3, 0, tg.WR)
    members = [0, 1, 2, 3]
    budget = [1000]
    assert tg.search(g, members, "G-single-item", budget) is None
    cycle = tg.search(g, members, "G-nonadjacent-item", budget)
    assert cycle is not None and tg.classify(cycle) == "G-nonadjacent-item"
    found = [f.type for f in tg.analyze_component(g, members)]
    assert found == ["G-nonadjacent-item"]


def test_realtime_edges_are_a_transitive_reduction() -> None:
    g = tg.Graph(3)
    # 0 and 1 complete, then 2 begins: 0 -> 2 and 1 -> 2; 0 -> 1 only if 1 began after 0.
    tg.realtime_edges(g, [("invoke", 0), ("ok", 0), ("invoke", 1), ("ok", 1),
                          ("invoke", 2), ("ok", 2)])
    assert g.out[0] == {1: tg.REALTIME}
    assert g.out[1] == {2: tg.REALTIME}


def test_budget_exhaustion_is_unknown_not_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    h = history(ok(["append", "x", 1], ["r", "y", None]), ok(["append", "y", 1],
                                                             ["r", "x", None]))
    monkeypatch.setattr(limits, "txn_cycle_search_steps_max", 0)
    result = transactions(h, "serializable")
    assert "cycle-search-timeout" in result.details["found_types"]
    assert not result.valid


# --- workloads and explanations ----------------------------------------------------------


def test_g0_is_explained_step_by_step() -> None:
    h = history(ok(["append", "x", 1], ["append", "y", 1]),
                ok(["append", "x", 2], ["append", "y", 2]),
                ok(["r", "x", [1, 2]], ["r", "y", [2, 1]]))
    result = transactions(h, "read-uncommitted")
    assert result.details["anomaly_types"] == ["G0"]
    (anomaly,) = result.anomalies
    assert anomaly.kind == "G0" and sorted(anomaly.ops) == [0, 1]
    text = anomaly.explanation
    assert "T2 appended 2 after T1 appended 1 to key 'x'" in text
    assert "T2 < T1 because T1 appended 1 after T2 appended 2 to key 'y'" in text
    assert [s["type"] for s in anomaly.data["steps"]] == ["ww", "ww"]
    assert result.details["levels"]["read-uncommitted"] == ["G0"]


def test_write_skew_is_allowed_by_snapshot_isolation_only() -> None:
    h = history(ok(["r", "x", None], ["append", "y", 1]),
                ok(["r", "y", None], ["append", "x", 1]))
    assert transactions(h, "read-committed").valid
    assert transactions(h, "snapshot-isolation").valid
    result = transactions(h, "serializable")
    assert result.details["anomaly_types"] == ["G2-item"]
    assert "observed the initial (empty) state of key 'x'" in result.anomalies[0].explanation


def test_register_cycle_is_explained() -> None:
    h = history(ok(["w", "x", 1], ["r", "y", 1]), ok(["w", "y", 1], ["r", "x", 1]))
    result = transactions(h, "read-committed", "rw-register")
    assert result.details["anomaly_types"] == ["G1c"]
    assert "T1 wrote 'x' = 1, which was read by T2" in result.anomalies[0].explanation


def test_garbage_reads() -> None:
    la = history(ok(["append", "x", 1]), ok(["r", "x", [1]], ["r", "y", [7]]))
    result = transactions(la, "read-uncommitted")
    assert result.details["anomaly_types"] == ["garbage-read"]
    assert "no transaction ever appended 7" in result.anomalies[0].explanation
    rw = history(ok(["w", "x", 1]), ok(["r", "x", 1], ["r", "y", 5]))
    assert transactions(rw, "read-uncommitted", "rw-register").details["anomaly_types"] == [
        "garbage-read"]
    assert transactions(rw, "read-uncommitted", "rw-register", garbage_reads=False).valid


def test_register_lost_update() -> None:
    h = history(ok(["r", "x", None], ["w", "x", 1]), ok(["r", "x", None], ["w", "x", 2]))
    result = transactions(h, "repeatable-read", "rw-register")
    assert "lost-update" in result.details["anomaly_types"]


def test_open_invocations_are_info_and_nemesis_ops_are_skipped() -> None:
    h = [Op(0, 0, "invoke", "txn", value=[["append", "x", 1]]),
         Op(1, "nemesis", "info", "start", value=None),
         Op(2, 1, "invoke", "txn", value=[["r", "x", None]]),
         Op(3, 1, "ok", "txn", value=[["r", "x", [1]]])]
    txns, events = collect_txns(h)
    assert [(t.index, t.type) for t in txns] == [(3, "ok"), (0, "info")]
    assert ("invoke", 1) in events
    # The read of 1 is explained by the still-open append: no garbage, no G1a.
    assert transactions(h, "strict-serializable").valid


@pytest.mark.parametrize(("value", "message"), [
    ([["put", "x", 1]], "micro-op 'put' is not part of the list-append workload"),
    ([["append", "x"]], "is not \\[f, key, value\\]"),
    (5, "must be a list of"),
])
def test_bad_input_names_the_op(value: Any, message: str) -> None:
    with pytest.raises(CheckError, match=message):
        transactions([Op(7, 0, "ok", "txn", value=value)])


def test_duplicate_appends_are_refused() -> None:
    h = history(ok(["append", "x", 1]), ok(["append", "x", 1]))
    with pytest.raises(CheckError, match="appended to key 'x' again"):
        transactions(h)


def test_unknown_workload_and_model() -> None:
    with pytest.raises(CheckError, match="unknown workload"):
        transactions([], workload="bank")
    with pytest.raises(CheckError, match="unknown consistency model"):
        transactions([], "snapshot")


# --- the fast EDN reader ----------------------------------------------------------------


def test_edn_reader_subset_and_errors() -> None:
    text = ('; comment\n{:type :ok, :value [[:append 1 2] [:r 1 nil]] :s #{1} :t #inst "x"'
            ' :e "a \\"q\\""}\n')
    ((line, value),) = read_all(text)
    assert line == 2
    assert value == {"type": "ok", "value": [["append", 1, 2], ["r", 1, None]], "s": [1],
                     "t": "x", "e": 'a "q"'}
    with pytest.raises(CheckError, match="h.edn:3: '\\{' is never closed"):
        read_all('{:a 1}\n\n{:b [1 2]', "h.edn")
    with pytest.raises(CheckError, match="h.edn:2: missing field 'type'"):
        parse_history('{:type :ok :process 0 :f :txn :value []}\n{:process 1 :f :txn}',
                      "h.edn")

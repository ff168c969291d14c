"""Pipelined simulator clients: bursts on one connection, recorded with `after` links."""

from __future__ import annotations

from keeldb.testing.cluster import SimConfig, run_sim


def test_pipelined_raft_kv_run_records_order_links_and_checks_clean() -> None:
    r = run_sim(SimConfig("raft-kv", 1, pipeline=4))
    assert r.ok, r.violations
    linked = [o for o in r.history if o.after is not None]
    assert linked, "no pipelined burst in the run"
    by_index = {o.index: o for o in r.history}
    for o in linked:  # each link names an earlier invocation of the same burst
        assert o.after is not None
        pred = by_index[o.after]
        assert pred.type == "invoke" and pred.index < o.index and pred.time == o.time
    assert "--pipeline 4" in r.repro


def test_pipeline_off_keeps_one_request_at_a_time() -> None:
    r = run_sim(SimConfig("raft-kv", 1))
    assert all(o.after is None for o in r.history)

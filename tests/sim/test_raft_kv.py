"""The raft-kv system under the simulator's faults: linearizable, no acknowledged write lost,
live after healing. The default run takes a sample; `pytest -m slow` runs the swarm."""

from __future__ import annotations

import pytest

from keeldb import limits
from keeldb.node.effects import ClientRequest, Effect
from keeldb.runtime.sim.faults import parse_faults
from keeldb.testing import cluster
from keeldb.testing.cluster import SimConfig, SystemSpec, run_sim
from keeldb.testing.raft_kv import SimRaftKvNode

DEFAULT_SEEDS = range(1, 41)
# Seeds that once failed, with what they found:
# 4, 39, 40: a crash between the first snapshot write and the first log write left no log;
#            recovery refused to start ("no base record") instead of bootstrapping again.
# 528: a failed directory fsync left the log's rename undurable; a later power loss removed the
#      whole log (term and vote too) and a leader of a lost term resurfaced. Now every start
#      makes the files it read durable (a replace syncs file and directory) before running.
# 243: a transient bit flip hit the same bit of the small snapshot file on two reads in a row,
#      so the node took it for real corruption and refused to start; damage now needs three
#      identical reads.
# bank seed 3 (in test_raft_kv_other_workloads): the log replace of an installed snapshot
#      failed (ENOSPC); the restarted node appended after the old log's entries, leaving a
#      gap. A starting node now rewrites its log from the recovered state.
REGRESSION_SEEDS = (4, 39, 40, 243, 528)


def _check(seed: int, workload: str = "register", faults: str | None = None,
           pipeline: int = limits.sim_pipeline_max) -> None:
    """One seed as `keeldb sim --system raft-kv` runs it (pipelined clients by default)."""
    plan = None if faults is None else parse_faults(faults)
    result = run_sim(SimConfig("raft-kv", seed, plan, workload=workload, pipeline=pipeline))
    assert result.ok, f"{result.violations[:3]}\nreproduce: {result.repro}"
    assert any(op.type == "ok" for op in result.history), result.repro


@pytest.mark.parametrize("seed", sorted(set(DEFAULT_SEEDS) | set(REGRESSION_SEEDS)))
def test_raft_kv_swarm_sample(seed: int) -> None:
    _check(seed)


@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_raft_kv_regression_seeds_one_request_at_a_time(seed: int) -> None:
    """The schedules these seeds were kept for (found before clients pipelined)."""
    _check(seed, pipeline=0)


@pytest.mark.parametrize("seed", [6, 18])
def test_a_lost_proposal_retried_late_does_not_reorder_a_pipeline(seed: int) -> None:
    """Found by pipelined clients: a write whose first proposal was lost under disk faults
    was re-proposed after later writes of the same burst applied, and overwrote them.
    The session table now refuses such a write (TRYAGAIN: nothing applied)."""
    _check(seed, faults="drop,duplicate,isolate,lose-unsynced,torn-write,bitflip,enospc,pause",
           pipeline=4)


@pytest.mark.parametrize("workload", ["list-append", "bank"])
def test_raft_kv_other_workloads(workload: str) -> None:
    for seed in range(1, 7):
        _check(seed, workload)


def test_raft_kv_every_fault_at_once() -> None:
    for seed in range(100, 104):
        _check(seed, faults="all")


def test_raft_kv_is_deterministic() -> None:
    a = run_sim(SimConfig("raft-kv", 11))
    b = run_sim(SimConfig("raft-kv", 11))
    assert a.digest == b.digest and a.history == b.history


class _LocalReads(SimRaftKvNode):
    """A broken variant: every read served from local state, skipping ReadIndex."""

    def step(self, event: object) -> list[Effect]:
        if isinstance(event, ClientRequest) and event.f == "read":
            event = ClientRequest(event.request_id, event.f, event.key, "stale")
        return super().step(event)  # type: ignore[arg-type]


def test_the_checkers_catch_reads_that_skip_read_index(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SystemSpec("raft-kv-local-reads", _LocalReads, ("n1", "n2", "n3"), False, "broken")
    monkeypatch.setitem(cluster.SYSTEMS, spec.name, spec)
    flagged = [s for s in range(1, 13) if not run_sim(SimConfig(spec.name, s)).ok]
    assert flagged, "local reads were never flagged: the harness has no teeth for raft-kv"


@pytest.mark.slow
@pytest.mark.parametrize("block", range(10))
def test_raft_kv_swarm(block: int) -> None:
    for seed in range(100 + block * 30, 100 + (block + 1) * 30):
        _check(seed)


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["list-append", "bank"])
def test_raft_kv_swarm_other_workloads(workload: str) -> None:
    for seed in range(1, 101):
        _check(seed, workload)

"""RaftNode's fast paths: writes that arrive during a sync become one proposal, a host's
flush tick hands queued requests to the core, and a leader answers committed writes without
waiting for the sync of the next batch (they are durable on a quorum already)."""

from __future__ import annotations

from dataclasses import replace

from keeldb.consensus import Role
from keeldb.node.effects import ClientRequest, Tick
from keeldb.node.raft_node import FLUSH_TIMER, RaftNode
from keeldb.runtime.driver import Driver
from keeldb.testing.raft_kv import SIM_CONFIG, KvStateMachine
from keeldb.types import NodeId
from tests.unit.node.test_raft_node import cluster, kv, leader
from tests.unit.runtime.test_driver import FakeWorld

N1 = NodeId("n1")


def _replies(world: FakeWorld) -> list[int]:
    return [rid for kind, rid in world.log if kind == "reply"]


def _single_leader(propose_on_flush: bool, sync_io: bool) -> tuple[Driver, FakeWorld]:
    """A one-node cluster that has elected itself (disk ops complete when the test says)."""
    world = FakeWorld(sync_io=True)
    cfg = replace(SIM_CONFIG, propose_on_flush=propose_on_flush)
    driver = Driver(N1, (), lambda: RaftNode(KvStateMachine, cfg), world)
    driver.start()
    for _ in range(4 * cfg.election_ticks):
        due, world.timers = world.timers, []
        for _, fire in due:
            fire()
        node = driver.node
        assert isinstance(node, RaftNode)
        if node.raft is not None and node.raft.role == Role.LEADER:
            break
    assert isinstance(driver.node, RaftNode) and driver.node.raft is not None
    assert driver.node.raft.role == Role.LEADER
    world.sync_io = sync_io
    return driver, world


def test_writes_during_a_sync_are_one_proposal_and_one_message_per_follower() -> None:
    c = cluster()
    lead = leader(c)
    driver = c.world.drivers[NodeId(lead)]
    got: list[object] = []
    sends = driver.stats.sends
    n = 30
    for i in range(n):
        c.world.request(NodeId(lead), "write", f"k{i}", i, got.append)
    c.world.run_until(c.world.now + 200_000_000, stop=lambda: len(got) == n)
    assert len(got) == n and all(r.type == "ok" for r in got)  # type: ignore[attr-defined]
    assert all(kv(c, lead)[f"k{i}"] == i for i in range(n))
    # One proposal per Ready: a MsgApp per follower per batch (plus heartbeats and commit
    # notices), fewer than the 2 * n that a MsgApp per write per follower takes.
    assert driver.stats.sends - sends < 2 * n


def test_requests_wait_for_the_flush_tick_then_go_as_one_batch() -> None:
    driver, world = _single_leader(propose_on_flush=True, sync_io=True)
    node = driver.node
    assert isinstance(node, RaftNode)
    jobs = world.kinds().count("io")
    for rid in (101, 102, 103):
        driver.deliver(ClientRequest(rid, "write", f"k{rid}", rid))
    assert world.kinds().count("io") == jobs and not _replies(world)  # queued, not proposed
    assert len(node.queued) == 3
    driver.deliver(Tick(FLUSH_TIMER, 0))
    assert _replies(world) == [101, 102, 103] and not node.queued
    sm = node.sessions.sm
    assert isinstance(sm, KvStateMachine) and sm.state["k102"] == 102


def test_a_leader_answers_a_committed_write_before_its_next_sync_completes() -> None:
    driver, world = _single_leader(propose_on_flush=False, sync_io=False)
    driver.deliver(ClientRequest(1, "write", "a", 1))
    assert len(world.io) == 1  # write a: its append + sync, as one job
    driver.deliver(ClientRequest(2, "write", "b", 2))  # queued behind a's sync
    assert len(world.io) == 1 and not _replies(world)
    world.finish_io()  # a is durable (on the only voter): committed
    # b's batch is now syncing; a was answered without waiting for it
    assert _replies(world) == [1] and len(world.io) == 1
    world.finish_io()
    while world.io:
        world.finish_io()
    assert _replies(world) == [1, 2]

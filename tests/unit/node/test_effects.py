"""The node contract's vocabulary: events and effects (values nobody mutates), one phase order."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from keeldb.node.effects import (
    PHASES,
    Apply,
    CancelTimer,
    ClientRequest,
    Halt,
    Node,
    Persist,
    PersistDone,
    Received,
    Reply,
    Send,
    SetTimer,
    Start,
    Sync,
    SyncDone,
    Tick,
)
from keeldb.types import NodeId


def test_nobody_mutates_an_event_or_effect_once_handed_over() -> None:
    """Events and effects are slotted plain values, not frozen (a frozen dataclass's __init__
    costs ~1 us, ~10 per request per node). The contract that replaces frozenness: the node
    never changes an effect it returned, and the driver never changes an event it delivered
    or an effect it executes. Checked on a 3-node simulated cluster doing replicated writes,
    reads and a leader change: every event and effect equals its copy taken at hand-over."""
    from keeldb.node.raft_node import RaftNode
    from keeldb.testing.cluster import SimCluster, SimConfig

    seen: list[tuple[object, object]] = []
    c = SimCluster(SimConfig("raft-kv", 3, faults=()))
    c.start()

    def watch(name: str) -> None:
        node = c.world.drivers[NodeId(name)].node
        assert isinstance(node, RaftNode)
        step = node.step

        def recorded(event: Any) -> Any:
            seen.append((event, copy.deepcopy(event)))
            effects = step(event)
            seen.extend((e, copy.deepcopy(e)) for e in effects)
            return effects

        node.step = recorded  # type: ignore[method-assign]  # watch the hand-overs

    for name in ("n1", "n2", "n3"):
        watch(name)
    c.run_for(400)
    for i in range(20):
        reply = c.request(("n1", "n2", "n3")[i % 3], "write", f"k{i % 4}", i, timeout_ms=400)
        assert reply is not None and reply.type == "ok", reply
        assert c.request("n2", "read", f"k{i % 4}", timeout_ms=400) is not None
    kinds = {type(obj) for obj, _ in seen}
    assert {Received, Persist, Sync, Send, Apply, Reply, SetTimer} <= kinds, kinds
    changed = [(obj, was) for obj, was in seen if obj != was]
    assert not changed, f"mutated after hand-over: {changed[:3]}"


def test_events_and_effects_are_slotted_values() -> None:
    for obj in (Start(NodeId("n1"), (), 0), Tick("t", 1), Received(NodeId("n2"), 1),
                ClientRequest(1, "read", "k"), PersistDone(1), SyncDone(2),
                Persist(1, "f", b"x"), Sync(2, "f"), Send(NodeId("n2"), "m"), Apply(1, "c"),
                Reply(1, "ok"), SetTimer("t", 5), CancelTimer("t"), Halt("why")):
        assert not hasattr(obj, "__dict__"), type(obj)  # slots: no per-object dict
        assert obj == copy.copy(obj)
        if not isinstance(obj, Start):  # Start carries a dict of files
            assert hash(obj) == hash(copy.copy(obj))


def test_phase_order_is_disk_send_apply_reply_timers_halt() -> None:
    order = [Persist, Send, Apply, Reply, SetTimer, Halt]
    assert [PHASES[t] for t in order] == sorted(PHASES[t] for t in order)
    assert len({PHASES[t] for t in order}) == len(order)
    assert PHASES[Persist] == PHASES[Sync]  # the node's own write/sync order is kept
    assert PHASES[SetTimer] == PHASES[CancelTimer]


def test_reply_type_and_timer_delay_are_checked() -> None:
    with pytest.raises(AssertionError, match="reply type"):
        Reply(1, "maybe")  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="delay"):
        SetTimer("t", -1)


def test_node_protocol_is_structural() -> None:
    class Echo:
        def step(self, event: object) -> list[object]:
            return []

    assert isinstance(Echo(), Node)
    assert not isinstance(object(), Node)

"""The node contract's vocabulary: frozen events and effects, one phase order."""

from __future__ import annotations

import dataclasses

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


def test_events_and_effects_are_frozen() -> None:
    for obj in (Start(NodeId("n1"), (), 0), Tick("t", 1), Received(NodeId("n2"), 1),
                ClientRequest(1, "read", "k"), PersistDone(1), SyncDone(2),
                Persist(1, "f", b"x"), Sync(2, "f"), Send(NodeId("n2"), "m"), Apply(1, "c"),
                Reply(1, "ok"), SetTimer("t", 5), CancelTimer("t"), Halt("why")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.__setattr__(dataclasses.fields(obj)[0].name, None)


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

"""Entry, HardState, Message and Ready are values: not frozen (for speed), so these tests
check what frozen used to guarantee: the core never changes one after it was made, and
they hash and compare by value."""

from __future__ import annotations

import copy
import dataclasses

from raft_harness import Network

from keeldb.consensus.messages import Entry, EntryType, HardState, Message, MsgType, Ready


def test_values_hash_and_compare_by_their_fields() -> None:
    a = Message(MsgType.APP, "n2", "n1", 3, 2, 7, (Entry(8, 3, b"x"),), 7)
    b = Message(MsgType.APP, "n2", "n1", 3, 2, 7, (Entry(8, 3, b"x"),), 7)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != dataclasses.replace(a, commit=8)
    assert {HardState(1, "n1", 2), HardState(1, "n1", 2)} == {HardState(1, "n1", 2)}
    assert hash(Entry(1, 1, b"", EntryType.NORMAL)) == hash(Entry(1, 1))
    assert Ready() == Ready() and hash(Ready()) == hash(Ready())


def test_the_core_never_changes_a_message_entry_or_ready_it_handed_out() -> None:
    net = Network([1, 2, 3], seed=7)
    net.elect(1)
    seen: list[tuple[object, object]] = []  # (object, deep copy taken when it was seen)
    step = {i: n.raft.step for i, n in net.nodes.items()}
    ready = {i: n.raft.ready for i, n in net.nodes.items()}

    def watch_step(i: object) -> object:
        def run(m: Message) -> None:
            seen.append((m, copy.deepcopy(m)))
            step[i](m)  # type: ignore[index]
        return run

    def watch_ready(i: object) -> object:
        def run() -> Ready:
            rd = ready[i]()  # type: ignore[index]
            seen.append((rd, copy.deepcopy(rd)))
            return rd
        return run

    for i, n in net.nodes.items():
        n.raft.step = watch_step(i)  # type: ignore[method-assign]
        n.raft.ready = watch_ready(i)  # type: ignore[method-assign]
    for k in range(20):
        net.propose(1, b"cmd-%d" % k)
        net.stabilize()
    net.heartbeat()
    net.stabilize()
    assert len(seen) > 100
    for obj, was in seen:
        assert obj == was, f"{type(obj).__name__} changed after it was handed out"

"""The driver contract over a scripted fake world: order, gating, exactly once, crashes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from keeldb.node.effects import (
    Apply,
    CancelTimer,
    ClientRequest,
    Effect,
    Event,
    Halt,
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
from keeldb.runtime.driver import Driver, IoResult
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.types import NodeId

N1, N2 = NodeId("n1"), NodeId("n2")


class FakeWorld:
    """Records what the driver does; disk ops complete only when the test says so
    (or at once when `sync_io`)."""

    def __init__(self, sync_io: bool = False) -> None:
        self.the_disk = MemoryDisk()
        self.sync_io = sync_io
        self.log: list[tuple[str, Any]] = []
        self.io: list[tuple[Callable[[], IoResult], Callable[[IoResult], None]]] = []
        self.timers: list[tuple[int, Callable[[], None]]] = []
        self.clock = 1_000

    def disk(self, node: NodeId) -> MemoryDisk:
        return self.the_disk

    def now_ns(self, node: NodeId) -> int:
        return self.clock

    def call_later(self, node: NodeId, delay_ns: int, fn: Callable[[], None]) -> None:
        self.timers.append((delay_ns, fn))

    def submit_io(self, node: NodeId, perform: Callable[[], IoResult],
                  complete: Callable[[IoResult], None]) -> None:
        self.log.append(("io", None))
        if self.sync_io:
            complete(perform())
        else:
            self.io.append((perform, complete))

    def finish_io(self, ok: bool = True) -> None:
        perform, complete = self.io.pop(0)
        complete(perform() if ok else (False, "injected"))

    def send(self, src: NodeId, dst: NodeId, msg: Any) -> None:
        self.log.append(("send", msg))

    def reply(self, node: NodeId, reply: Reply) -> None:
        self.log.append(("reply", reply.request_id))

    def applied(self, node: NodeId, apply: Apply) -> None:
        self.log.append(("apply", apply.index))

    def halted(self, node: NodeId, reason: str) -> None:
        self.log.append(("halted", reason))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.log]


class Scripted:
    """A node that returns the effects the test queued for each event, and records events."""

    instances: list[Scripted] = []

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.script: dict[type, list[Effect]] = {}
        Scripted.instances.append(self)

    def step(self, event: Event) -> list[Effect]:
        self.seen.append(event)
        return list(self.script.pop(type(event), []))


def make(sync_io: bool = False) -> tuple[Driver, FakeWorld, Scripted]:
    Scripted.instances = []
    world = FakeWorld(sync_io)
    driver = Driver(N1, (N2,), Scripted, world)
    driver.start()
    return driver, world, Scripted.instances[-1]


def test_start_gives_identity_clock_and_empty_disk() -> None:
    _, _, node = make()
    (start,) = node.seen
    assert isinstance(start, Start)
    assert (start.node, start.peers, start.now_ns, dict(start.files), start.restart) == (
        N1, (N2,), 1_000, {}, False)


def test_batch_runs_in_phase_order_whatever_the_node_order() -> None:
    driver, world, node = make(sync_io=True)
    node.script[ClientRequest] = [Reply(7, "ok"), Apply(1, "c"), Send(N2, "m"),
                                  SetTimer("t", 5), Sync(2, "log"), Persist(1, "log", b"a")]
    driver.deliver(ClientRequest(7, "write", "k", 1))
    assert world.kinds() == ["io", "send", "apply", "reply"]  # both disk ops: one job
    assert world.the_disk.open("log").read_at(0, 10) == b"a"  # sync came after the append
    assert [d for d, _ in world.timers] == [5]


def test_send_after_sync_waits_for_it_and_runs_once() -> None:
    driver, world, node = make()
    node.script[ClientRequest] = [Persist(1, "log", b"x"), Sync(2, "log"),
                                  Send(N2, "durable", after=2), Reply(9, "ok", after=2),
                                  Send(N2, "now")]
    driver.deliver(ClientRequest(9, "write"))
    assert world.kinds() == ["io", "send"]  # only the ungated send; the ops are one job
    world.finish_io()  # the append and the sync: now the gated effects go, in order
    assert world.log[2:] == [("send", "durable"), ("reply", 9)]
    assert [type(e) for e in node.seen[2:]] == [PersistDone, SyncDone]
    assert driver.stats.sends == 2 and driver.stats.replies == 1


def test_effects_after_a_failed_op_are_dropped() -> None:
    driver, world, node = make()
    node.script[ClientRequest] = [Persist(1, "log", b"x"), Send(N2, "m", after=1),
                                  Reply(3, "ok", after=1)]
    driver.deliver(ClientRequest(3, "write"))
    world.finish_io(ok=False)
    assert "send" not in world.kinds() and "reply" not in world.kinds()
    assert driver.stats.held_dropped == 2
    done = node.seen[-1]
    assert isinstance(done, PersistDone) and not done.ok and done.error == "injected"
    # an effect naming the failed op later is dropped at once
    node.script[Tick] = [Send(N2, "late", after=1)]
    driver.deliver(Tick("x", 0))
    assert "send" not in world.kinds()


def test_crash_loses_held_effects_in_flight_io_and_the_node() -> None:
    driver, world, node = make()
    node.script[ClientRequest] = [Persist(1, "log", b"lost"), Sync(2, "log"),
                                  Send(N2, "m", after=2)]
    driver.deliver(ClientRequest(1, "write"))
    driver.crash()
    assert not driver.alive
    world.finish_io()  # a completion from the dead incarnation is ignored
    assert world.kinds() == ["io"] and world.io == []
    driver.deliver(Received(N2, "ignored"))
    assert driver.stats.events_dropped == 1
    world.the_disk.crash()
    driver.start()
    fresh = Scripted.instances[-1]
    assert fresh is not node
    start = fresh.seen[0]
    assert isinstance(start, Start) and start.restart and dict(start.files) == {}


def test_restart_sees_synced_bytes() -> None:
    driver, world, node = make(sync_io=True)
    node.script[ClientRequest] = [Persist(1, "log", b"abc"), Sync(2, "log"),
                                  Persist(3, "log", b"unsynced")]
    driver.deliver(ClientRequest(1, "write"))
    driver.crash()
    world.the_disk.crash()  # power loss
    driver.start()
    start = Scripted.instances[-1].seen[0]
    assert isinstance(start, Start) and start.files == {"log": b"abc"}


def test_replace_is_atomic_and_durable() -> None:
    driver, world, node = make(sync_io=True)
    node.script[ClientRequest] = [Persist(1, "meta", b"old", replace=True)]
    driver.deliver(ClientRequest(1, "write"))
    node.script[ClientRequest] = [Persist(2, "meta", b"new!", replace=True)]
    driver.deliver(ClientRequest(2, "write"))
    world.the_disk.crash()
    assert world.the_disk.list() == ["meta"]
    assert world.the_disk.open("meta").read_at(0, 10) == b"new!"


def test_timers_fire_once_and_never_when_replaced_cancelled_or_crashed() -> None:
    driver, world, node = make()
    node.script[ClientRequest] = [SetTimer("a", 10), SetTimer("a", 20), SetTimer("b", 5),
                                  SetTimer("c", 5), CancelTimer("b")]
    driver.deliver(ClientRequest(1, "x"))
    for _, fire in list(world.timers):
        fire()
        fire()  # a world calling twice must not double-fire
    ticks = [e.name for e in node.seen if isinstance(e, Tick)]
    assert ticks == ["a", "c"]  # the replaced "a" (10) and cancelled "b" stay silent
    node.script[ClientRequest] = [SetTimer("d", 1)]
    driver.deliver(ClientRequest(2, "x"))
    driver.crash()
    driver.start()
    world.timers[-1][1]()
    assert not any(isinstance(e, Tick) for e in Scripted.instances[-1].seen)


def test_events_during_a_step_are_queued_not_reentrant() -> None:
    driver, world, node = make(sync_io=True)
    node.script[ClientRequest] = [Persist(1, "log", b"x"), Sync(2, "log"),
                                  Reply(1, "ok", after=2)]
    driver.deliver(ClientRequest(1, "write"))
    # completions arrived inside submit_io, while the node was stepping: seen afterwards
    assert [type(e) for e in node.seen] == [Start, ClientRequest, PersistDone, SyncDone]
    assert world.kinds() == ["io", "reply"]


def test_halt_stops_the_node_and_tells_the_world() -> None:
    driver, world, node = make(sync_io=True)
    node.script[ClientRequest] = [Halt("fsync failed"), Send(N2, "before halt")]
    driver.deliver(ClientRequest(1, "x"))
    assert world.log[-2:] == [("send", "before halt"), ("halted", "fsync failed")]
    assert not driver.alive


def test_contract_violations_crash_loudly() -> None:
    driver, _, node = make()
    node.script[ClientRequest] = [Send(N2, "m", after=42)]
    with pytest.raises(AssertionError, match="never submitted"):
        driver.deliver(ClientRequest(1, "x"))
    driver2, _, node2 = make()
    node2.script[ClientRequest] = [Persist(1, "f", b""), Persist(1, "f", b"")]
    with pytest.raises(AssertionError, match="reused disk op id"):
        driver2.deliver(ClientRequest(1, "x"))
    driver3, _, node3 = make()
    node3.script[ClientRequest] = [Send(N1, "self")]
    with pytest.raises(AssertionError, match="sends to itself"):
        driver3.deliver(ClientRequest(1, "x"))


def test_a_non_effect_is_refused() -> None:
    driver, _, node = make()
    node.script[ClientRequest] = [Send(N2, "m"), "not an effect"]  # type: ignore[list-item]
    with pytest.raises(AssertionError, match="non-effect"):
        driver.deliver(ClientRequest(1, "x"))

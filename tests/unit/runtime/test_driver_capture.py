"""`Capture` jobs: the driver hands them to a world's background lane (never the disk
queue), turns operating errors into `ok=False`, drops them with a crash, and runs them at
once in a world without a lane; RealWorld runs them off the loop's thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, cast

from keeldb.errors import LimitExceededError
from keeldb.node.effects import Capture, CaptureDone, ClientRequest, Effect, Event, Persist
from keeldb.runtime.driver import Driver, IoResult
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.runtime.real.transport import Transport
from keeldb.runtime.real.world import RealWorld
from keeldb.types import NodeId

N1 = NodeId("n1")


class Node:
    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.script: list[Effect] = []

    def step(self, event: Event) -> list[Effect]:
        self.seen.append(event)
        out, self.script = self.script, []
        return out


class World:
    def __init__(self, lane: bool) -> None:
        self.io: list[tuple[Callable[[], IoResult], Callable[[IoResult], None]]] = []
        self.jobs: list[tuple[Callable[[], Any], Callable[[Any], None]]] = []
        self.the_disk = MemoryDisk()
        if not lane:
            self.submit_job = None  # type: ignore[assignment]

    def disk(self, node: NodeId) -> MemoryDisk:
        return self.the_disk

    def now_ns(self, node: NodeId) -> int:
        return 0

    def call_later(self, node: NodeId, delay_ns: int, fn: Callable[[], None]) -> None:
        pass

    def submit_io(self, node: NodeId, perform: Callable[[], IoResult],
                  complete: Callable[[IoResult], None]) -> None:
        self.io.append((perform, complete))

    def submit_job(self, node: NodeId, perform: Callable[[], Any],
                   complete: Callable[[Any], None]) -> None:
        self.jobs.append((perform, complete))

    def send(self, src: NodeId, dst: NodeId, msg: Any) -> None: ...
    def reply(self, node: NodeId, reply: Any) -> None: ...
    def applied(self, node: NodeId, apply: Any) -> None: ...
    def halted(self, node: NodeId, reason: str) -> None: ...


def make(lane: bool = True) -> tuple[Driver, World, Node]:
    nodes: list[Node] = []
    world = World(lane)

    def factory() -> Node:
        nodes.append(Node())
        return nodes[-1]
    driver = Driver(N1, (), factory, world)
    driver.start()
    return driver, world, nodes[-1]


def test_a_capture_finishes_while_a_disk_job_is_still_in_flight() -> None:
    driver, world, node = make()
    node.script = [Persist(1, "log", b"x"), Capture(2, lambda: b"image")]
    driver.deliver(ClientRequest(1, "write"))
    assert len(world.io) == 1 and len(world.jobs) == 1  # two lanes, not one queue
    perform, complete = world.jobs.pop()
    complete(perform())
    assert node.seen[-1] == CaptureDone(2, True, b"image")
    assert len(world.io) == 1 and driver.stats.captures == 1


def test_an_operating_error_is_a_failed_capture_and_a_crash_drops_it() -> None:
    driver, world, node = make()

    def too_big() -> bytes:
        raise LimitExceededError("image over its limit")
    node.script = [Capture(3, too_big), Capture(4, lambda: b"late")]
    driver.deliver(ClientRequest(1, "write"))
    perform, complete = world.jobs.pop(0)
    complete(perform())
    assert node.seen[-1] == CaptureDone(3, False, b"", "image over its limit")
    driver.crash()
    driver.start()
    perform, complete = world.jobs.pop(0)
    complete(perform())  # from the dead incarnation: never delivered
    assert all(not isinstance(e, CaptureDone) for e in driver.node.seen)  # type: ignore[union-attr]


def test_a_world_without_a_lane_runs_the_job_at_once_as_the_next_event() -> None:
    driver, world, node = make(lane=False)
    node.script = [Capture(5, lambda: b"now")]
    driver.deliver(ClientRequest(1, "write"))
    assert node.seen[-1] == CaptureDone(5, True, b"now")


class _Wire:
    delivering = False

    def send(self, to: NodeId, msg: Any) -> bool:
        return True


def test_real_world_runs_a_job_off_the_loop_thread_and_completes_on_it() -> None:
    threads: list[str] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        world = RealWorld(N1, MemoryDisk(), cast(Transport, _Wire()), loop)
        done = loop.create_future()

        def perform() -> bytes:
            threads.append(threading.current_thread().name)
            return b"image"

        def complete(result: Any) -> None:
            threads.append(threading.current_thread().name)
            done.set_result(result)
        world.submit_job(N1, perform, complete)
        assert await asyncio.wait_for(done, 5) == b"image"
        await asyncio.to_thread(world.close)

    asyncio.run(run())
    assert threads == ["keeldb-bg", threading.main_thread().name]

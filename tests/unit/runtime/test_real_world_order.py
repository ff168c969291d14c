"""RealWorld's send/reply/disk ordering: replies leave before the step's messages, the
messages before an inline disk job, and a job runs in the thread when the host says so."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from keeldb.node.effects import Reply
from keeldb.runtime.driver import IoResult
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.runtime.real.transport import Transport
from keeldb.runtime.real.world import RealWorld
from keeldb.types import NodeId

N1, N2 = NodeId("n1"), NodeId("n2")


class _Wire:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.delivering = False  # (Transport: inside an inbound chunk's deliveries)

    def send(self, to: NodeId, msg: Any) -> bool:
        self.log.append(f"send {to} {msg!r}")
        return True


def _world(loop: asyncio.AbstractEventLoop, log: list[str], inline: bool) -> RealWorld:
    world = RealWorld(N1, MemoryDisk(), cast(Transport, _Wire(log)), loop)
    world.reply_route = lambda r: log.append(f"reply {r.request_id}")
    world.inline_io = lambda: inline
    return world


def _step(world: RealWorld, log: list[str]) -> None:
    """What a driver does in one step: queue a disk job, send, reply."""
    def perform() -> IoResult:
        log.append("perform")
        return True, ""

    world.submit_io(N1, perform, lambda result: log.append(f"complete {result[0]}"))
    world.send(N1, N2, b"append")
    world.reply(N1, Reply(7, "ok"))
    log.append("step end")


async def _run(inline: bool) -> tuple[list[str], RealWorld]:
    log: list[str] = []
    world = _world(asyncio.get_running_loop(), log, inline)
    _step(world, log)
    for _ in range(50):
        if "complete True" in log:
            break
        await asyncio.sleep(0.01)
    await asyncio.to_thread(world.close)
    return log, world


def test_inline_job_runs_after_the_steps_reply_and_messages() -> None:
    log, world = asyncio.run(_run(inline=True))
    assert log == ["reply 7", "step end", "send n2 b'append'", "perform", "complete True"]
    assert world.inline_jobs == 1


def test_busy_host_keeps_the_disk_job_in_the_thread() -> None:
    log, world = asyncio.run(_run(inline=False))
    assert world.inline_jobs == 0
    # The reply never waits for the step's messages; the job completes on the loop.
    assert log.index("reply 7") < log.index("send n2 b'append'")
    assert log.index("perform") < log.index("complete True")


def test_messages_keep_their_order_and_none_leave_after_close() -> None:
    async def go() -> list[str]:
        log: list[str] = []
        world = _world(asyncio.get_running_loop(), log, True)
        for i in range(3):
            world.send(N1, N2, i)
        await asyncio.sleep(0)
        world.send(N1, N2, 99)
        world.close()  # (no disk job in flight: returns at once)
        await asyncio.sleep(0)
        return log

    assert asyncio.run(go()) == ["send n2 0", "send n2 1", "send n2 2"]


def test_steps_done_sends_and_runs_the_inline_job_without_a_loop_turn() -> None:
    async def go() -> tuple[list[str], list[str]]:
        log: list[str] = []
        world = _world(asyncio.get_running_loop(), log, True)
        _step(world, log)
        world.steps_done(N1)  # the driver's deliver() returned
        now = list(log)
        await asyncio.sleep(0.01)  # the fallback callback finds nothing left to do
        world.close()
        return now, log

    now, later = asyncio.run(go())
    assert now == ["reply 7", "step end", "send n2 b'append'", "perform", "complete True"]
    assert later == now


def test_inside_a_transport_chunk_the_job_waits_for_after_deliver() -> None:
    async def go() -> list[str]:
        log: list[str] = []
        world = _world(asyncio.get_running_loop(), log, True)
        wire = cast(Any, world._transport)
        wire.delivering = True
        _step(world, log)
        world.steps_done(N1)
        log.append("chunk delivered")
        wire.delivering = False
        wire.after_deliver()  # what the transport calls once the chunk is delivered
        await asyncio.sleep(0.01)
        world.close()
        return log

    assert asyncio.run(go()) == ["reply 7", "step end", "send n2 b'append'",
                                 "chunk delivered", "perform", "complete True"]


def test_a_job_submitted_by_a_completion_runs_on_the_next_callback_not_nested() -> None:
    async def go() -> list[str]:
        log: list[str] = []
        world = _world(asyncio.get_running_loop(), log, True)

        def second(result: IoResult) -> None:
            log.append("second done")

        def first(result: IoResult) -> None:
            log.append("first done")
            world.submit_io(N1, lambda: (True, ""), second)
            world.steps_done(N1)  # the completion's step ended: must not run `second` here
            log.append("first returns")

        world.submit_io(N1, lambda: (True, ""), first)
        world.steps_done(N1)
        await asyncio.sleep(0.01)
        world.close()
        return log

    assert asyncio.run(go()) == ["first done", "first returns", "second done"]

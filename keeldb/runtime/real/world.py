"""The real `World` of `keeldb.runtime.driver`: files with fsync, the event loop, TCP.

One OS process hosts one node, so one `RealWorld` serves one driver:

- disk: `RealDisk` over the node's data directory (fsync of files, fsync of the directory),
  or any `Disk` the host is given (tests wrap it to observe the order of syncs);
- clock: the monotonic clock; timers: `loop.call_later`;
- disk ops: run in one worker thread (so an fsync does not stall the network), completed back
  on the loop thread as the driver requires; the driver submits one job (its queued ops) at a time;
  when the host's `inline_io()` says so (few requests waiting) a job runs on the loop instead,
  one callback after the step that queued it;
- send: the asyncio `Transport`, at the end of the step (replies first); reply: routed back
  to the client connection that asked, at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from keeldb import limits
from keeldb.node.effects import Apply, Message, Reply
from keeldb.ports import Disk
from keeldb.runtime.driver import IoResult
from keeldb.runtime.real.clock import Clock, MonotonicClock
from keeldb.runtime.real.transport import Transport
from keeldb.types import NodeId

log = logging.getLogger("keeldb.world")

ReplyRoute = Callable[[Reply], None]


class RealWorld:
    """The world of one node in one process. Implements `keeldb.runtime.driver.World`."""

    def __init__(self, node: NodeId, disk: Disk, transport: Transport,
                 loop: asyncio.AbstractEventLoop, *, clock: Clock | None = None,
                 io_in_thread: bool = True) -> None:
        self.node = node
        self._disk = disk
        self._transport = transport
        self._loop = loop
        self._clock = clock or MonotonicClock()
        self._executor = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="keeldb-io")
                          if io_in_thread else None)
        self.reply_route: ReplyRoute | None = None
        self.on_halt: Callable[[str], None] | None = None
        # Asked before each disk job: True = run it on the loop (see submit_io). The host
        # says yes when few requests wait (one small append + fsync costs less than two
        # thread hand-offs); a busy node keeps the loop free for parsing while it syncs.
        self.inline_io: Callable[[], bool] | None = None
        self.inline_jobs = 0
        self._outbox: list[tuple[NodeId, Message]] = []  # see send()
        self._flush_due = False
        self.applied_count = 0
        self.last_applied: Any = None
        self.closed = False

    def _mine(self, node: NodeId) -> None:
        assert node == self.node, f"world of {self.node!r} asked about {node!r}"

    def disk(self, node: NodeId) -> Disk:
        self._mine(node)
        return self._disk

    def now_ns(self, node: NodeId) -> int:
        self._mine(node)
        return self._clock.now_ns()

    def call_later(self, node: NodeId, delay_ns: int, fn: Callable[[], None]) -> None:
        self._mine(node)
        assert delay_ns >= 0
        if not self.closed:
            self._loop.call_later(delay_ns / 1e9, fn)

    def submit_io(self, node: NodeId, perform: Callable[[], IoResult],
                  complete: Callable[[IoResult], None]) -> None:
        self._mine(node)
        if self.closed:
            return  # shutting down: the driver treats the node as gone anyway
        if self._executor is None:
            complete(perform())
            return
        if self.inline_io is not None and self.inline_io():
            # Few requests wait: run the job on the loop right after the current step (its
            # sends leave first), saving the worker thread's wakeup and the GIL hand-offs.
            self.inline_jobs += 1
            self._loop.call_soon(self._run_inline, perform, complete)
            return
        future = self._loop.run_in_executor(self._executor, perform)

        def done(f: asyncio.Future[IoResult]) -> None:
            exc = f.exception()
            if exc is not None:  # not a KeeldbError (the driver turns those into ok=False)
                log.critical("%s: disk op crashed: %r", self.node, exc)
                self.halted(self.node, f"disk op crashed: {exc!r}")
                return
            complete(f.result())

        future.add_done_callback(done)

    def _run_inline(self, perform: Callable[[], IoResult],
                    complete: Callable[[IoResult], None]) -> None:
        if self.closed:
            return
        self._flush_sends()  # the step's messages leave before this node's fsync
        try:
            result = perform()
        except Exception as exc:  # not a KeeldbError (the driver turns those into ok=False)
            log.critical("%s: disk op crashed: %r", self.node, exc)
            self.halted(self.node, f"disk op crashed: {exc!r}")
            return
        complete(result)
        self._flush_sends()  # e.g. a follower's ack, held until this sync: send it now

    def send(self, src: NodeId, dst: NodeId, msg: Message) -> None:
        """Queue `msg` for the end of this step (`_flush_sends`, the loop's next callback):
        a step's replies reach their clients before its messages cost socket writes (a
        leader's commit notices to followers no longer delay the client's reply)."""
        self._mine(src)
        if self.closed:
            return
        self._outbox.append((dst, msg))
        if len(self._outbox) >= limits.real_world_outbox_max:
            self._flush_sends()
        elif not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush_sends)

    def _flush_sends(self) -> None:
        """Hand the queued messages to the transport, in the order they were sent."""
        self._flush_due = False
        box, self._outbox = self._outbox, []
        if self.closed:
            return
        send = self._transport.send
        for dst, msg in box:
            send(dst, msg)

    def reply(self, node: NodeId, reply: Reply) -> None:
        self._mine(node)
        assert self.reply_route is not None, "no client port attached to the world"
        self.reply_route(reply)

    def applied(self, node: NodeId, apply: Apply) -> None:
        self._mine(node)
        self.applied_count += 1
        self.last_applied = apply.index

    def halted(self, node: NodeId, reason: str) -> None:
        self._mine(node)
        log.error("%s halted itself: %s", node, reason)
        if self.on_halt is not None:
            self.on_halt(reason)

    def close(self) -> None:
        """Accept no more disk ops or timers and wait for the disk op in flight, if any."""
        self.closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)

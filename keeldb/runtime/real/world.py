"""The real `World` of `keeldb.runtime.driver`: files with fsync, the event loop, TCP.

One OS process hosts one node, so one `RealWorld` serves one driver:

- disk: `RealDisk` over the node's data directory (fsync of files, fsync of the directory),
  or any `Disk` the host is given (tests wrap it to observe the order of syncs);
- clock: the monotonic clock; timers: `loop.call_later`;
- disk ops: run in one worker thread (so an fsync does not stall the network), completed back
  on the loop thread as the driver requires; the driver submits one job (its queued ops) at a time;
  when the host's `inline_io()` says so (few requests waiting, or a follower's small append)
  a job runs on the loop instead, right after the driver's `deliver` (`steps_done`), after a
  transport chunk's deliveries (`Transport.after_deliver`), or else one callback later;
- background jobs (`Capture`: a Raft snapshot image) run in a second thread, never in
  the disk thread's queue, completed back on the loop like disk ops;
- send: the asyncio `Transport`, at the end of the step (replies first: `steps_done`, or the
  next callback); reply: routed back to the client connection that asked, at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
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
_IoJob = tuple[Callable[[], IoResult], Callable[[IoResult], None]]
_BgJob = tuple[Callable[[], Any], Callable[[Any], None]]


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
        # One disk thread fed by a SimpleQueue, completing through call_soon_threadsafe:
        # cheaper per job than an executor (no concurrent and asyncio futures chained).
        self._io_in_thread = io_in_thread
        self._io_jobs: queue.SimpleQueue[_IoJob | None] = queue.SimpleQueue()
        self._io_thread: threading.Thread | None = None
        # Background jobs (`Capture`: a state-machine image) on a thread of their own, so a
        # long one never holds up the disk thread's appends and fsyncs.
        self._bg_jobs: queue.SimpleQueue[_BgJob | None] = queue.SimpleQueue()
        self._bg_thread: threading.Thread | None = None
        self.reply_route: ReplyRoute | None = None
        self.on_halt: Callable[[str], None] | None = None
        # Asked before each disk job: True = run it on the loop (see submit_io). The host
        # says yes when few requests wait (one small append + fsync costs less than two
        # thread hand-offs); a busy node keeps the loop free for parsing while it syncs.
        self.inline_io: Callable[[], bool] | None = None
        self.inline_jobs = 0
        self._inline_job: _IoJob | None = None  # submitted to run inline, not yet run
        self._in_inline = False  # an inline job is running (its completion steps the node)
        transport.after_deliver = self.run_inline_now
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
        if not self._io_in_thread:
            complete(perform())
            return
        if self.inline_io is not None and self.inline_io():
            # Few requests wait: run the job on the loop right after the current step (its
            # sends leave first), saving the worker thread's wakeup and the GIL hand-offs.
            self.inline_jobs += 1
            assert self._inline_job is None, "the driver submits one disk job at a time"
            self._inline_job = (perform, complete)
            self._loop.call_soon(self.run_inline_now)
            return
        if self._io_thread is None:
            self._io_thread = threading.Thread(target=self._io_worker, name="keeldb-io",
                                               daemon=True)
            self._io_thread.start()
        assert self._io_jobs.qsize() < 2, "the driver submits one disk job at a time"
        self._io_jobs.put((perform, complete))

    def submit_job(self, node: NodeId, perform: Callable[[], Any],
                   complete: Callable[[Any], None]) -> None:
        """`complete(perform())` with `perform` on the background thread (see the driver's
        `World`): the loop keeps serving while a Raft snapshot image is serialized. The
        thread shares the GIL, interleaved every `sys.getswitchinterval()`."""
        self._mine(node)
        if self.closed:
            return
        if not self._io_in_thread:
            complete(perform())
            return
        if self._bg_thread is None:
            self._bg_thread = threading.Thread(target=self._bg_worker, name="keeldb-bg",
                                               daemon=True)
            self._bg_thread.start()
        assert self._bg_jobs.qsize() < limits.real_world_bg_jobs_max, "background jobs pile up"
        self._bg_jobs.put((perform, complete))

    def _bg_worker(self) -> None:
        """The background-job thread (snapshot images): see `_serve_jobs`."""
        self._serve_jobs(self._bg_jobs, self._bg_done)

    def _bg_done(self, complete: Callable[[Any], None], result: Any,
                 exc: BaseException | None) -> None:
        if self.closed:
            return
        if exc is not None:
            log.critical("%s: background job crashed: %r", self.node, exc)
            self.halted(self.node, f"background job crashed: {exc!r}")
            return
        complete(result)
        self._flush_sends()

    def _io_worker(self) -> None:
        """The disk thread: see `_serve_jobs`."""
        self._serve_jobs(self._io_jobs, self._io_done)

    def _serve_jobs(self, jobs: queue.SimpleQueue[Any], done: Callable[..., None]) -> None:
        """Run each `(perform, complete)` job of `jobs` until a None, and hand its result (or
        the exception of a bug in it: `done` halts the node) back to the loop."""
        while True:
            job = jobs.get()
            if job is None:
                return
            perform, complete = job
            try:
                result, exc = perform(), None
            except Exception as e:  # not a KeeldbError (the driver turns those into ok=False)
                result, exc = None, e
            try:
                self._loop.call_soon_threadsafe(done, complete, result, exc)
            except RuntimeError:
                return  # the loop is closed: nobody waits for the result

    def _io_done(self, complete: Callable[[IoResult], None], result: IoResult | None,
                 exc: BaseException | None) -> None:
        if exc is not None or result is None:
            log.critical("%s: disk op crashed: %r", self.node, exc)
            self.halted(self.node, f"disk op crashed: {exc!r}")
            return
        complete(result)
        self._flush_sends()  # e.g. a follower's ack, held until this sync: now, not a turn later

    def steps_done(self, node: NodeId) -> None:
        """The driver finished a `deliver` (no step runs): write the sends it held now, and
        run its small disk job unless a transport chunk is still being delivered (then the
        transport's `after_deliver` runs it once for the chunk) or a job is running (this is
        its completion: the loop's callback runs the next, so jobs never nest)."""
        self._mine(node)
        if self._outbox:
            self._flush_sends()
        if self._inline_job is not None and not self._in_inline \
                and not self._transport.delivering:
            self.run_inline_now()

    def run_inline_now(self) -> None:
        """Run the inline disk job waiting for its callback, if any, now. The transport calls
        this once it has delivered a chunk of peer messages (outside any driver step): a
        follower's append is synced and acked in the read callback itself, one loop turn
        sooner and ahead of the callbacks the step queued (its store's group write)."""
        job, self._inline_job = self._inline_job, None
        if job is not None:
            assert not self._in_inline, "inline disk jobs do not nest"
            self._in_inline = True
            try:
                self._run_inline(*job)
            finally:
                self._in_inline = False

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
        self._flush_sends()  # e.g. a follower's ack, held until this sync: now, not a turn later

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
        if self._bg_thread is not None:
            self._bg_jobs.put(None)  # after the job in flight, if any
            self._bg_thread.join()
            self._bg_thread = None
        if self._io_thread is not None:
            self._io_jobs.put(None)  # after the job in flight, if any
            self._io_thread.join()
            self._io_thread = None

"""The one effect executor, shared by the simulator and the real runtime.

`Driver` hosts one `Node` (see `keeldb.node.effects` for the contract) and executes the effects
of each `step()` exactly once, in the contract's order:

- disk ops (`Persist`, `Sync`) run in submission order through the world's `Disk` port, one
  group at a time per node (the ops queued while the disk was busy, at most
  `limits.driver_io_group_max`, in one `submit_io`: a failed op ends its group, the later
  ones fail unperformed); each completion comes back to the node as `PersistDone`/`SyncDone`;
- `Send`/`Apply`/`Reply` with `after=op` are held until op succeeded, dropped if it failed or
  the node crashed; without `after` they run at once, after the batch's disk ops were submitted;
- timers are kept here (a replaced, cancelled or pre-crash timer never fires).

Events reaching the node while it is stepping are queued (no re-entrant `step`), so a world
may complete I/O synchronously inside `submit_io`.

How a world plugs in. Implement `World` (six methods, below), create one `Driver` per node with
a zero-argument node factory, then:

    driver = Driver(NodeId("n1"), (NodeId("n2"),), MyNode, world)
    driver.start()                       # reads the disk, builds the node, delivers Start
    driver.deliver(Received(src, msg))   # whenever a message arrives from the transport
    driver.deliver(ClientRequest(...))   # whenever a client asks something
    driver.crash()                       # the process died: memory, timers, held effects gone
    driver.start()                       # restart: a fresh node recovers from the disk

The world calls `fn()` passed to `call_later` when the delay has passed and
`complete(perform())` for each `submit_io` (now, later, or in a worker thread for `perform`,
but `complete` must run on the thread that owns the driver). It may drop both after a crash;
the driver ignores callbacks from an earlier incarnation anyway.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from keeldb import limits
from keeldb.errors import KeeldbError, LimitExceededError
from keeldb.node.effects import (
    PHASES,
    Apply,
    CancelTimer,
    Capture,
    CaptureDone,
    Effect,
    Event,
    Halt,
    Message,
    Node,
    Persist,
    PersistDone,
    Reply,
    Send,
    SetTimer,
    Start,
    Sync,
    SyncDone,
    Tick,
)
from keeldb.ports import Disk, File
from keeldb.types import NodeId

IoResult = tuple[bool, str]
"""(ok, error message) of one disk op."""


class World(Protocol):
    """What a world (simulated or real) provides to the drivers of its nodes."""

    def disk(self, node: NodeId) -> Disk:
        """The node's disk port (the same object across restarts: it is the node's disk)."""

    def now_ns(self, node: NodeId) -> int:
        """The node's local clock in nanoseconds (skewed, drifting, jumping in the simulator)."""

    def call_later(self, node: NodeId, delay_ns: int, fn: Callable[[], None]) -> None:
        """Call `fn()` once after `delay_ns` of the node's local time."""

    def submit_io(self, node: NodeId, perform: Callable[[], IoResult],
                  complete: Callable[[IoResult], None]) -> None:
        """Run `complete(perform())` once, now or later (disk latency)."""

    def send(self, src: NodeId, dst: NodeId, msg: Message) -> None:
        """Hand `msg` to the network (which may lose, delay, duplicate or reorder it)."""

    def reply(self, node: NodeId, reply: Reply) -> None:
        """Answer the client that sent request `reply.request_id` to `node`."""

    def applied(self, node: NodeId, apply: Apply) -> None:
        """Observe an `Apply` (the world may record it; it must not change the node)."""

    def halted(self, node: NodeId, reason: str) -> None:
        """The node stopped itself with `Halt(reason)`; the driver is already down."""

    # Optional: `submit_job(node, perform, complete)` runs `complete(perform())` once, later,
    # off the node's thread and NOT in order with `submit_io` (a `Capture` job: it must
    # never hold up the node's disk ops). A world without it runs the job at once.


@dataclass(slots=True)
class DriverStats:
    """Counters of one driver over all incarnations."""

    steps: int = 0
    effects: int = 0
    sends: int = 0
    replies: int = 0
    applies: int = 0
    disk_ops: int = 0
    disk_errors: int = 0
    held_dropped: int = 0  # sends/applies/replies dropped because their `after` op failed
    events_dropped: int = 0  # events delivered while the node was down
    starts: int = 0
    crashes: int = 0
    captures: int = 0  # Capture jobs handed out (state-machine images)


def _phase(effect: Effect) -> int:
    phase = PHASES.get(type(effect))
    assert phase is not None, f"a node returned a non-effect {effect!r}"
    return phase


_PENDING = None  # op state: None pending, True ok, False failed
_DISK_OPS = (Persist, Sync)  # tuples: isinstance(x, A | B) builds a union on every call
_GATED = (Send, Apply, Reply)


def _run_capture(op: int, job: Callable[[], Any]) -> CaptureDone:
    """Run a `Capture` job; an operating error becomes `ok=False` (a bug still raises)."""
    try:
        return CaptureDone(op, True, job())
    except KeeldbError as exc:
        return CaptureDone(op, False, b"", exc.message)


class Driver:
    """Hosts one node and executes its effects in the contract's order, exactly once."""

    def __init__(self, node_id: NodeId, peers: tuple[NodeId, ...],
                 factory: Callable[[], Node], world: World) -> None:
        assert node_id not in peers, f"node {node_id!r} lists itself among its peers"
        self.node_id = node_id
        self.peers = peers
        self.factory = factory
        self.world = world
        self.stats = DriverStats()
        self.incarnation = 0
        self.node: Node | None = None
        self._events: deque[Event] = deque()
        self._stepping = False
        self._io: deque[Persist | Sync] = deque()
        self._io_busy = False
        self._io_pumping = False
        # Bytes the disk job being submitted appends or writes (read by a world's inline
        # policy inside submit_io: a small job may run on the loop).
        self.io_job_bytes = 0
        self._ops: OrderedDict[int, bool | None] = OrderedDict()
        self._held: dict[int, list[Send | Apply | Reply]] = {}
        self._held_count = 0
        self._timers: dict[str, int] = {}
        self._timer_seq = 0
        self._files: dict[str, File] = {}
        # Optional world hook `steps_done(node)`: deliver() finished stepping (no step is
        # running), so a world may now do what the steps queued (the real one writes its
        # held sends and runs a small disk job) instead of waiting for a loop turn.
        self._steps_done: Callable[[NodeId], None] | None = getattr(world, "steps_done", None)

    @property
    def alive(self) -> bool:
        return self.node is not None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Build a fresh node and give it `Start` with every file of its disk."""
        assert self.node is None, f"start of {self.node_id!r}, which is already running"
        disk = self.world.disk(self.node_id)
        files: dict[str, bytes] = {}
        total = 0
        for name in disk.list():
            f = disk.open(name)
            size = f.size()
            total += size
            if total > limits.node_start_bytes_max:
                raise LimitExceededError(
                    f"node {self.node_id!r} has {total} bytes on disk at start, over "
                    f"limits.node_start_bytes_max={limits.node_start_bytes_max}; "
                    "compact the node's files")
            files[name] = f.read_at(0, size)
            f.close()
        restart = self.stats.starts > 0 or bool(files)
        self.incarnation += 1
        self.stats.starts += 1
        self.node = self.factory()
        self.deliver(Start(self.node_id, self.peers, self.world.now_ns(self.node_id),
                           files, restart))

    def crash(self) -> None:
        """The process died: drop the node, its queued events, disk ops, held effects, timers."""
        if self.node is None:
            return
        self.node = None
        self.incarnation += 1
        self.stats.crashes += 1
        self._events.clear()
        self._io.clear()
        self._io_busy = False
        self._ops.clear()
        self._held.clear()
        self._held_count = 0
        self._timers.clear()
        for f in self._files.values():
            try:
                f.close()
            except (KeeldbError, OSError):
                pass  # a dying process cannot do anything about a failed close
        self._files.clear()

    # --- events ----------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Give `event` to the node (queued if the node is stepping; dropped if it is down)."""
        if self.node is None:
            self.stats.events_dropped += 1
            return
        if self._stepping:
            if len(self._events) >= limits.driver_events_queued_max:
                raise LimitExceededError(
                    f"node {self.node_id!r} has {len(self._events)} events queued, the limit "
                    f"limits.driver_events_queued_max; a node's step() keeps feeding itself")
            self._events.append(event)  # no re-entrant step: the running loop takes it
            return
        self._stepping = True
        try:
            effects = self.node.step(event)
            self.stats.steps += 1
            self._execute(effects)
            while self._events and self.node is not None:
                effects = self.node.step(self._events.popleft())
                self.stats.steps += 1
                self._execute(effects)
        finally:
            self._stepping = False
        if self._steps_done is not None and self.node is not None:
            self._steps_done(self.node_id)

    def _execute(self, effects: list[Effect]) -> None:
        assert len(effects) <= limits.driver_effects_per_step_max, (
            f"step returned {len(effects)} effects, over limits.driver_effects_per_step_max")
        if len(effects) > 1:
            effects = sorted(effects, key=_phase)  # stable: keeps the node's order per phase
        inc = self.incarnation
        io_queued = False
        for eff in effects:
            if self.incarnation != inc:
                return  # a Halt or a synchronous crash ended this incarnation mid-batch
            self.stats.effects += 1
            if isinstance(eff, _DISK_OPS):
                self._submit_disk_op(eff)
                io_queued = True
                continue
            if io_queued:
                # Start the batch's disk ops (one job) before its other effects.
                io_queued = False
                self._pump_io()
                if self.incarnation != inc:
                    return
            if type(eff) is Send and eff.after is None:  # the hot path of busy networks
                assert eff.to != self.node_id, f"node {self.node_id!r} sends to itself"
                self.stats.sends += 1
                self.world.send(self.node_id, eff.to, eff.msg)
            elif isinstance(eff, _GATED):
                self._gate(eff)
            elif isinstance(eff, SetTimer):
                self._set_timer(eff)
            elif isinstance(eff, CancelTimer):
                self._timers.pop(eff.name, None)
            elif isinstance(eff, Capture):
                self._capture(eff)
            elif isinstance(eff, Halt):
                self.crash()
                self.world.halted(self.node_id, eff.reason)
            else:
                raise AssertionError(f"node {self.node_id!r} returned a non-effect {eff!r}")
        self._pump_io()

    # --- after-gating ----------------------------------------------------------------------

    def _gate(self, eff: Send | Apply | Reply) -> None:
        if eff.after is None:
            self._run(eff)
            return
        assert eff.after in self._ops, (
            f"node {self.node_id!r}: {type(eff).__name__} after op {eff.after}, which was "
            "never submitted in this incarnation (or is too old to remember)")
        state = self._ops[eff.after]
        if state is True:
            self._run(eff)
        elif state is False:
            self.stats.held_dropped += 1
        else:
            if self._held_count >= limits.driver_held_effects_max:
                raise LimitExceededError(
                    f"node {self.node_id!r} holds {self._held_count} effects waiting on disk "
                    "ops, the limit limits.driver_held_effects_max; sync less lazily")
            self._held.setdefault(eff.after, []).append(eff)
            self._held_count += 1

    def _run(self, eff: Send | Apply | Reply) -> None:
        if isinstance(eff, Send):
            assert eff.to != self.node_id, f"node {self.node_id!r} sends to itself"
            self.stats.sends += 1
            self.world.send(self.node_id, eff.to, eff.msg)
        elif isinstance(eff, Apply):
            self.stats.applies += 1
            self.world.applied(self.node_id, eff)
        else:
            self.stats.replies += 1
            self.world.reply(self.node_id, eff)

    # --- timers ----------------------------------------------------------------------------

    def _set_timer(self, eff: SetTimer) -> None:
        self._timer_seq += 1
        token = self._timer_seq
        self._timers[eff.name] = token
        inc = self.incarnation
        name = eff.name

        def fire() -> None:
            if self.incarnation != inc or self._timers.get(name) != token:
                return  # replaced, cancelled, or set before a crash
            del self._timers[name]
            self.deliver(Tick(name, self.world.now_ns(self.node_id)))

        self.world.call_later(self.node_id, eff.delay_ns, fire)

    # --- background jobs -------------------------------------------------------------------

    def _capture(self, eff: Capture) -> None:
        """Hand `eff.job` to the world's background lane (or run it now, the result queued
        as the node's next event); its `CaptureDone` reaches this incarnation only."""
        inc, op = self.incarnation, eff.op
        self.stats.captures += 1

        def complete(result: CaptureDone) -> None:
            if inc == self.incarnation:
                self.deliver(result)

        submit = getattr(self.world, "submit_job", None)
        if submit is None:
            complete(_run_capture(op, eff.job))
        else:
            submit(self.node_id, partial(_run_capture, op, eff.job), complete)

    # --- disk ops --------------------------------------------------------------------------

    def _submit_disk_op(self, eff: Persist | Sync) -> None:
        assert eff.op not in self._ops, (
            f"node {self.node_id!r} reused disk op id {eff.op} in one incarnation")
        if len(self._io) >= limits.driver_io_queued_max:
            raise LimitExceededError(
                f"node {self.node_id!r} has {len(self._io)} disk ops queued, the limit "
                "limits.driver_io_queued_max; wait for PersistDone before writing more")
        self._ops[eff.op] = _PENDING
        while len(self._ops) > limits.driver_op_history_max:
            old, state = self._ops.popitem(last=False)
            assert state is not _PENDING, f"disk op {old} forgotten while still pending"
        self._io.append(eff)

    def _pump_io(self) -> None:
        """Start the queued disk ops, one group at a time (every op queued when the disk is
        free: typically a Ready's appends and its Sync, one trip to a real world's disk
        thread); a loop, not recursion, for synchronous worlds."""
        if self._io_pumping:
            return
        self._io_pumping = True
        try:
            while not self._io_busy and self._io and self.node is not None:
                take = min(len(self._io), limits.driver_io_group_max)
                group = tuple(self._io.popleft() for _ in range(take))
                self._io_busy = True
                self.stats.disk_ops += take
                self.io_job_bytes = sum(len(e.data) for e in group if isinstance(e, Persist))
                inc = self.incarnation
                box: list[IoResult] = []  # each op's result, as performed
                self.world.submit_io(
                    self.node_id,
                    partial(self._perform_group, inc, group, box),
                    partial(self._complete_group, inc, group, box),
                )
        finally:
            self._io_pumping = False

    def _perform_group(self, inc: int, group: tuple[Persist | Sync, ...],
                       box: list[IoResult]) -> IoResult:
        """Run the ops of `group` in order, each result into `box`; stop at the first
        failure (the later ones are not performed)."""
        for eff in group:
            result = self._perform(inc, eff)
            box.append(result)
            if not result[0]:
                return result
        return True, ""

    def _complete_group(self, inc: int, group: tuple[Persist | Sync, ...],
                        box: list[IoResult], result: IoResult) -> None:
        if inc != self.incarnation:
            return  # the node crashed while this group was in flight
        assert self._io_busy, f"a disk op group of {self.node_id!r} completed twice"
        ok, error = result
        failed_at = len(group)
        if not ok:
            # The first op not performed ok failed (the world may fail a job it never ran,
            # or one that ran: then its last op is the one that failed).
            good = next((i for i, (op_ok, _) in enumerate(box) if not op_ok), len(box))
            failed_at = min(good, len(group) - 1)
        for i, eff in enumerate(group):
            if inc != self.incarnation:
                return  # completing an op halted the node: the rest is gone with it
            if i < failed_at:
                self._op_done(eff, (True, ""))
            elif i == failed_at:
                self._op_done(eff, (False, error))
            else:
                self._op_done(eff, (False, "an earlier disk op of its group failed"))
        self._io_busy = False
        self._pump_io()

    def _handle(self, disk: Disk, name: str) -> File:
        f = self._files.get(name)
        if f is None:
            if disk.exists(name):
                f = disk.open(name, append=True)
            else:
                f = disk.create(name)
                disk.sync_dir()  # the file's existence must survive a crash like its bytes
            self._files[name] = f
        return f

    def _perform(self, inc: int, eff: Persist | Sync) -> IoResult:
        if inc != self.incarnation:
            return False, "the node crashed before this disk op ran"  # write nothing
        disk = self.world.disk(self.node_id)
        try:
            if isinstance(eff, Sync):
                if eff.file in self._files or disk.exists(eff.file):
                    self._handle(disk, eff.file).sync()
            elif eff.replace:
                old = self._files.pop(eff.file, None)
                if old is not None:
                    old.close()
                tmp = eff.file + ".replace-tmp"
                f = disk.create(tmp)
                f.append(eff.data)
                f.sync()
                f.close()
                disk.rename(tmp, eff.file)
                disk.sync_dir()
            else:
                self._handle(disk, eff.file).append(eff.data)
        except KeeldbError as exc:
            return False, exc.message
        return True, ""

    def _op_done(self, eff: Persist | Sync, result: IoResult) -> None:
        ok, error = result
        assert self._ops.get(eff.op, True) is _PENDING, (
            f"disk op {eff.op} of {self.node_id!r} completed twice or out of order")
        self._ops[eff.op] = ok
        if not ok:
            self.stats.disk_errors += 1
        held = self._held.pop(eff.op, [])
        self._held_count -= len(held)
        for h in held:
            if ok:
                self._run(h)
            else:
                self.stats.held_dropped += 1
        done: Event = (SyncDone(eff.op, ok, error) if isinstance(eff, Sync)
                       else PersistDone(eff.op, ok, error))
        self.deliver(done)

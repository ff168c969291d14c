"""The deterministic simulated world: nodes run by `Driver`s over a simulated network, disks
and clocks, with a nemesis injecting the faults of a `FaultPlan`.

Everything happens on one `Scheduler` heap in virtual nanoseconds, in one thread. Every source
of randomness is `random.Random(f"{seed}:{name}")` for a fixed name, so one seed replays one
run exactly; `digest()` hashes every event and proves it (the determinism test compares two
runs, also under different PYTHONHASHSEEDs).

Clients live outside the network's partitions: a request reaches its node after a small delay
unless the node is down, and the reply comes back the same way. Clients are driven by
`keeldb.testing` (workloads, histories, checkers, the safety and liveness phases).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keeldb import limits
from keeldb.errors import LimitExceededError
from keeldb.node.effects import Apply, ClientRequest, Message, Node, Received, Reply
from keeldb.runtime.driver import Driver, IoResult
from keeldb.runtime.sim.clock import SimClock
from keeldb.runtime.sim.disk import SimDisk
from keeldb.runtime.sim.faults import Fault, FaultPlan
from keeldb.runtime.sim.network import SimNetwork
from keeldb.runtime.sim.scheduler import Scheduler
from keeldb.types import NodeId

MS = 1_000_000
NEMESIS_INTERVAL_NS = 20 * MS
CLIENT_LATENCY_NS_MIN = 200_000
CLIENT_LATENCY_NS_MAX = 1_000_000
DISK_LATENCY_NS = (10_000, 200_000)
DISK_SLOW_LATENCY_NS = (1 * MS, 50 * MS)
# A background job (`Capture`: a state-machine image) finishes this long after it was handed
# out: long enough that the node applies, appends and syncs more entries meanwhile.
JOB_LATENCY_NS = (100_000, 20 * MS)
DOWN_NS = (5 * MS, 200 * MS)  # how long a crashed or paused node stays out
PARTITION_NS = (10 * MS, 300 * MS)
DIGEST_BATCH = 1024  # deliveries hashed together
HALT_RESTART_NS = (5 * MS, 50 * MS)  # a supervisor restarts a node that halted itself

ReplyCallback = Callable[[Reply], None]


@dataclass(slots=True)
class WorldStats:
    messages_sent: int = 0
    messages_delivered: int = 0
    requests: int = 0
    replies: int = 0
    applies: int = 0
    disk_ops: int = 0
    crashes: int = 0
    restarts: int = 0
    pauses: int = 0
    halts: int = 0
    partitions: int = 0
    clogs: int = 0
    clock_jumps: int = 0


class SimWorld:
    """A seeded world of `nodes`, each built by `factory`, with the faults of `plan`."""

    def __init__(self, seed: int, nodes: tuple[str, ...], factory: Callable[[], Node],
                 plan: FaultPlan, *, trace: bool = False) -> None:
        assert 0 < len(nodes) <= limits.sim_nodes_max, f"{len(nodes)} nodes"
        assert len(set(nodes)) == len(nodes), f"duplicate node ids in {nodes}"
        self.seed = seed
        self.plan = plan
        self.node_ids: tuple[NodeId, ...] = tuple(NodeId(n) for n in nodes)
        self.sched = Scheduler()
        self.stats = WorldStats()
        self.rng = random.Random(f"{seed}:world")
        self.nemesis_rng = random.Random(f"{seed}:nemesis")
        self.net = SimNetwork(random.Random(f"{seed}:network"), self.node_ids,
                              p_drop=plan.p(Fault.DROP), p_duplicate=plan.p(Fault.DUPLICATE),
                              p_reorder=plan.p(Fault.REORDER), p_tail=plan.p(Fault.LATENCY))
        self.faults_exercised: dict[str, int] = {}
        self.disks: dict[NodeId, SimDisk] = {}
        self.clocks: dict[NodeId, SimClock] = {}
        self.drivers: dict[NodeId, Driver] = {}
        self.paused_until: dict[NodeId, int] = {}
        for n in self.node_ids:
            self.disks[n] = SimDisk(random.Random(f"{seed}:disk:{n}"),
                                    p_enospc=plan.p(Fault.ENOSPC),
                                    p_fsync_fail=plan.p(Fault.FSYNC_FAIL),
                                    p_bitflip=plan.p(Fault.BITFLIP),
                                    p_torn=plan.p(Fault.TORN_WRITE))
            crng = random.Random(f"{seed}:clock:{n}")
            self.clocks[n] = SimClock(crng, skew=crng.random() < plan.p(Fault.SKEW),
                                      drift=crng.random() < plan.p(Fault.DRIFT))
            peers = tuple(p for p in self.node_ids if p != n)
            self.drivers[n] = Driver(n, peers, factory, self)
            for fault, on in ((Fault.SKEW, self.clocks[n].offset), (Fault.DRIFT,
                                                                   self.clocks[n].drift)):
                if on:
                    self._exercised(fault)
        self.p_disk_slow = plan.p(Fault.DISK_LATENCY)
        self.p_lose_unsynced = plan.p(Fault.LOSE_UNSYNCED)
        self.nemesis_on = False
        self._callbacks: dict[int, ReplyCallback] = {}
        self._next_request = 0
        self._digest = hashlib.blake2b(digest_size=16)
        self._delivered: list[tuple[int, NodeId, NodeId, Message]] = []
        self._tracing = trace
        self.trace_lines: list[str] = []

    # --- trace -----------------------------------------------------------------------------

    def note(self, line: str) -> None:
        """Record one event in the digest (and in the readable trace when tracing)."""
        self._flush_digest()  # keep deliveries and notes in one order
        text = f"{self.sched.now} {line}"
        self._digest.update(text.encode())
        if self._tracing and len(self.trace_lines) < limits.sim_trace_lines_max:
            self.trace_lines.append(f"{self.sched.now / MS:12.3f}ms  {line}")

    def _flush_digest(self) -> None:
        # repr of a list of plain tuples is deterministic and much cheaper than one update
        # per message
        self._digest.update(repr(self._delivered).encode())
        self._delivered.clear()

    def digest(self) -> str:
        """A hash of every event so far: equal digests mean identical runs."""
        self._flush_digest()
        return self._digest.hexdigest()

    def exercised(self) -> dict[str, int]:
        """How often each fault actually fired in this run, by name (sorted)."""
        counts = dict(self.faults_exercised)
        sources = [self.net.injected, *(self.disks[n].injected for n in self.node_ids)]
        for src in sources:
            for name, k in src.items():
                if k:
                    counts[name] = counts.get(name, 0) + k
        return dict(sorted(counts.items()))

    def _exercised(self, fault: Fault) -> None:
        self.faults_exercised[fault.value] = self.faults_exercised.get(fault.value, 0) + 1

    # --- the World protocol (called by drivers) --------------------------------------------

    def disk(self, node: NodeId) -> SimDisk:
        return self.disks[node]

    def now_ns(self, node: NodeId) -> int:
        return self.clocks[node].local(self.sched.now)

    def call_later(self, node: NodeId, delay_ns: int, fn: Callable[[], None]) -> None:
        delay = self.clocks[node].local_delay_to_true(delay_ns)
        self.sched.after(delay, self._run_for, (node, fn))

    def _run_for(self, arg: tuple[NodeId, Callable[[], None]]) -> None:
        node, fn = arg
        until = self.paused_until.get(node, 0)
        if until > self.sched.now:
            self.sched.at(until, self._run_for, arg)
            return
        fn()

    def submit_io(self, node: NodeId, perform: Callable[[], IoResult],
                  complete: Callable[[IoResult], None]) -> None:
        lo, hi = DISK_LATENCY_NS
        if self.p_disk_slow and self.rng.random() < self.p_disk_slow:
            lo, hi = DISK_SLOW_LATENCY_NS
            self._exercised(Fault.DISK_LATENCY)
        self.stats.disk_ops += 1
        inc = self.drivers[node].incarnation
        self.sched.after(self.rng.randrange(lo, hi), self._io_due, (node, inc, perform, complete))

    def _io_due(self, arg: tuple[NodeId, int, Callable[[], IoResult],
                                 Callable[[IoResult], None]]) -> None:
        node, inc, perform, complete = arg
        if self.drivers[node].incarnation != inc:
            return  # the process died before the write reached the disk
        until = self.paused_until.get(node, 0)
        if until > self.sched.now:
            self.sched.at(until, self._io_due, arg)
            return
        ok, error = result = perform()
        if not ok:
            self.note(f"{node} disk error: {error}")
        complete(result)

    def submit_job(self, node: NodeId, perform: Callable[[], Any],
                   complete: Callable[[Any], None]) -> None:
        """A background job (see the driver's `World`): it runs at a seeded later time, not
        in order with the node's disk ops, and is lost if the node crashes first."""
        inc = self.drivers[node].incarnation
        self.sched.after(self.rng.randrange(*JOB_LATENCY_NS), self._job_due,
                         (node, inc, perform, complete))

    def _job_due(self, arg: tuple[NodeId, int, Callable[[], Any], Callable[[Any], None]]) -> None:
        node, inc, perform, complete = arg
        if self.drivers[node].incarnation != inc:
            return  # the process died with the job
        until = self.paused_until.get(node, 0)
        if until > self.sched.now:
            self.sched.at(until, self._job_due, arg)
            return
        complete(perform())

    def send(self, src: NodeId, dst: NodeId, msg: Message) -> None:
        self.stats.messages_sent += 1
        arrivals = self.net.arrivals(self.sched.now, src, dst)
        if self._tracing:
            self.note(f"{src}->{dst} send {msg!r}" + ("" if arrivals else " (lost)"))
        for t in arrivals:
            self.sched.at(t, self._deliver, (src, dst, msg))

    def _deliver(self, arg: tuple[NodeId, NodeId, Message]) -> None:
        src, dst, msg = arg
        if self.paused_until:
            until = self.paused_until.get(dst, 0)
            if until > self.sched.now:
                self.sched.at(until, self._deliver, arg)
                return
        if self.net.cut and not self.net.delivers(src, dst):
            return
        driver = self.drivers[dst]
        if driver.node is None:
            return
        self.stats.messages_delivered += 1
        buf = self._delivered
        buf.append((self.sched.now, src, dst, msg))
        if len(buf) >= DIGEST_BATCH:
            self._flush_digest()
        driver.deliver(Received(src, msg))

    def reply(self, node: NodeId, reply: Reply) -> None:
        self.stats.replies += 1
        self.note(f"{node} reply #{reply.request_id} {reply.type} {reply.value!r} {reply.error}")
        callback = self._callbacks.pop(reply.request_id, None)
        if callback is not None:
            delay = self.rng.randrange(CLIENT_LATENCY_NS_MIN, CLIENT_LATENCY_NS_MAX)
            self.sched.after(delay, callback, reply)

    def applied(self, node: NodeId, apply: Apply) -> None:
        self.stats.applies += 1
        if self._tracing:
            self.note(f"{node} apply {apply.index} {apply.command!r}")

    def halted(self, node: NodeId, reason: str) -> None:
        self.stats.halts += 1
        self.note(f"{node} halted: {reason}")
        self.sched.after(self.rng.randrange(*HALT_RESTART_NS), self._restart, node)

    # --- clients ---------------------------------------------------------------------------

    def request(self, node: NodeId, f: str, key: Any, value: Any,
                callback: ReplyCallback) -> int:
        """Send a client request to `node`; `callback(reply)` runs when a reply arrives (maybe
        never: the node may crash). Returns the request id (to `forget` on a timeout)."""
        if len(self._callbacks) >= limits.sim_requests_open_max:
            raise LimitExceededError(
                f"{len(self._callbacks)} client requests unanswered in the simulator, the limit "
                "limits.sim_requests_open_max; clients must forget() requests they gave up on")
        self._next_request += 1
        rid = self._next_request
        self._callbacks[rid] = callback
        self.stats.requests += 1
        self.note(f"client->{node} #{rid} {f} {key!r} {value!r}")
        delay = self.rng.randrange(CLIENT_LATENCY_NS_MIN, CLIENT_LATENCY_NS_MAX)
        self.sched.after(delay, self._request_due, (node, ClientRequest(rid, f, key, value)))
        return rid

    def request_burst(self, node: NodeId, commands: list[tuple[str, Any, Any]],
                      callbacks: list[ReplyCallback]) -> list[int]:
        """Send a pipeline: several requests on one connection, without waiting. They
        arrive together and in the order sent (one delay, delivered in order), as a
        redis-py pipeline's requests do. Returns their request ids."""
        assert len(commands) == len(callbacks) > 0, (len(commands), len(callbacks))
        if len(self._callbacks) + len(commands) > limits.sim_requests_open_max:
            raise LimitExceededError(
                f"{len(self._callbacks)} client requests unanswered in the simulator, the limit "
                "limits.sim_requests_open_max; clients must forget() requests they gave up on")
        reqs = []
        for (f, key, value), callback in zip(commands, callbacks, strict=True):
            self._next_request += 1
            rid = self._next_request
            self._callbacks[rid] = callback
            self.stats.requests += 1
            self.note(f"client->{node} #{rid} {f} {key!r} {value!r} (pipelined)")
            reqs.append(ClientRequest(rid, f, key, value))
        delay = self.rng.randrange(CLIENT_LATENCY_NS_MIN, CLIENT_LATENCY_NS_MAX)
        self.sched.after(delay, self._burst_due, (node, reqs))
        return [r.request_id for r in reqs]

    def _burst_due(self, arg: tuple[NodeId, list[ClientRequest]]) -> None:
        node, reqs = arg
        until = self.paused_until.get(node, 0)
        if until > self.sched.now:
            self.sched.at(until, self._burst_due, arg)
            return
        for req in reqs:
            self.drivers[node].deliver(req)

    def forget(self, request_id: int) -> None:
        self._callbacks.pop(request_id, None)

    def _request_due(self, arg: tuple[NodeId, ClientRequest]) -> None:
        node, req = arg
        until = self.paused_until.get(node, 0)
        if until > self.sched.now:
            self.sched.at(until, self._request_due, arg)
            return
        self.drivers[node].deliver(req)  # dropped by the driver when the node is down

    # --- lifecycle and nemesis -------------------------------------------------------------

    def start(self) -> None:
        """Boot every node; start the nemesis when the plan has nemesis faults."""
        for n in self.node_ids:
            self.note(f"{n} start")
            self.drivers[n].start()
        self.nemesis_on = True
        self.sched.after(NEMESIS_INTERVAL_NS, self._nemesis_step)

    def crash(self, node: NodeId, restart_after_ns: int | None,
              power_loss: bool | None = None) -> None:
        """Kill `node`; a power loss (per `Fault.LOSE_UNSYNCED`, unless `power_loss` says)
        also loses unsynced bytes. Restart it after `restart_after_ns` unless None."""
        driver = self.drivers[node]
        if driver.node is None:
            return
        if power_loss is None:
            power_loss = bool(self.p_lose_unsynced) and self.rng.random() < self.p_lose_unsynced
        if power_loss:
            self._exercised(Fault.LOSE_UNSYNCED)
        driver.crash()
        self.paused_until.pop(node, None)  # a dead process is not paused any more
        self.disks[node].crash(power_loss)
        self.stats.crashes += 1
        self.note(f"{node} crash{' (power loss)' if power_loss else ''}")
        if restart_after_ns is not None:
            self.sched.after(restart_after_ns, self._restart, node)

    def restart(self, node: NodeId) -> None:
        """Start `node` again from its disk (no-op if it is running)."""
        self._restart(node)

    def _restart(self, node: NodeId) -> None:
        driver = self.drivers[node]
        if driver.node is not None:
            return
        self.stats.restarts += 1
        self.note(f"{node} restart from disk {self.disks[node].list()}")
        driver.start()

    def heal(self) -> None:
        """End the safety phase: no more faults; restart dead nodes, unpause paused ones."""
        self.nemesis_on = False
        self.net.heal_all()
        self.p_disk_slow = 0.0
        self.p_lose_unsynced = 0.0
        for n in self.node_ids:
            self.disks[n].heal()
            self.paused_until.pop(n, None)
            self._restart(n)
        self.note("heal")

    def _nemesis_step(self, _: Any = None) -> None:
        if not self.nemesis_on:
            return
        rng = self.nemesis_rng
        for fault, p in self.plan.probabilities:
            if rng.random() < p:
                self._inject(fault)
        self.sched.after(NEMESIS_INTERVAL_NS, self._nemesis_step)

    def _inject(self, fault: Fault) -> None:
        rng = self.nemesis_rng
        nodes = self.node_ids
        node = nodes[rng.randrange(len(nodes))]
        if fault is Fault.CRASH:
            self.crash(node, rng.randrange(*DOWN_NS))
        elif fault is Fault.RESTART:
            self.crash(node, 0)
        elif fault is Fault.PAUSE:
            if self.drivers[node].node is None or self.paused_until.get(node, 0) > self.sched.now:
                return
            self.paused_until[node] = self.sched.now + rng.randrange(*DOWN_NS)
            self.stats.pauses += 1
            self.note(f"{node} pause until {self.paused_until[node]}")
        elif fault is Fault.CLOCK_JUMP:
            delta = rng.randrange(MS, 2000 * MS) * rng.choice((-1, 1))
            self.clocks[node].jump(delta)
            self.stats.clock_jumps += 1
            self.note(f"{node} clock jump {delta / MS:+.1f}ms")
        elif fault is Fault.CLOG:
            if len(nodes) < 2:
                return  # a single node has no links to clog
            self._swizzle_clog()
        elif fault in (Fault.PARTITION, Fault.PARTITION_ONEWAY, Fault.ISOLATE, Fault.BRIDGE):
            if not self._partition(fault):
                return
        else:
            return  # per-message and per-op faults act in the network and the disks
        self._exercised(fault)

    def _partition(self, fault: Fault) -> bool:
        rng = self.nemesis_rng
        n = len(self.node_ids)
        if self.net.cut or n < 2 or (fault is Fault.BRIDGE and n < 3):
            return False  # one partition at a time
        order = list(self.node_ids)
        rng.shuffle(order)
        if fault is Fault.ISOLATE:
            self.net.isolate(order[0])
            label = f"isolate {order[0]}"
        elif fault is Fault.BRIDGE:
            k = rng.randrange(1, n - 1)
            a, bridge, b = tuple(order[:k]), order[k], tuple(order[k + 1:])
            self.net.bridge(a, bridge, b)
            label = f"bridge {list(a)} <{bridge}> {list(b)}"
        else:
            k = rng.randrange(1, n)
            a, b = tuple(order[:k]), tuple(order[k:])
            both = fault is Fault.PARTITION
            self.net.split(a, b, both_ways=both)
            label = f"partition {list(a)} {'<->' if both else '->'} {list(b)}"
        self.stats.partitions += 1
        self.net.partition_label = label
        self.note(label)
        self.sched.after(rng.randrange(*PARTITION_NS), self._heal_partition)
        return True

    def _heal_partition(self, _: Any = None) -> None:
        if self.net.cut:
            self.net.heal()
            self.note("partition healed")

    def _swizzle_clog(self) -> None:
        rng = self.nemesis_rng
        start = self.sched.now
        victims = [n for n in self.node_ids if rng.random() < 0.5]
        for node in victims:
            start += rng.randrange(0, 20 * MS)
            until = start + rng.randrange(10 * MS, 200 * MS)
            self.sched.at(start, self._clog, (node, until))

    def _clog(self, arg: tuple[NodeId, int]) -> None:
        node, until = arg
        if not self.nemesis_on:
            return
        self.stats.clogs += 1
        self.net.clog(node, until)
        self.note(f"clog {node} until {until / MS:.1f}ms")

    # --- running ---------------------------------------------------------------------------

    def run_until(self, time_ns: int, stop: Callable[[], bool] | None = None) -> None:
        self.sched.run_until(time_ns, stop)

    @property
    def now(self) -> int:
        return self.sched.now

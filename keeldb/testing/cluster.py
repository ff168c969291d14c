"""`SimCluster`: a reference system in a `SimWorld` with clients, a history and checkers.

A run (`run_sim`) has three parts, after TigerBeetle's VOPR:

1. safety phase: clients run the workload while the fault plan's nemesis attacks;
2. liveness phase: every fault healed, dead nodes restarted; the workload's final reads must
   all succeed within `liveness_ms`, else the run fails with a liveness violation;
3. checkers: the workload's checkers (lost writes, linearizability, ...) over the history.

Every failing run prints one line that reproduces it (`SimResult.repro`). `SimCluster` is also
the helper for scripted scenarios: `request`, `crash`, `restart`, `run_for`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from keeldb import limits
from keeldb.check.history import Op
from keeldb.errors import UsageError
from keeldb.node.effects import Node, Reply
from keeldb.runtime.sim.faults import Fault, FaultPlan
from keeldb.runtime.sim.world import MS, SimWorld, WorldStats
from keeldb.testing.checkers import Violation
from keeldb.testing.echo import EchoNode
from keeldb.testing.history import HistoryRecorder
from keeldb.testing.primary_backup import PrimaryBackupNode
from keeldb.testing.raft_kv import SimRaftKvNode
from keeldb.testing.raft_redis import SimRedisNode
from keeldb.testing.redis_workloads import REDIS_WORKLOADS
from keeldb.testing.register_service import RegisterNode
from keeldb.testing.workloads import WORKLOADS, Command, Workload, make_workload
from keeldb.types import NodeId

CLIENT_TIMEOUT_NS = 100 * MS
THINK_NS_MAX = 5 * MS
SAFETY_TICKS_DEFAULT = 1000  # 1 tick = 1 ms of virtual time
LIVENESS_MS_DEFAULT = 2000
CLIENTS_DEFAULT = 4
VIOLATIONS_SHOWN_MAX = 20  # in summaries; the result keeps them all
ISOLATION_DEFAULT = "watch"


@dataclass(frozen=True, slots=True)
class SystemSpec:
    name: str
    factory: Callable[[], Node]
    nodes: tuple[str, ...]
    correct: bool
    doc: str
    checkable: bool = True  # False: it serves no workload (the benchmark system)
    # A system with its own clients (raft-redis) names its runner and its workloads;
    # the others run `SimCluster` with `keeldb.testing.workloads.WORKLOADS`.
    runner: Callable[[SimConfig], SimResult] | None = None
    workloads: tuple[str, ...] | None = None


def _run_raft_redis(config: SimConfig) -> SimResult:
    from keeldb.testing.redis_cluster import run_redis_sim  # it builds on SimCluster

    return run_redis_sim(config)


SYSTEMS: dict[str, SystemSpec] = {
    "register": SystemSpec("register", RegisterNode, ("n1",), True,
                           "single-node register service with a synced log (correct)"),
    "primary-backup": SystemSpec("primary-backup", PrimaryBackupNode, ("n1", "n2", "n3"), False,
                                 "async primary-backup with naive failover (incorrect)"),
    "raft-kv": SystemSpec("raft-kv", SimRaftKvNode, ("n1", "n2", "n3"), True,
                          "3 Raft nodes replicating the register state machine (correct)"),
    "raft-redis": SystemSpec("raft-redis", SimRedisNode, ("n1", "n2", "n3"), True,
                             "3 Raft nodes replicating the server's Redis state machine; "
                             "clients WATCH/MULTI/EXEC (correct)",
                             runner=_run_raft_redis, workloads=tuple(REDIS_WORKLOADS)),
    "raft-redis-lsm": SystemSpec("raft-redis-lsm", SimRedisNode, ("n1", "n2", "n3"), True,
                                 "raft-redis with each node's KV state in an LSM engine on "
                                 "its own simulated disk, durable on its own (correct)",
                                 runner=_run_raft_redis, workloads=tuple(REDIS_WORKLOADS)),
    "echo": SystemSpec("echo", EchoNode, ("n1", "n2", "n3"), True,
                       "nodes bouncing messages (simulator benchmark: --bench)",
                       checkable=False),
}


def workloads_of(name: str) -> tuple[str, ...]:
    """The workloads system `name` serves."""
    spec = system(name)
    return spec.workloads if spec.workloads is not None else tuple(WORKLOADS)


def system(name: str) -> SystemSpec:
    if name not in SYSTEMS:
        raise UsageError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    return SYSTEMS[name]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One run. `faults` None means swarm: the seed picks the subset."""

    system: str
    seed: int
    faults: tuple[Fault, ...] | None = None
    workload: str = "register"
    ticks_max: int = SAFETY_TICKS_DEFAULT
    liveness_ms: int = LIVENESS_MS_DEFAULT
    clients: int = CLIENTS_DEFAULT
    trace: bool = False
    # raft-redis: "watch" (WATCH/MULTI/EXEC) or a TXN isolation level (redis_workloads)
    isolation: str = ISOLATION_DEFAULT
    # raft-kv: half the clients (seeded) send bursts of 2..pipeline requests on one
    # connection without waiting, as redis-py pipelines do; 0 or 1: no pipelining
    pipeline: int = 0

    def plan(self) -> FaultPlan:
        if self.faults is None:
            return FaultPlan.swarm(self.seed)
        return FaultPlan.of(self.seed, self.faults)


@dataclass
class SimResult:
    config: SimConfig
    plan: FaultPlan
    digest: str
    history: list[Op]
    violations: list[Violation]
    stats: WorldStats
    faults_exercised: dict[str, int]
    trace: list[str]
    virtual_ns: int
    events: int
    wall_s: float

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def repro(self) -> str:
        c = self.config
        line = (f"keeldb sim --system {c.system} --seed {c.seed} --faults {self.plan.names()}"
                f" --workload {c.workload}")
        if c.ticks_max != SAFETY_TICKS_DEFAULT:
            line += f" --ticks-max {c.ticks_max}"
        if c.clients != CLIENTS_DEFAULT:
            line += f" --clients {c.clients}"
        if c.isolation != ISOLATION_DEFAULT:
            line += f" --isolation {c.isolation}"
        if c.pipeline > 1 or c.system == "raft-kv":
            line += f" --pipeline {c.pipeline}"  # the CLI's default differs per system
        return line

    def summary(self) -> dict[str, Any]:
        return {"system": self.config.system, "seed": self.config.seed, "ok": self.ok,
                "faults": [f.value for f in self.plan.faults],
                "faults_exercised": self.faults_exercised, "digest": self.digest,
                "violations": [str(v) for v in self.violations[:VIOLATIONS_SHOWN_MAX]],
                "violation_count": len(self.violations), "repro": self.repro,
                "ops": len(self.history), "virtual_ms": self.virtual_ns // MS,
                "events": self.events}


@dataclass
class _Client:
    index: int
    process: int
    rng: random.Random
    target: int = 0
    token: int = 0
    final: tuple[str, Any, Any] | None = None
    done: bool = False
    pipeline: int = 1  # most requests per burst; 1: one at a time


class SimCluster:
    """A system, its world, its clients and their history."""

    def __init__(self, config: SimConfig, workload: Workload | None = None) -> None:
        self.config = config
        self.spec = system(config.system)
        if not self.spec.checkable:
            raise UsageError(f"system {config.system!r} serves no workload; it is for "
                             "`keeldb sim --bench`")
        self.plan = config.plan()
        self.world = SimWorld(config.seed, self.spec.nodes, self.spec.factory, self.plan,
                              trace=config.trace)
        self.workload = workload if workload is not None else make_workload(config.workload)
        self.recorder = HistoryRecorder()
        self.clients: list[_Client] = []
        self.phase = "safety"
        self._next_process = 0
        self._finals_open = 0

    # --- scripted helpers ------------------------------------------------------------------

    def start(self) -> None:
        self.world.start()

    def run_for(self, ms: float) -> None:
        self.world.run_until(self.world.now + int(ms * MS))

    def crash(self, node: str, restart_after_ms: float | None = None,
              power_loss: bool | None = None) -> None:
        after = None if restart_after_ms is None else int(restart_after_ms * MS)
        self.world.crash(NodeId(node), after, power_loss)

    def restart(self, node: str) -> None:
        self.world.restart(NodeId(node))

    def isolate(self, node: str) -> None:
        self.world.net.isolate(NodeId(node))

    def heal(self) -> None:
        self.world.heal()

    def request(self, node: str, f: str, key: Any = None, value: Any = None,
                timeout_ms: float = 100) -> Reply | None:
        """Send one request and run the world until its reply (None on timeout)."""
        got: list[Reply] = []
        rid = self.world.request(NodeId(node), f, key, value, got.append)
        deadline = self.world.now + int(timeout_ms * MS)
        self.world.run_until(deadline, stop=lambda: bool(got))
        if not got:
            self.world.forget(rid)
        return got[0] if got else None

    # --- the workload's clients ------------------------------------------------------------

    def _new_process(self) -> int:
        self._next_process += 1
        return self._next_process - 1

    def add_clients(self, n: int) -> None:
        for _ in range(n):
            i = len(self.clients)
            c = _Client(i, self._new_process(), random.Random(f"{self.config.seed}:client:{i}"))
            c.target = c.rng.randrange(len(self.spec.nodes))
            # own stream, so seeds without pipelining keep their old schedules
            pipe_rng = random.Random(f"{self.config.seed}:pipeline:{i}")
            if self.config.pipeline > 1 and pipe_rng.random() < 0.5:
                c.pipeline = self.config.pipeline
            self.clients.append(c)
            self.world.sched.after(c.rng.randrange(THINK_NS_MAX), self._issue, c)

    def _next_command(self, c: Any, workload: Any) -> Command | None:
        """The client's next operation: its pending final read, a workload op while the
        safety phase lasts, else None (and the client is done)."""
        if c.done:
            return None
        if c.final is not None:
            return c.final  # type: ignore[no-any-return]
        if self.phase == "safety":
            return workload.next_op(c.rng)  # type: ignore[no-any-return]
        c.done = True
        return None

    def _issue(self, c: _Client) -> None:
        if c.pipeline > 1 and c.final is None and self.phase == "safety" and not c.done \
                and c.rng.random() < 0.5:
            self._issue_burst(c)
            return
        command = self._next_command(c, self.workload)
        if command is None:
            return
        f, key, value = command
        now = self.world.now
        self.recorder.invoke(c.process, f, key, value, now)
        c.token += 1
        token = c.token
        node = NodeId(self.spec.nodes[c.target])
        rid = self.world.request(node, f, key, value,
                                 lambda reply: self._on_reply(c, token, reply))
        self.world.sched.after(CLIENT_TIMEOUT_NS, self._on_timeout, (c, token, rid))

    def _on_reply(self, c: _Client, token: int, reply: Reply) -> None:
        if token != c.token or not self.recorder.is_open(c.process):
            return  # a late reply to an operation already given up on
        c.token += 1
        inv_value = self._open_value(c)
        value = reply.value if reply.type == "ok" and self._returns_value(c) else inv_value
        self.recorder.complete(c.process, reply.type, value, self.world.now)
        if reply.type == "info":
            c.process = self._new_process()
        if reply.type == "fail":
            self._follow_hint(c, reply)
        if c.final is not None and reply.type == "ok":
            c.final = None
            c.done = True
            self._finals_open -= 1
            return
        self.world.sched.after(c.rng.randrange(THINK_NS_MAX), self._issue, c)

    def _on_timeout(self, arg: tuple[_Client, int, int]) -> None:
        c, token, rid = arg
        if token != c.token:
            return
        c.token += 1
        self.world.forget(rid)
        self.recorder.complete(c.process, "info", self._open_value(c), self.world.now)
        c.process = self._new_process()  # the old op may still happen: a new process goes on
        c.target = c.rng.randrange(len(self.spec.nodes))
        self.world.sched.after(c.rng.randrange(THINK_NS_MAX), self._issue, c)

    def _issue_burst(self, c: _Client) -> None:
        """Pipeline 2..c.pipeline workload ops to one node. Each op is its own process in
        the history (they overlap in time) with an `after` link to the one sent before it:
        the node must apply them in the order sent."""
        assert 2 <= c.pipeline <= limits.sim_pipeline_max, c.pipeline
        n = c.rng.randrange(2, c.pipeline + 1)
        now = self.world.now
        commands = [self.workload.next_op(c.rng) for _ in range(n)]
        procs: list[int] = []
        prev: int | None = None
        for f, key, value in commands:
            proc = self._new_process()
            prev = self.recorder.invoke(proc, f, key, value, now, after=prev)
            procs.append(proc)
        c.token += 1
        token = c.token
        node = NodeId(self.spec.nodes[c.target])
        callbacks = [self._burst_callback(c, token, procs, p) for p in procs]
        rids = self.world.request_burst(node, commands, callbacks)
        self.world.sched.after(CLIENT_TIMEOUT_NS, self._on_burst_timeout,
                               (c, token, procs, rids))

    def _burst_callback(self, c: _Client, token: int, procs: list[int],
                        proc: int) -> Callable[[Reply], None]:
        return lambda reply: self._on_burst_reply(c, token, procs, proc, reply)

    def _on_burst_reply(self, c: _Client, token: int, procs: list[int], proc: int,
                        reply: Reply) -> None:
        if token != c.token or not self.recorder.is_open(proc):
            return  # a late reply to a burst already given up on
        inv = self.recorder.open_op(proc)
        returns = inv.f in ("read", "txn", "read-accounts")
        value = reply.value if reply.type == "ok" and returns else inv.value
        self.recorder.complete(proc, reply.type, value, self.world.now)
        if reply.type == "fail":
            self._follow_hint(c, reply)
        if any(self.recorder.is_open(p) for p in procs):
            return
        c.token += 1  # the whole burst is answered: think, then go on
        self.world.sched.after(c.rng.randrange(THINK_NS_MAX), self._issue, c)

    def _on_burst_timeout(self, arg: tuple[_Client, int, list[int], list[int]]) -> None:
        c, token, procs, rids = arg
        if token != c.token:
            return
        c.token += 1
        for proc, rid in zip(procs, rids, strict=True):
            self.world.forget(rid)
            if self.recorder.is_open(proc):
                self.recorder.complete(proc, "info", self.recorder.open_op(proc).value,
                                       self.world.now)
        c.target = c.rng.randrange(len(self.spec.nodes))
        self.world.sched.after(c.rng.randrange(THINK_NS_MAX), self._issue, c)

    def _follow_hint(self, c: Any, reply: Reply) -> None:
        """After a failed request: go to the leader a redirect names, else to a random node
        when the failure says why (no leader known, timed out)."""
        hint = reply.value
        if isinstance(hint, str) and hint in self.spec.nodes:
            c.target = self.spec.nodes.index(hint)
        elif reply.error:
            c.target = c.rng.randrange(len(self.spec.nodes))

    def _open_value(self, c: _Client) -> Any:
        return self.recorder.open_op(c.process).value

    def _returns_value(self, c: _Client) -> bool:
        return self.recorder.open_op(c.process).f in ("read", "txn", "read-accounts")

    # --- a whole run -----------------------------------------------------------------------

    def run(self) -> SimResult:
        """Safety phase, liveness phase, checkers. A node or driver that raises (a broken
        invariant) ends the run with an `exception` violation: that is a finding too."""
        wall0 = time.perf_counter()
        violations: list[Violation] = []
        try:
            self._safety_phase()
            violations += self._liveness_phase()
        except Exception as exc:  # any crash of node code is a finding, with its repro line
            violations.append(Violation("exception", f"{type(exc).__name__}: {exc}"))
        self.recorder.close_all(self.world.now)
        if not any(v.checker == "exception" for v in violations):
            violations += self.workload.check(self.recorder.ops)
        return SimResult(self.config, self.plan, self.world.digest(), self.recorder.ops,
                         violations, self.world.stats, self.world.exercised(),
                         self.world.trace_lines, self.world.now, self.world.sched.executed,
                         time.perf_counter() - wall0)

    def _safety_phase(self) -> None:
        self.start()
        self.add_clients(self.config.clients)
        self.world.run_until(self.config.ticks_max * MS)

    def _liveness_phase(self) -> list[Violation]:
        self.phase = "liveness"
        healed_at = self.world.now
        self.world.heal()
        for c in self.clients:
            c.done = True  # no new workload ops; their open ops finish or time out
        for command in self.workload.final_ops():
            i = len(self.clients)
            fc = _Client(i, self._new_process(), random.Random(f"{self.config.seed}:final:{i}"),
                         final=command)
            fc.target = fc.rng.randrange(len(self.spec.nodes))
            self.clients.append(fc)
            self._finals_open += 1
            self.world.sched.after(fc.rng.randrange(THINK_NS_MAX), self._issue, fc)
        deadline = healed_at + self.config.liveness_ms * MS
        self.world.run_until(deadline, stop=lambda: self._finals_open == 0)
        if not self._finals_open:
            return []
        return [Violation("liveness", f"{self._finals_open} final read(s) got no ok reply "
                          f"within {self.config.liveness_ms} ms after the faults healed")]


def run_sim(config: SimConfig) -> SimResult:
    """Run one seed: safety phase, liveness phase, checkers."""
    spec = system(config.system)
    if config.workload not in workloads_of(config.system):
        raise UsageError(f"system {config.system!r} has no workload {config.workload!r}; "
                         f"known: {', '.join(workloads_of(config.system))}")
    if spec.runner is not None:
        return spec.runner(config)
    if config.isolation != ISOLATION_DEFAULT:
        raise UsageError(f"system {config.system!r} has no transactions to run at "
                         f"{config.isolation!r}; isolation levels are for raft-redis")
    return SimCluster(config).run()



def swarm(system_name: str, seeds: range, *, faults: tuple[Fault, ...] | None = None,
          workload: str = "register", ticks_max: int = SAFETY_TICKS_DEFAULT,
          clients: int = CLIENTS_DEFAULT,
          isolation: str = ISOLATION_DEFAULT) -> Iterator[SimResult]:
    """Run many seeds (swarm testing when `faults` is None); yields each result."""
    for seed in seeds:
        yield run_sim(SimConfig(system_name, seed, faults, workload, ticks_max,
                                clients=clients, isolation=isolation))


@dataclass(frozen=True, slots=True)
class BenchResult:
    deliveries: int
    wall_s: float
    cpu_s: float  # this process's CPU time: less disturbed by other load on the machine
    virtual_ms: int

    @property
    def per_second(self) -> float:
        """Simulated deliveries per second of wall time."""
        return self.deliveries / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def per_cpu_second(self) -> float:
        return self.deliveries / self.cpu_s if self.cpu_s > 0 else 0.0


def bench(virtual_ms: int = 2000, seed: int = 1) -> BenchResult:
    """Simulated message deliveries per wall-clock second: the echo system, no faults."""
    world = SimWorld(seed, SYSTEMS["echo"].nodes, EchoNode, FaultPlan.of(seed, ()))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    world.start()
    world.run_until(virtual_ms * MS)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return BenchResult(world.stats.messages_delivered, wall, cpu, virtual_ms)

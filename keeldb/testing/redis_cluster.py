"""`RedisSimCluster`: the raft-redis system's clients, which speak batches like the server does.

A client runs one history operation at a time as a *plan* (`keeldb.testing.redis_workloads`):
a sequence of `kvstate.Batch`es, each sent as `raft_kv_sm.encode_command(batch, now_ms)` (the
node's own clock, as `RaftApplyPath` uses the server's). Every write batch carries the client's
session `(client id, seq)`, so resending it after a timeout or an unknown outcome, to any node,
applies it at most once and returns the first reply (`KvStateMachine`'s session table).

A batch is sent at most `ATTEMPTS_MAX` times (a new random node after each failure). When the
attempts run out the operation completes `fail` if nothing it sent can have taken effect, else
`info` (and the client continues as a new process, the Jepsen convention). The liveness phase's
final reads retry until the deadline. Safety phase, liveness phase and checkers are
`SimCluster`'s (`keeldb.testing.cluster`).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from keeldb.node import kvstate as kv
from keeldb.node.effects import Reply
from keeldb.node.raft_kv_sm import encode_command, unpack_applied
from keeldb.runtime.sim.world import MS
from keeldb.testing.checkers import Violation
from keeldb.testing.cluster import CLIENT_TIMEOUT_NS, THINK_NS_MAX, SimCluster, SimConfig, SimResult
from keeldb.testing.raft_redis import EPOCH_MS, LSM_SYSTEM, StoreWorld
from keeldb.testing.redis_workloads import Plan, RedisWorkload, make_redis_workload
from keeldb.testing.workloads import Command
from keeldb.types import NodeId

ATTEMPTS_MAX = 5  # sends of one batch before the operation gives up (finals: no limit)


@dataclass
class _RedisClient:
    index: int
    process: int
    cid: int  # the session's client id (kvstate sessions: u64)
    rng: random.Random
    target: int = 0
    token: int = 0  # bumped per send and per answer: late replies are recognised and dropped
    seq: int = 0  # the session's last used sequence number
    final: Command | None = None
    done: bool = False
    plan: Plan | None = None
    batch: kv.Batch | None = None
    attempts: int = 0
    maybe_applied: bool = False  # a write of this op may have (or has) taken effect


class RedisSimCluster(SimCluster):
    """A `SimCluster` whose clients run plans of batches (see the module docstring)."""

    def __init__(self, config: SimConfig, workload: RedisWorkload | None = None) -> None:
        chosen = (workload if workload is not None
                  else make_redis_workload(config.workload, config.isolation))
        super().__init__(config, chosen)  # type: ignore[arg-type]
        if config.system == LSM_SYSTEM:  # every node also has a store disk for its LSM
            self.world = StoreWorld(config.seed, self.spec.nodes, self.plan, trace=config.trace)
        self.redis_workload = chosen
        self.redis_clients: list[_RedisClient] = []
        self.gave_up = 0  # operations that ran out of attempts

    # --- clients ---------------------------------------------------------------------------

    def _new_client(self, rng_name: str, final: Command | None = None) -> _RedisClient:
        i = len(self.redis_clients)
        c = _RedisClient(i, self._new_process(), i + 1,
                         random.Random(f"{self.config.seed}:{rng_name}:{i}"), final=final)
        c.target = c.rng.randrange(len(self.spec.nodes))
        self.redis_clients.append(c)
        self.world.sched.after(c.rng.randrange(THINK_NS_MAX), self._issue, c)
        return c

    def add_clients(self, n: int) -> None:
        for _ in range(n):
            self._new_client("client")

    def _issue(self, c: Any) -> None:
        assert isinstance(c, _RedisClient), c
        command = self._next_command(c, self.redis_workload)
        if command is None:
            return
        f, key, value = command
        self.recorder.invoke(c.process, f, key, value, self.world.now)
        c.plan = self.redis_workload.plan(f, key, value)
        c.maybe_applied = False
        self._advance(c, None)

    def _advance(self, c: _RedisClient, applied: kv.Applied | None) -> None:
        """Feed the plan the last batch's outcome; send its next batch or complete the op."""
        assert c.plan is not None
        try:
            batch = next(c.plan) if applied is None else c.plan.send(applied)
        except StopIteration as stop:
            kind, value = stop.value
            self._complete(c, kind, value)
            return
        if not batch.read_only:
            c.seq += 1
            batch = dataclasses.replace(batch, session=(c.cid, c.seq))
        c.batch, c.attempts = batch, 0
        self._send(c)

    def _send(self, c: _RedisClient) -> None:
        assert c.batch is not None
        c.attempts += 1
        node = NodeId(self.spec.nodes[c.target])
        now_ms = EPOCH_MS + max(0, self.world.now_ns(node) // MS)
        f, data = encode_command(c.batch, now_ms)
        c.token += 1
        token = c.token
        rid = self.world.request(node, f, None, data,
                                 lambda reply: self._on_reply(c, token, reply))
        self.world.sched.after(CLIENT_TIMEOUT_NS, self._on_timeout, (c, token, rid))

    def _on_reply(self, c: Any, token: int, reply: Reply) -> None:
        if token != c.token:
            return  # a late reply to a send already given up on
        c.token += 1
        if reply.type == "ok":
            self._advance(c, unpack_applied(reply.value))
            return
        if reply.type == "info":  # accepted, not committed in time: it may still apply
            c.maybe_applied = c.maybe_applied or not c.batch.read_only
        self._retry(c)

    def _on_timeout(self, arg: tuple[Any, int, int]) -> None:
        c, token, rid = arg
        if token != c.token:
            return
        c.token += 1
        self.world.forget(rid)
        c.maybe_applied = c.maybe_applied or not c.batch.read_only
        self._retry(c)

    def _retry(self, c: _RedisClient) -> None:
        c.target = c.rng.randrange(len(self.spec.nodes))
        if c.final is None and c.attempts >= ATTEMPTS_MAX:
            self.gave_up += 1
            inv = self.recorder.open_op(c.process)
            self._complete(c, "info" if c.maybe_applied else "fail", inv.value)
            return
        self.world.sched.after(c.rng.randrange(THINK_NS_MAX), self._send, c)

    def _complete(self, c: _RedisClient, kind: str, value: Any) -> None:
        if c.plan is not None:
            c.plan.close()
        c.plan, c.batch = None, None
        self.recorder.complete(c.process, kind, value, self.world.now)
        if kind == "info":
            c.process = self._new_process()  # the old op may still happen
        if c.final is not None and kind == "ok":
            c.final, c.done = None, True
            self._finals_open -= 1
            return
        self.world.sched.after(c.rng.randrange(THINK_NS_MAX), self._issue, c)

    # --- the liveness phase ----------------------------------------------------------------

    def _liveness_phase(self) -> list[Violation]:
        self.phase = "liveness"
        healed_at = self.world.now
        self.world.heal()
        for c in self.redis_clients:
            c.done = c.plan is None  # idle clients stop; busy ones finish their operation
        for command in self.redis_workload.final_ops():
            self._finals_open += 1
            self._new_client("final", final=command)
        deadline = healed_at + self.config.liveness_ms * MS
        self.world.run_until(deadline, stop=lambda: self._finals_open == 0)
        if not self._finals_open:
            return []
        return [Violation("liveness", f"{self._finals_open} final read(s) got no ok reply "
                          f"within {self.config.liveness_ms} ms after the faults healed")]


def run_redis_sim(config: SimConfig) -> SimResult:
    """One seed of the raft-redis system: safety phase, liveness phase, checkers."""
    return RedisSimCluster(config).run()

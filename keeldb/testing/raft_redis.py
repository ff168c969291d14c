"""The `raft-redis` system: three `RaftNode`s replicating the server's Redis state machine.

The state machine is the one `keeldb serve --peers` runs: `keeldb.node.raft_kv_sm.RaftKvSM`
over `keeldb.node.kvstate.KvStateMachine` (typed requests, WATCH tokens, client sessions,
expiry by log time), here over the in-memory engine. Each incarnation of a node starts with an
empty engine, so after a crash its state comes back from the Raft snapshot and the log replay
(the store-behind path of `RaftKvSM.restore`). Clients (`keeldb.testing.redis_cluster`) send
encoded `kvstate.Batch`es exactly as the server's `RaftApplyPath` does
(`raft_kv_sm.encode_command`: `read` for read-only batches, `write` for the rest).

`raft-redis-lsm` is the same with the server's storage: each node's KV state lives in an
`LsmEngine` on a store disk of its own (`StoreWorld`), durable on its own and crashed with
the node, so a restarted node finds its store ahead of the Raft snapshot (the replayed
entries it holds are skipped) or behind it (the snapshot is restored).

    keeldb sim --system raft-redis --workload list-append --seeds 200
    keeldb sim --system raft-redis-lsm --workload bank --isolation serializable --seed 4
"""

from __future__ import annotations

import random

from keeldb.errors import CorruptionError, StorageIOError
from keeldb.node.effects import Effect, Event, Halt, Start
from keeldb.node.kvstate import KvStateMachine
from keeldb.node.raft_kv_sm import RaftKvSM
from keeldb.node.raft_node import RaftNode
from keeldb.runtime.sim.disk import SimDisk
from keeldb.runtime.sim.faults import Fault, FaultPlan
from keeldb.runtime.sim.world import SimWorld
from keeldb.storage.engine import Options
from keeldb.storage.lsm import LsmEngine
from keeldb.storage.memory import MemoryEngine
from keeldb.testing.raft_kv import SIM_CONFIG
from keeldb.types import NodeId

# Log time starts here (a plausible wall clock in ms) plus the node's simulated clock, so a
# skewed or jumping node clock still proposes a non-negative time.
EPOCH_MS = 1_700_000_000_000


def new_state_machine() -> RaftKvSM:
    """A fresh server state machine over an empty in-memory engine."""
    return RaftKvSM(KvStateMachine(MemoryEngine()))


class SimRedisNode(RaftNode):
    """A raft-redis node tuned for the simulator (`raft_kv.SIM_CONFIG`: 5 ms ticks, a snapshot
    every 64 entries, so runs exercise compaction and snapshot install too)."""

    def __init__(self) -> None:
        super().__init__(new_state_machine, SIM_CONFIG)

    @property
    def kv(self) -> KvStateMachine:
        """The node's Redis state machine (tests inspect it)."""
        sm = self.sessions.sm
        assert isinstance(sm, RaftKvSM), type(sm)
        return sm.kv


# --- the same system with the LSM engine on a simulated disk: `raft-redis-lsm` -------------

# Small memtables and tables, so a one-second run flushes and compacts many times.
STORE_OPTIONS = Options(memtable_bytes=16 * 1024, table_bytes=32 * 1024,
                        level1_bytes=128 * 1024)
LSM_SYSTEM = "raft-redis-lsm"
BACKGROUND_STEPS_MAX = 4  # flush/compaction steps run after each node step (bounded work)


class StoreWorld(SimWorld):
    """A `SimWorld` in which every node also owns a store disk (`stores`) for its LSM
    engine, with the plan's disk faults. A crash of the node crashes both disks alike: a
    process crash keeps both page caches, a power loss loses what neither synced."""

    def __init__(self, seed: int, nodes: tuple[str, ...], plan: FaultPlan, *,
                 trace: bool = False) -> None:
        self.stores: dict[NodeId, SimDisk] = {
            NodeId(n): SimDisk(random.Random(f"{seed}:store:{n}"),
                               p_enospc=plan.p(Fault.ENOSPC),
                               p_fsync_fail=plan.p(Fault.FSYNC_FAIL),
                               p_bitflip=plan.p(Fault.BITFLIP), p_torn=plan.p(Fault.TORN_WRITE))
            for n in nodes}
        super().__init__(seed, nodes, lambda: SimRedisLsmNode(self.stores), plan, trace=trace)

    def crash(self, node: NodeId, restart_after_ns: int | None,
              power_loss: bool | None = None) -> None:
        if self.drivers[node].node is None:
            return
        if power_loss is None:
            power_loss = bool(self.p_lose_unsynced) and self.rng.random() < self.p_lose_unsynced
            if power_loss:
                self._exercised(Fault.LOSE_UNSYNCED)
        super().crash(node, restart_after_ns, power_loss)
        self.stores[node].crash(power_loss)

    def heal(self) -> None:
        for store in self.stores.values():
            store.heal()
        super().heal()

    def exercised(self) -> dict[str, int]:
        counts = super().exercised()
        for store in self.stores.values():
            for name, k in store.injected.items():
                if k:
                    counts[name] = counts.get(name, 0) + k
        return dict(sorted(counts.items()))


class SimRedisLsmNode(RaftNode):
    """A raft-redis node whose KV state lives in an `LsmEngine` on its store disk, durable on
    its own as in `keeldb serve`: after a crash `RaftKvSM` finds the store ahead of the Raft
    snapshot (skips what it holds) or behind it (restores the snapshot). A store I/O error
    (ENOSPC, EIO) halts the node, which the world restarts from its disks."""

    def __init__(self, stores: dict[NodeId, SimDisk]) -> None:
        super().__init__(new_state_machine, SIM_CONFIG)  # replaced at Start, by node id
        self.stores = stores
        self.engine: LsmEngine | None = None

    def step(self, event: Event) -> list[Effect]:
        # The simulator's bit flips are transient, so a store that reads as corrupt is
        # re-read by a restart, like the Raft log's suspect bytes. (`RaftNode._start` raises
        # CorruptionError only for its own files: that one is not caught here.)
        caught: tuple[type[Exception], ...] = (StorageIOError, CorruptionError)
        try:
            if isinstance(event, Start):
                self.engine = LsmEngine(self.stores[event.node], STORE_OPTIONS)
                self.sessions.sm = RaftKvSM(KvStateMachine(self.engine))
                caught = (StorageIOError,)
            out = super().step(event)
            caught = (StorageIOError, CorruptionError)
            if self.engine is not None:
                for _ in range(BACKGROUND_STEPS_MAX):
                    if not (self.engine.flush_step() or self.engine.compact_step()):
                        break
            return out
        except caught as exc:  # DiskFullError is a StorageIOError
            self.state = "halting"
            return [Halt(f"store error: {exc}")]

    @property
    def kv(self) -> KvStateMachine:
        sm = self.sessions.sm
        assert isinstance(sm, RaftKvSM), type(sm)
        return sm.kv

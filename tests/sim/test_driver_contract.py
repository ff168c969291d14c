"""The driver contract inside the simulated world: a message that depends on a write leaves
only once the write is durable, and never when a crash lost the write."""

from __future__ import annotations

from typing import Any

from keeldb.node.effects import (
    ClientRequest,
    Effect,
    Event,
    Persist,
    Received,
    Reply,
    Send,
    Start,
    Sync,
)
from keeldb.runtime.sim.faults import Fault, FaultPlan
from keeldb.runtime.sim.world import MS, SimWorld
from keeldb.types import NodeId

N1, N2 = NodeId("n1"), NodeId("n2")
WORLD: list[SimWorld] = []
RECEIVED: list[tuple[Any, bytes]] = []


class Writer:
    """n1 writes each request to its log, syncs, then tells n2; n2 records what it hears
    together with n1's durable log at that instant."""

    def __init__(self) -> None:
        self.me = NodeId("")
        self.op = 0

    def step(self, event: Event) -> list[Effect]:
        if isinstance(event, Start):
            self.me = event.node
        elif isinstance(event, ClientRequest):
            self.op += 2
            data = f"{event.value};".encode()
            return [Persist(self.op - 1, "log", data), Sync(self.op, "log"),
                    Send(N2, event.value, after=self.op),
                    Reply(event.request_id, "ok", after=self.op)]
        elif isinstance(event, Received):
            disk = WORLD[-1].disks[N1]
            durable = disk._files["log"].durable if disk.exists("log") else b""
            RECEIVED.append((event.msg, durable))
        return []


def _world(seed: int, faults: tuple[Fault, ...] = ()) -> SimWorld:
    WORLD.clear()
    RECEIVED.clear()
    w = SimWorld(seed, ("n1", "n2"), Writer, FaultPlan.of(seed, faults))
    WORLD.append(w)
    w.start()
    return w


def test_sends_leave_only_after_their_write_is_durable() -> None:
    w = _world(1, (Fault.DISK_LATENCY,))
    for v in range(20):
        w.request(N1, "write", None, v, lambda r: None)
        w.run_until(w.now + 2 * MS)
    w.run_until(w.now + 200 * MS)
    assert [m for m, _ in RECEIVED] == list(range(20))
    for msg, durable in RECEIVED:
        assert f"{msg};".encode() in durable


def test_a_crash_before_the_sync_means_the_message_never_leaves() -> None:
    lost = kept = 0
    for seed in range(30):
        w = _world(seed)
        replies: list[Reply] = []
        w.request(N1, "write", None, "v", replies.append)
        # the request arrives after 0.2-1 ms, its disk ops take 10-200 us each: crash inside
        w.run_until(w.rng.randrange(200_000, 1_400_000))
        w.crash(N1, restart_after_ns=MS, power_loss=True)
        w.run_until(50 * MS)
        durable = w.disks[N1].exists("log") and b"v;" in w.disks[N1].open("log").read_at(0, 99)
        if not durable:
            lost += 1
            assert RECEIVED == [] and replies == [], f"seed {seed}: message of a lost write left"
        else:
            kept += 1  # synced before the crash: the message left at that instant
            assert [m for m, _ in RECEIVED] == ["v"] and [r.type for r in replies] == ["ok"]
    assert lost > 0 and kept > 0  # the schedule hit both sides of the window

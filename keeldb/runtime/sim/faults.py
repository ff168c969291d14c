"""Every fault the simulator can inject: a name, a probability knob and a doc line.

A `FaultPlan` says which faults are on in one run and with what probability. Swarm testing
(`FaultPlan.swarm`) turns on a random subset per seed, so different seeds stress different
mixes instead of every run drowning in every fault at once. A fault's probability is drawn
from `random.Random(f"{seed}:fault:{name}")` whatever the subset, so the repro line
`--seed N --faults a,b` rebuilds exactly the plan that seed N picked in a swarm.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from keeldb.errors import UsageError


class Fault(enum.Enum):
    """The named faults. The value is the name used on the command line."""

    # network
    LATENCY = "latency"
    DROP = "drop"
    DUPLICATE = "duplicate"
    REORDER = "reorder"
    PARTITION = "partition"
    PARTITION_ONEWAY = "partition-oneway"
    ISOLATE = "isolate"
    BRIDGE = "bridge"
    CLOG = "clog"
    # disk
    DISK_LATENCY = "disk-latency"
    LOSE_UNSYNCED = "lose-unsynced"
    TORN_WRITE = "torn-write"
    BITFLIP = "bitflip"
    ENOSPC = "enospc"
    FSYNC_FAIL = "fsync-fail"
    # clock
    SKEW = "skew"
    DRIFT = "drift"
    CLOCK_JUMP = "clock-jump"
    # process
    CRASH = "crash"
    RESTART = "restart"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """How one fault's probability knob is drawn, and what the knob means."""

    p_min: float
    p_max: float
    doc: str


SPECS: dict[Fault, FaultSpec] = {
    Fault.LATENCY: FaultSpec(0.02, 0.2, "per message: a heavy-tail delay of 10-100x the base "
                             "latency (base: uniform 0.5-2 ms)"),
    Fault.DROP: FaultSpec(0.01, 0.2, "per message: the network loses it"),
    Fault.DUPLICATE: FaultSpec(0.01, 0.1, "per message: it is delivered twice"),
    Fault.REORDER: FaultSpec(0.05, 0.3, "per message: it may overtake earlier messages on its "
                             "link (links are FIFO otherwise, like TCP)"),
    Fault.PARTITION: FaultSpec(0.05, 0.3, "per nemesis step: split the nodes into two sides "
                               "that cannot talk (both ways), healed after 10-300 ms"),
    Fault.PARTITION_ONEWAY: FaultSpec(0.05, 0.3, "per nemesis step: messages from one side to "
                                      "the other are lost, the reverse direction works"),
    Fault.ISOLATE: FaultSpec(0.05, 0.3, "per nemesis step: cut one node off from every peer"),
    Fault.BRIDGE: FaultSpec(0.05, 0.3, "per nemesis step: two sides that only one bridge node "
                            "can talk to (needs 3+ nodes)"),
    Fault.CLOG: FaultSpec(0.05, 0.3, "per nemesis step: swizzle-clog: the links of a random "
                          "subset of nodes stall one by one, then unclog in random order; "
                          "stalled messages arrive late, not never"),
    Fault.DISK_LATENCY: FaultSpec(0.05, 0.5, "per disk op: it takes 1-50 ms instead of "
                                  "10-200 us"),
    Fault.LOSE_UNSYNCED: FaultSpec(0.3, 1.0, "per crash: it is a power loss, so bytes and "
                                   "directory entries not yet synced are lost (otherwise a "
                                   "process crash keeps the OS page cache)"),
    Fault.TORN_WRITE: FaultSpec(0.3, 1.0, "per file at a power loss: a random prefix of the "
                                "unsynced tail survives instead of none of it"),
    Fault.BITFLIP: FaultSpec(0.01, 0.2, "per file read at start: one bit of what the node reads "
                             "is flipped (transient: the bytes on disk are intact)"),
    Fault.ENOSPC: FaultSpec(0.002, 0.03, "per append: it fails with ENOSPC and writes nothing"),
    Fault.FSYNC_FAIL: FaultSpec(0.002, 0.03, "per sync: it fails with EIO and makes nothing "
                                "durable"),
    Fault.SKEW: FaultSpec(0.3, 1.0, "per node: its clock is offset by up to +-1 s"),
    Fault.DRIFT: FaultSpec(0.3, 1.0, "per node: its clock runs up to 5% fast or slow"),
    Fault.CLOCK_JUMP: FaultSpec(0.02, 0.2, "per nemesis step: one node's clock jumps forward "
                                "or back by 1 ms-2 s"),
    Fault.CRASH: FaultSpec(0.02, 0.15, "per nemesis step: a node dies (memory, timers and "
                           "in-flight I/O lost) and restarts from its disk 5-200 ms later"),
    Fault.RESTART: FaultSpec(0.02, 0.15, "per nemesis step: a node is killed and restarted at "
                             "once, recovering from its disk"),
    Fault.PAUSE: FaultSpec(0.02, 0.15, "per nemesis step: a node stops processing (a GC or VM "
                           "pause) for 5-200 ms; its events wait"),
}
assert set(SPECS) == set(Fault), "every fault needs a spec"
for _spec in SPECS.values():
    assert 0.0 < _spec.p_min <= _spec.p_max <= 1.0, _spec

NEMESIS_FAULTS: tuple[Fault, ...] = (
    Fault.PARTITION, Fault.PARTITION_ONEWAY, Fault.ISOLATE, Fault.BRIDGE, Fault.CLOG,
    Fault.CLOCK_JUMP, Fault.CRASH, Fault.RESTART, Fault.PAUSE,
)
SWARM_ON_PROBABILITY = 0.5


def parse_faults(text: str) -> tuple[Fault, ...]:
    """Parse `drop,crash` (or `none`, or `all`) into faults in enum order."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    if text == "all":
        return tuple(Fault)
    by_name = {f.value: f for f in Fault}
    chosen: set[Fault] = set()
    for name in text.split(","):
        name = name.strip()
        if name not in by_name:
            raise UsageError(f"unknown fault {name!r}; known: {', '.join(by_name)}")
        chosen.add(by_name[name])
    return tuple(f for f in Fault if f in chosen)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The faults of one run and each one's probability."""

    probabilities: tuple[tuple[Fault, float], ...]

    @classmethod
    def of(cls, seed: int, faults: tuple[Fault, ...]) -> FaultPlan:
        """The plan with exactly `faults` on, probabilities drawn from the seed."""
        probs = []
        for fault in Fault:
            if fault in faults:
                spec = SPECS[fault]
                rng = random.Random(f"{seed}:fault:{fault.value}")
                probs.append((fault, spec.p_min + (spec.p_max - spec.p_min) * rng.random()))
        return cls(tuple(probs))

    @classmethod
    def swarm(cls, seed: int, allowed: tuple[Fault, ...] = tuple(Fault)) -> FaultPlan:
        """A random subset of `allowed` (each on with probability 1/2), picked by the seed."""
        rng = random.Random(f"{seed}:swarm")
        chosen = tuple(f for f in Fault if rng.random() < SWARM_ON_PROBABILITY and f in allowed)
        return cls.of(seed, chosen)

    @property
    def faults(self) -> tuple[Fault, ...]:
        return tuple(f for f, _ in self.probabilities)

    def p(self, fault: Fault) -> float:
        """The probability knob of `fault`; 0.0 when it is off."""
        for f, prob in self.probabilities:
            if f is fault:
                return prob
        return 0.0

    def names(self) -> str:
        """The `--faults` argument that rebuilds this plan ("none" when empty)."""
        return ",".join(f.value for f in self.faults) or "none"

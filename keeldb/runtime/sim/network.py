"""The simulated network: per-message latency, loss, duplication and reordering, and
partitions (symmetric, one-way, isolate, bridge) and clogged links that a nemesis sets and heals.

Links are FIFO (like a TCP connection) unless `Fault.REORDER` lets a message overtake. A cut
link loses messages (checked when sent and again when due); a clogged link delays them until it
unclogs. All choices come from the `rng` the world derives from the seed.
"""

from __future__ import annotations

import random

from keeldb.types import NodeId

BASE_LATENCY_NS_MIN = 500_000
BASE_LATENCY_NS_MAX = 2_000_000
TAIL_FACTOR_MIN = 10
TAIL_FACTOR_MAX = 100
_BASE_SPAN = BASE_LATENCY_NS_MAX - BASE_LATENCY_NS_MIN
Link = tuple[NodeId, NodeId]


class SimNetwork:
    """Decides when (and whether, and how often) a message between two nodes arrives."""

    def __init__(self, rng: random.Random, nodes: tuple[NodeId, ...], *, p_drop: float = 0.0,
                 p_duplicate: float = 0.0, p_reorder: float = 0.0, p_tail: float = 0.0) -> None:
        self.rng = rng
        self.nodes = nodes
        self.p_drop = p_drop
        self.p_duplicate = p_duplicate
        self.p_reorder = p_reorder
        self.p_tail = p_tail
        self.cut: set[Link] = set()  # membership tests only: never iterated for a decision
        self.clogged_until: dict[Link, int] = {}
        self._last_arrival: dict[Link, int] = {}
        self.dropped = 0
        self.duplicated = 0
        self.partition_label = ""
        self.injected = {"drop": 0, "duplicate": 0, "latency": 0, "reorder": 0}

    def arrivals(self, now: int, src: NodeId, dst: NodeId) -> tuple[int, ...]:
        """True times at which a message sent now arrives: () if lost, two if duplicated."""
        link = (src, dst)
        if link in self.cut:
            self.dropped += 1
            return ()
        if self.p_drop and self.rng.random() < self.p_drop:
            self.dropped += 1
            self.injected["drop"] += 1
            return ()
        t = self._arrival(now, link)
        if self.p_duplicate and self.rng.random() < self.p_duplicate:
            self.duplicated += 1
            self.injected["duplicate"] += 1
            return (t, self._arrival(now, link))
        return (t,)

    def _arrival(self, now: int, link: Link) -> int:
        rng = self.rng
        delay = BASE_LATENCY_NS_MIN + int(rng.random() * _BASE_SPAN)
        if self.p_tail and rng.random() < self.p_tail:
            delay *= rng.randrange(TAIL_FACTOR_MIN, TAIL_FACTOR_MAX)
            self.injected["latency"] += 1
        t = now + delay
        if self.clogged_until:
            t = max(t, self.clogged_until.get(link, 0))
        if self.p_reorder and rng.random() < self.p_reorder:
            self.injected["reorder"] += 1
        else:
            t = max(t, self._last_arrival.get(link, 0))  # FIFO: never overtake
            self._last_arrival[link] = t
        return t

    def delivers(self, src: NodeId, dst: NodeId) -> bool:
        """Checked when a message is due: a link cut meanwhile loses it."""
        if (src, dst) in self.cut:
            self.dropped += 1
            return False
        return True

    # --- the nemesis's tools ---------------------------------------------------------------

    def split(self, side_a: tuple[NodeId, ...], side_b: tuple[NodeId, ...],
              both_ways: bool = True) -> None:
        """Cut every link from side A to side B (and back when `both_ways`)."""
        for a in side_a:
            for b in side_b:
                self.cut.add((a, b))
                if both_ways:
                    self.cut.add((b, a))

    def isolate(self, node: NodeId) -> None:
        others = tuple(n for n in self.nodes if n != node)
        self.split((node,), others)

    def bridge(self, side_a: tuple[NodeId, ...], bridge: NodeId,
               side_b: tuple[NodeId, ...]) -> None:
        """Two sides that cannot talk, and one node that talks to both."""
        assert bridge not in side_a and bridge not in side_b, "the bridge is on neither side"
        self.split(side_a, side_b)

    def clog(self, node: NodeId, until_ns: int) -> None:
        """Stall every link to and from `node` until `until_ns` (messages wait, not die)."""
        for other in self.nodes:
            if other != node:
                for link in ((node, other), (other, node)):
                    self.clogged_until[link] = max(self.clogged_until.get(link, 0), until_ns)

    def heal(self) -> None:
        """Reconnect everything (clogs are left to expire: they only delay)."""
        self.cut.clear()
        self.partition_label = ""

    def heal_all(self) -> None:
        """Heal partitions and clogs, and stop injecting per-message faults."""
        self.heal()
        self.clogged_until = {}
        self.p_drop = self.p_duplicate = self.p_reorder = self.p_tail = 0.0

"""Per-node simulated clocks: skew (a constant offset), drift (a rate error) and jumps.

The world keeps one true virtual time; each node reads `local(true_ns)`. Clocks start at a large
random epoch so no code can mistake a local reading for the true time or for zero.
"""

from __future__ import annotations

import random

EPOCH_NS_MIN = 1_000_000_000_000  # ~17 minutes: no clock ever starts near zero
SKEW_NS_MAX = 1_000_000_000
DRIFT_MAX = 0.05


class SimClock:
    """local = epoch + offset + (true - t0) * (1 + drift), with jumps added to `offset`."""

    __slots__ = ("epoch", "offset", "drift", "jumps")

    def __init__(self, rng: random.Random, skew: bool, drift: bool) -> None:
        self.epoch = EPOCH_NS_MIN + rng.randrange(EPOCH_NS_MIN)
        self.offset = rng.randrange(-SKEW_NS_MAX, SKEW_NS_MAX) if skew else 0
        self.drift = rng.uniform(-DRIFT_MAX, DRIFT_MAX) if drift else 0.0
        self.jumps = 0

    def local(self, true_ns: int) -> int:
        return self.epoch + self.offset + true_ns + int(true_ns * self.drift)

    def local_delay_to_true(self, delay_ns: int) -> int:
        """How much true time passes while this clock advances by `delay_ns`."""
        assert delay_ns >= 0, delay_ns
        return int(delay_ns / (1.0 + self.drift))

    def jump(self, delta_ns: int) -> None:
        """Step the clock forward (delta > 0) or back (delta < 0), as an NTP step would."""
        self.offset += delta_ns
        self.jumps += 1

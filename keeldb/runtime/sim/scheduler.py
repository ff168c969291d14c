"""The simulator's event heap: virtual time in nanoseconds, ties broken by submission order.

One process, one thread, no wall clock. Each entry is (time, seq, fn, arg); `seq` grows by one
per `at()`, so two events due at the same instant run in the order they were scheduled, which
makes every run of a seed identical.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from keeldb import limits
from keeldb.errors import LimitExceededError


class Scheduler:
    """A discrete-event queue over virtual time."""

    __slots__ = ("now", "_heap", "_seq", "executed")

    def __init__(self) -> None:
        self.now = 0
        self._heap: list[tuple[int, int, Callable[[Any], None], Any]] = []
        self._seq = 0
        self.executed = 0

    def at(self, time_ns: int, fn: Callable[[Any], None], arg: Any = None) -> None:
        """Run `fn(arg)` at virtual time `time_ns` (never in the past)."""
        assert time_ns >= self.now, f"event scheduled at {time_ns} ns, before now={self.now}"
        if len(self._heap) >= limits.sim_events_queued_max:
            raise LimitExceededError(
                f"{len(self._heap)} simulator events pending, the limit "
                "limits.sim_events_queued_max; a node or workload schedules without bound")
        self._seq += 1
        heapq.heappush(self._heap, (time_ns, self._seq, fn, arg))

    def after(self, delay_ns: int, fn: Callable[[Any], None], arg: Any = None) -> None:
        self.at(self.now + max(0, delay_ns), fn, arg)

    def pending(self) -> int:
        return len(self._heap)

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def run_until(self, time_ns: int, stop: Callable[[], bool] | None = None) -> None:
        """Run every event due up to `time_ns`, then set the clock to `time_ns`.

        `stop()` is asked after each event; when it says True the clock stays where it is.
        """
        heap = self._heap
        pop = heapq.heappop
        same = 0
        while heap and heap[0][0] <= time_ns:
            t, _, fn, arg = pop(heap)
            if t == self.now:
                same += 1
                if same > limits.sim_events_same_instant_max:
                    raise LimitExceededError(
                        f"over limits.sim_events_same_instant_max={same - 1} events at virtual "
                        f"time {t} ns: a livelock (something reschedules itself with no delay)")
            else:
                same = 0
            self.now = t
            self.executed += 1
            fn(arg)
            if stop is not None and stop():
                return
        self.now = max(self.now, time_ns)

"""The real clock: `time.monotonic_ns`, which never jumps back (unlike wall time).

Nodes see time only as `now_ns` in events; this is where the real world reads it. Tests may pass
another `Clock` (anything with `now_ns()`).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


class MonotonicClock:
    """Nanoseconds since an arbitrary start; monotonic, shared by the whole process."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


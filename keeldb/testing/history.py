"""Recording a history as clients invoke and complete operations (format: docs/history-format.md).

Each client process runs one operation at a time. An operation whose outcome is unknown (a
timeout, a crashed node) completes as `info`, and the client continues as a NEW process id,
the Jepsen convention, because the old operation may still take effect at any time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from keeldb import limits
from keeldb.check.history import Op, dump_jsonl


class HistoryRecorder:
    """Appends `Op`s in real-time order; `time` is the simulator's true time in ns."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._open: dict[Any, Op] = {}

    def invoke(self, process: Any, f: str, key: Any, value: Any, time: int,
               after: int | None = None) -> int:
        """Record an invocation; `after` is the index of the invocation it must follow (a
        pipelined request). Returns the new event's index."""
        assert process not in self._open, f"process {process} already has an open operation"
        assert len(self.ops) < limits.history_ops_max, "history over limits.history_ops_max"
        op = Op(len(self.ops), process, "invoke", f, key, value, time, after)
        self.ops.append(op)
        self._open[process] = op
        return op.index

    def complete(self, process: Any, type: str, value: Any, time: int) -> None:
        assert type in ("ok", "fail", "info"), type
        inv = self._open.pop(process)
        self.ops.append(Op(len(self.ops), process, type, inv.f, inv.key, value, time))

    def is_open(self, process: Any) -> bool:
        return process in self._open

    def open_op(self, process: Any) -> Op:
        """The invocation `process` is waiting on."""
        return self._open[process]

    def close_all(self, time: int) -> None:
        """End of the run: every operation still open completes as `info`."""
        for process in sorted(self._open, key=repr):
            self.complete(process, "info", self._open[process].value, time)

    def jsonl(self) -> Iterator[str]:
        return dump_jsonl(self.ops)

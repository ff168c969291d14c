"""keeldb's history format, shared by the simulator's workloads and the checkers.

A history is a sequence of operations, one JSON object per line:

    {"index": 0, "process": 3, "type": "invoke", "f": "write", "key": "x", "value": 5, "time": 1200}
    {"index": 1, "process": 3, "type": "ok",     "f": "write", "key": "x", "value": 5, "time": 1900}

- `process`: the client (a process runs one operation at a time);
- `type`: `invoke` (started), `ok` (took effect), `fail` (certainly did not take effect) or
  `info` (outcome unknown: it may take effect at any time until the end of the history);
- `f`: the function (`read`, `write`, `cas`, `append`, `txn`, ...), `key` (optional) and
  `value` (for `cas` a `[expected, new]` pair, for `txn` a list of micro-ops `[f, key, value]`);
- `time`: nanoseconds on one clock (optional), `index`: position in the history (optional,
  filled in on reading);
- `after` (optional, on an `invoke`): the `index` of another op's `invoke` event that this op
  must take effect after. Pipelined requests of one connection are sent without waiting, so
  they overlap in real time, yet the server must apply them in the order sent; the simulator
  records each pipelined request's predecessor here and the linearizability checker only
  places an op once its predecessor is placed. Histories without it load as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from keeldb.errors import CheckError

OP_TYPES: tuple[str, ...] = ("invoke", "ok", "fail", "info")


@dataclass(frozen=True, slots=True)
class Op:
    """One event of a history."""

    index: int
    process: Any
    type: str
    f: str
    key: Any = None
    value: Any = None
    time: int | None = None
    after: int | None = None  # index of the invoke of the op this one must follow

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "process": self.process,
                               "type": self.type, "f": self.f}
        if self.key is not None:
            out["key"] = self.key
        out["value"] = self.value
        if self.time is not None:
            out["time"] = self.time
        if self.after is not None:
            out["after"] = self.after
        return out


def op_from_dict(
    obj: Any, index: int, where: str = "", defaults: dict[str, Any] | None = None
) -> Op:
    """Build an `Op` from a decoded JSON object; raise `CheckError` naming what is wrong.

    `defaults` fills fields a source leaves out (Elle's examples omit `process` and `f`).
    """
    if not isinstance(obj, dict):
        raise CheckError(f"{where}expected a JSON object, got {type(obj).__name__}")
    if defaults:
        obj = {**defaults, **obj}
    for field in ("process", "type", "f"):
        if field not in obj:
            raise CheckError(f"{where}missing field {field!r}")
    if obj["type"] not in OP_TYPES:
        raise CheckError(f"{where}type must be one of {', '.join(OP_TYPES)}, got {obj['type']!r}")
    time = obj.get("time")
    if time is not None and not isinstance(time, int):
        raise CheckError(f"{where}time must be an integer (nanoseconds), got {time!r}")
    after = obj.get("after")
    if after is not None and not isinstance(after, int):
        raise CheckError(f"{where}after must be the integer index of an invoke, got {after!r}")
    return Op(
        index=int(obj.get("index", index)),
        process=obj["process"],
        type=obj["type"],
        f=str(obj["f"]),
        key=obj.get("key"),
        value=obj.get("value"),
        time=time,
        after=after,
    )


def parse_jsonl(text: str, source: str = "<history>") -> list[Op]:
    """Parse a JSON-lines history; blank lines are skipped."""
    ops: list[Op] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}: "
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CheckError(f"{where}not JSON ({exc.msg} at column {exc.colno})") from exc
        ops.append(op_from_dict(obj, len(ops), where))
    return ops


def dump_jsonl(ops: Iterable[Op]) -> Iterator[str]:
    """Yield one JSON line (with newline) per op."""
    for op in ops:
        yield json.dumps(op.to_json(), separators=(",", ":")) + "\n"

"""The client wire protocol of the real runtime: one msgpack map per frame.

    request  {"id": 7, "f": "write", "key": "x", "value": 3}
    reply    {"id": 7, "type": "ok", "value": null, "error": ""}

`id` is chosen by the client and unique per connection; replies may come back in any order.
`f`, `key` and `value` follow the history vocabulary (`keeldb.check.history`): `read`,
`write`, `cas` (value `[expected, new]`), ... . `type` is `ok` (it happened), `fail` (it
certainly did not) or `info` (unknown: it may still happen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keeldb.errors import FramePayloadError

REPLY_TYPES = ("ok", "fail", "info")
ID_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ClientCall:
    id: int
    f: str
    key: Any = None
    value: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "f": self.f, "key": self.key, "value": self.value}


@dataclass(frozen=True, slots=True)
class ClientAnswer:
    id: int
    type: str
    value: Any = None
    error: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "value": self.value, "error": self.error}


def _check_id(obj: dict[Any, Any], what: str) -> int:
    rid = obj.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid <= ID_MAX:
        raise FramePayloadError(f"{what} needs an integer id in 0..{ID_MAX}, got {rid!r}")
    return rid


def parse_call(obj: Any) -> ClientCall:
    """A request from the wire; `FramePayloadError` names what is wrong with it."""
    if not isinstance(obj, dict):
        raise FramePayloadError(f"client request must be a map, got {type(obj).__name__}")
    rid = _check_id(obj, "client request")
    f = obj.get("f")
    if not isinstance(f, str) or not f:
        raise FramePayloadError(f"client request {rid} needs a function name 'f', got {f!r}")
    return ClientCall(rid, f, obj.get("key"), obj.get("value"))


def parse_answer(obj: Any) -> ClientAnswer:
    """A reply from the wire; `FramePayloadError` names what is wrong with it."""
    if not isinstance(obj, dict):
        raise FramePayloadError(f"client reply must be a map, got {type(obj).__name__}")
    rid = _check_id(obj, "client reply")
    kind = obj.get("type")
    if kind not in REPLY_TYPES:
        raise FramePayloadError(f"client reply {rid} has type {kind!r}, expected one of "
                                f"{', '.join(REPLY_TYPES)}")
    error = obj.get("error") or ""
    return ClientAnswer(rid, kind, obj.get("value"), str(error))

"""What a `Connection` asks the server to do, in order: write bytes, run a batch, close.

Slotted values, not frozen (a frozen dataclass's __init__ costs ~1 us and one is made per
request): nobody mutates one once the connection returned it.
"""

from __future__ import annotations

from dataclasses import dataclass

from keeldb.node import kvstate as kv

__all__ = ["Close", "Execute", "Output", "Send"]


@dataclass(slots=True, unsafe_hash=True)
class Send:
    data: bytes


@dataclass(slots=True, unsafe_hash=True)
class Execute:
    """Run `batch` on the node, then call `Connection.complete(ticket, result)`."""

    ticket: int
    batch: kv.Batch


@dataclass(slots=True, unsafe_hash=True)
class Close:
    """Close the connection after writing everything sent before. `protocol_error` is True
    when the client sent bad RESP or crossed a limit (Redis closes such connections)."""

    reason: str
    protocol_error: bool = False


Output = Send | Execute | Close

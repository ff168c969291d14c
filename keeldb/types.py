"""Small value types shared by every layer."""

from __future__ import annotations

from typing import Literal, NewType

NodeId = NewType("NodeId", str)
SeqNo = NewType("SeqNo", int)

SyncPolicy = Literal["always", "batch", "never"]
SYNC_POLICIES: tuple[str, ...] = ("always", "batch", "never")

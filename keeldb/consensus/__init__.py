"""Sans-IO Raft after etcd-io/raft: `Raft.step(msg)`, `Raft.tick()`, `Raft.ready()` /
`Raft.advance(ready)`. See docs/design/raft.md."""

from keeldb.consensus.confchange import ConfChange, ConfChangeType
from keeldb.consensus.messages import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from keeldb.consensus.raft import Config, Raft, Status
from keeldb.consensus.storage import MemoryStorage, Storage

__all__ = [
    "Config", "ConfChange", "ConfChangeType", "ConfState", "Entry", "EntryType", "HardState",
    "MemoryStorage", "Message", "MsgType", "Raft", "ReadState", "Ready", "Role", "Snapshot",
    "SnapshotMeta", "Status", "Storage",
]

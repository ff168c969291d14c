"""The `raft-kv` system: three `RaftNode`s replicating the register state machine.

The state machine is `keeldb.testing.kvstate` (read / write / cas, and the txn, transfer and
read-accounts commands of the other workloads), so every workload of `keeldb sim` runs on it.
Read-only commands (`read`, `read-accounts`) go through ReadIndex; everything else is a log
entry applied exactly once per (session, seq).

    keeldb sim --system raft-kv --seed 7
    keeldb sim --system raft-kv --seeds 300
    python -m keeldb.runtime.real.runner --system raft-kv --id n1 --peers ... --data DIR
"""

from __future__ import annotations

from typing import Any

import msgpack

from keeldb.errors import StateRestoreError, UsageError
from keeldb.node.raft_node import RaftNode, RaftNodeConfig
from keeldb.testing.kvstate import FUNCTIONS, READ_ONLY, apply_command

MS = 1_000_000
SNAPSHOT_FORMAT = 1
# Simulator tuning: 5 ms ticks (elections in 50-100 ms, inside the clients' 100 ms timeout)
# and frequent snapshots, so every run also exercises compaction and snapshot install.
SIM_CONFIG = RaftNodeConfig(tick_ns=5 * MS, election_ticks=10, heartbeat_ticks=1,
                            snapshot_entries=64, keep_entries=8, request_wait_ticks=60,
                            unaccepted_wait_ticks=12, retry_ticks=10)


class KvStateMachine:
    """`kvstate.apply_command` over a dict, as a `raft_node.StateMachine`."""

    def __init__(self) -> None:
        self.state: dict[Any, Any] = {}

    def command(self, f: str, key: Any, value: Any) -> tuple[bytes, bool]:
        if f not in FUNCTIONS:
            raise UsageError(f"unknown function {f!r}; known: {', '.join(sorted(FUNCTIONS))}")
        return msgpack.packb([f, key, value], use_bin_type=True), f in READ_ONLY

    def apply(self, index: int, command: bytes) -> tuple[str, Any]:
        f, key, value = msgpack.unpackb(command, raw=False, strict_map_key=False)
        try:
            return apply_command(self.state, f, key, value)
        except (UsageError, ValueError, TypeError) as exc:
            return "fail", str(exc)

    def read(self, command: bytes) -> tuple[str, Any]:
        f, key, value = msgpack.unpackb(command, raw=False, strict_map_key=False)
        assert f in READ_ONLY, f"read() of a {f!r} command"
        return apply_command(self.state, f, key, value)

    def snapshot(self) -> bytes:
        return msgpack.packb([SNAPSHOT_FORMAT, list(self.state.items())], use_bin_type=True)

    def restore(self, data: bytes) -> None:
        if not data:
            self.state = {}
            return
        try:
            fmt, items = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, TypeError) as exc:
            raise StateRestoreError(f"kv snapshot does not decode: {exc}") from exc
        if fmt != SNAPSHOT_FORMAT:
            raise StateRestoreError(f"kv snapshot format {fmt}, expected {SNAPSHOT_FORMAT}")
        self.state = {k: v for k, v in items}


class RaftKvNode(RaftNode):
    """A raft-kv node with the default (real-process) timing: 10 ms ticks."""

    def __init__(self) -> None:
        super().__init__(KvStateMachine)


class SimRaftKvNode(RaftNode):
    """A raft-kv node tuned for the simulator (`SIM_CONFIG`)."""

    def __init__(self) -> None:
        super().__init__(KvStateMachine, SIM_CONFIG)

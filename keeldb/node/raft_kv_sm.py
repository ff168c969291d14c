"""`RaftKvSM`: the Redis state machine (`kvstate.KvStateMachine`) as a `raft_node.StateMachine`.

A command is msgpack `[now_ms, batch]`: the proposing node's wall-clock time (all expiry
decisions of the batch use it, never an applying replica's clock) and an encoded
`kvstate.Batch`. `command("read", ...)` marks a read-only batch (served after ReadIndex, never
logged); `command("write", ...)` a batch that becomes one log entry (MULTI/EXEC included).

The KV state lives in the node's embedded store, which is durable on its own; the Raft log
and snapshot live in their own files. The two may disagree after a crash:

- the store is AHEAD of the Raft snapshot (its applied index is past the snapshot's): the
  snapshot is not restored and the replayed log entries the store already holds are skipped
  (committed entries are the same on every replica, so the store's state is a prefix of the
  log the node replays);
- the store is BEHIND (it lost unsynced writes, or a leader sent a newer snapshot): the
  snapshot replaces the store, then the log entries after it apply.

Replies are msgpack-able (`pack_applied`): the session table of `RaftNode` keeps them in its
snapshots. A replayed entry that is skipped returns `SKIPPED` (only entries of an earlier
incarnation are replayed, and those have nobody waiting for them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from keeldb import limits
from keeldb.errors import StateRestoreError, UsageError
from keeldb.node import kvstate as kv

READ, WRITE = "read", "write"
SNAPSHOT_FORMAT = 1
SKIPPED: list[Any] = [[], False, True]  # a packed Applied: no replies, duplicate


def encode_command(batch: kv.Batch, now_ms: int) -> tuple[str, bytes]:
    """(f, command bytes) for a `ClientRequest` carrying `batch` proposed at `now_ms`: msgpack
    `[now_ms, batch as plain data]`, one pack (older builds nested the batch's own bytes)."""
    assert now_ms >= 0, now_ms
    data = msgpack.packb([now_ms, kv.batch_to_plain(batch)], use_bin_type=True)
    return (READ if batch.read_only else WRITE), data


def decode_command(data: bytes) -> tuple[int, kv.Batch]:
    now_ms, body = msgpack.unpackb(data, raw=False)
    if isinstance(body, bytes):  # a log entry written by an older build
        return int(now_ms), kv.decode_batch(body)
    return int(now_ms), kv.batch_from_plain(body)


def pack_applied(result: kv.Applied) -> list[Any]:
    return [[kv.pack_reply(r) for r in result.replies], result.aborted, result.duplicate]


def unpack_applied(data: Any) -> kv.Applied:
    replies, aborted, duplicate = data
    return kv.Applied(tuple(kv.unpack_reply(r) for r in replies), bool(aborted),
                      bool(duplicate))


class RaftKvSM:
    """Adapter from `KvStateMachine` (batches over an engine) to the RaftNode protocol."""

    def __init__(self, sm: kv.KvStateMachine) -> None:
        self.kv = sm
        # Log time: the largest now_ms of the entries applied so far (entry i applies at
        # max(log time, its now_ms)), so an expiry cannot un-happen when a proposer's clock
        # is behind the one before it. It is replicated state: equal on every replica at
        # equal applied index. The Raft snapshot carries it, and replayed entries the store
        # already holds still advance it (see `apply`), so a restarted or snapshot-fed
        # replica applies each entry at the same time as the others.
        self.last_now_ms = 0
        self.skipped = 0  # replayed entries the store already held
        # Set by a host that can end a group later (the server: at the end of the loop turn):
        # the first entry applied outside a group begins one and calls this, so the entries
        # of one turn become one store write. The Raft log is the durable record (the store
        # is replayed from it), so deferring store writes changes no acknowledgement.
        self.on_group_begun: Callable[[], None] | None = None
        # Commands this node proposed, decoded already (see `remember`); bounded, oldest out.
        self._proposed: dict[bytes, tuple[int, kv.Batch]] = {}

    def remember(self, command: bytes, now_ms: int, batch: kv.Batch) -> None:
        """`command` is `encode_command(batch, now_ms)`: applying or reading it here later
        skips its decode. Equal bytes decode to equal batches, so the key is the bytes."""
        proposed = self._proposed
        if len(proposed) >= limits.kv_proposed_batches_max:
            del proposed[next(iter(proposed))]
        proposed[command] = (now_ms, batch)

    def _decode(self, command: bytes) -> tuple[int, kv.Batch]:
        known = self._proposed.pop(command, None) if self._proposed else None
        return known if known is not None else decode_command(command)

    def command(self, f: str, key: Any, value: Any) -> tuple[bytes, bool]:
        if f not in (READ, WRITE) or not isinstance(value, bytes | bytearray):
            raise UsageError(f"raft-kv takes f='read'|'write' with encoded batch bytes, got "
                             f"f={f!r} value of type {type(value).__name__}")
        return bytes(value), f == READ

    def apply(self, index: int, command: bytes) -> tuple[str, Any]:
        now_ms, batch = self._decode(command)
        self.last_now_ms = max(self.last_now_ms, now_ms)
        if index <= self.kv.applied_index:
            self.skipped += 1
            return "ok", SKIPPED
        assert not batch.read_only, f"read-only batch in the log at index {index}"
        if self.on_group_begun is not None and not self.kv.grouping:
            self.kv.begin_group()
            self.on_group_begun()
        return "ok", pack_applied(self.kv.apply(batch, index=index, now_ms=self.last_now_ms))

    def read(self, command: bytes) -> tuple[str, Any]:
        now_ms, batch = self._decode(command)
        return "ok", pack_applied(self.kv.read_batch(batch, now_ms=max(self.last_now_ms,
                                                                       now_ms)))

    def snapshot(self) -> bytes:
        return self.capture()()

    def capture(self) -> Callable[[], bytes]:
        """`snapshot()` as a job built off the loop (see `KvStateMachine.capture`): the
        index and log time are taken now, with the engine snapshot."""
        index, now_ms, image = self.kv.applied_index, self.last_now_ms, self.kv.capture()

        def job() -> bytes:
            return msgpack.packb([SNAPSHOT_FORMAT, index, image(), now_ms],  # type: ignore[no-any-return]
                                 use_bin_type=True)
        return job

    def restore(self, data: bytes) -> None:
        """Restore a Raft snapshot unless the store already holds a later state (see the
        module docstring). b"" (no snapshot yet) keeps the store as it is for the same reason:
        the log replays from index 1 and every entry the store holds is skipped."""
        if not data:
            self.last_now_ms = 0
            return
        try:
            # a 4th field (log time) since the fix of replica divergence; older: 0
            fmt, index, image, *rest = msgpack.unpackb(data, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise StateRestoreError(f"raft-kv snapshot does not decode: {exc}") from None
        if fmt != SNAPSHOT_FORMAT:
            raise StateRestoreError(f"raft-kv snapshot format {fmt}, expected "
                                    f"{SNAPSHOT_FORMAT}; upgrade this node")
        # The log time at the snapshot's index; entries after it (applied or skipped as
        # replayed) raise it again, so it is exact whether or not the store is ahead.
        self.last_now_ms = int(rest[0]) if rest else 0
        if self.kv.applied_index >= int(index):
            return
        self.kv.restore(bytes(image))
        assert self.kv.applied_index == int(index), (self.kv.applied_index, index)

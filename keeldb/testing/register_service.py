"""Reference system 1: a single-node register service that is correct under every fault.

Every command that changes state is appended to `register.log` as a checksummed record and
synced before its reply leaves (`Reply(..., after=sync_op)`). Reads and failed commands reply
after the last sync too, so nobody ever sees a value that a crash could still take back.

Recovery (`Start`) replays the valid prefix of the log and syncs it before any reply (after
a process crash the page cache may hold records that were never synced). A bad tail is either a torn write
(really on the disk, never acknowledged: cut it off) or a bit flipped while reading (transient:
the disk is fine). The node cannot tell them apart from one read, so it writes the crc of what
it saw to `register.suspect`, halts, and on the next start cuts the tail only if it reads the
very same bytes again. A failed append or sync halts the node (after a failed fsync nothing is
known, so recover from the disk), and the clients of its unsynced commands time out ("info").
"""

from __future__ import annotations

from typing import Any

import crc32c

from keeldb.node.effects import (
    Apply,
    ClientRequest,
    Effect,
    Event,
    Halt,
    Persist,
    PersistDone,
    Received,
    Reply,
    Start,
    Sync,
    SyncDone,
    Tick,
)
from keeldb.testing.kvstate import READ_ONLY, apply_command, decode_records, encode_record
from keeldb.types import NodeId

LOG = "register.log"
SUSPECT = "register.suspect"


class RegisterNode:
    """A durable single-node key-value register (see the module docstring)."""

    def __init__(self) -> None:
        self.node_id = NodeId("")
        self.state: dict[Any, Any] = {}
        self.seq = 0  # commands in the log
        self.op = 0  # disk op ids of this incarnation
        self.last_sync: int | None = None
        self.halting = False
        self.serving = False

    def _next_op(self) -> int:
        self.op += 1
        return self.op

    def step(self, event: Event) -> list[Effect]:
        if isinstance(event, Start):
            return self._start(event)
        if isinstance(event, ClientRequest):
            return self._request(event)
        if isinstance(event, PersistDone | SyncDone):
            if not event.ok:
                return [Halt(f"disk op {event.op} failed: {event.error}")]
            if self.halting:
                return [Halt("re-reading a suspect log tail")]
            return []
        if isinstance(event, Tick | Received):
            return []  # no timers, no peers
        raise AssertionError(f"RegisterNode cannot handle {event!r}")

    def _start(self, ev: Start) -> list[Effect]:
        self.node_id = ev.node
        data = ev.files.get(LOG, b"")
        records, valid = decode_records(data)
        seen = f"{len(data)}:{crc32c.crc32c(data)}".encode()
        effects: list[Persist | Sync] = []
        if valid < len(data):
            if ev.files.get(SUSPECT, b"") != seen:
                self.halting = True  # maybe a transient read error: note it, read again
                return [Persist(self._next_op(), SUSPECT, seen, replace=True)]
            effects.append(Persist(self._next_op(), LOG, data[:valid], replace=True))
        if ev.files.get(SUSPECT):
            effects.append(Persist(self._next_op(), SUSPECT, b"", replace=True))
        for rec in records:
            seq, f, key, value = rec
            if seq != self.seq + 1:
                raise AssertionError(f"register log jumps from {self.seq} to {seq}")
            apply_command(self.state, f, key, value)
            self.seq = seq
        if LOG in ev.files:
            # After a process crash the page cache may hold records that were never synced:
            # sync them before anyone can read them, or a power loss could take back a value
            # a client already saw.
            effects.append(Sync(self._next_op(), LOG))
            self.last_sync = effects[-1].op
        self.serving = True
        return list(effects)

    def _request(self, req: ClientRequest) -> list[Effect]:
        if not self.serving or self.halting:
            return [Reply(req.request_id, "fail", error="recovering")]
        try:
            kind, result = apply_command(self.state, req.f, req.key, req.value)
        except (ValueError, TypeError) as exc:
            return [Reply(req.request_id, "fail", error=str(exc))]
        if req.f in READ_ONLY or kind == "fail":
            # even a read waits for the last sync: it may see a value not yet durable
            return [Reply(req.request_id, "ok" if kind == "ok" else "fail", result,
                          after=self.last_sync)]
        self.seq += 1
        persist = Persist(self._next_op(), LOG, encode_record([self.seq, req.f, req.key,
                                                                req.value]))
        sync = Sync(self._next_op(), LOG)
        self.last_sync = sync.op
        return [persist, sync, Apply(self.seq, [req.f, req.key, req.value], after=sync.op),
                Reply(req.request_id, "ok", result, after=sync.op)]

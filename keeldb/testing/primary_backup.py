"""Reference system 2: a primary-backup register that is INCORRECT BY DESIGN.

The primary applies a command, replies "ok" at once and replicates to the backups
asynchronously; it appends to its log but never syncs. Backups that hear no heartbeat for a
while promote themselves (naive failover: no quorum, no fencing, no catch-up). So a crash or a
partition loses acknowledged writes and lets two primaries serve at once. The simulator's
checkers must catch it; that is the proof the harness finds bugs.
"""

from __future__ import annotations

from typing import Any

from keeldb.node.effects import (
    ClientRequest,
    Effect,
    Event,
    Persist,
    PersistDone,
    Received,
    Reply,
    Send,
    SetTimer,
    Start,
    SyncDone,
    Tick,
)
from keeldb.testing.kvstate import READ_ONLY, apply_command, decode_records, encode_record
from keeldb.types import NodeId

LOG = "pb.log"
MS = 1_000_000
HEARTBEAT_NS = 10 * MS
FAILOVER_NS = 50 * MS
FAILOVER_RANK_NS = 20 * MS


class PrimaryBackupNode:
    """Primary or backup; see the module docstring for why it is wrong."""

    def __init__(self) -> None:
        self.node_id = NodeId("")
        self.peers: tuple[NodeId, ...] = ()
        self.rank = 0
        self.state: dict[Any, Any] = {}
        self.epoch = 0
        self.primary: NodeId | None = None
        self.last_heard = 0
        self.now = 0
        self.op = 0

    def step(self, event: Event) -> list[Effect]:
        if isinstance(event, Start):
            return self._start(event)
        if isinstance(event, Tick):
            return self._tick(event)
        if isinstance(event, Received):
            return self._received(event.src, event.msg)
        if isinstance(event, ClientRequest):
            return self._request(event)
        if isinstance(event, PersistDone | SyncDone):
            return []  # nobody waits for the disk: that is one of the bugs
        raise AssertionError(f"PrimaryBackupNode cannot handle {event!r}")

    @property
    def is_primary(self) -> bool:
        return self.primary == self.node_id

    def _start(self, ev: Start) -> list[Effect]:
        self.node_id = ev.node
        self.peers = tuple(sorted(ev.peers))
        self.rank = sorted((ev.node, *ev.peers)).index(ev.node)
        self.now = self.last_heard = ev.now_ns
        records, _ = decode_records(ev.files.get(LOG, b""))
        for epoch, f, key, value in records:
            self.epoch = max(self.epoch, epoch)
            apply_command(self.state, f, key, value)
        if not ev.restart and self.rank == 0:
            self.primary = self.node_id  # the first boot: the lowest id leads
        return [SetTimer("heartbeat", HEARTBEAT_NS)]

    def _tick(self, ev: Tick) -> list[Effect]:
        self.now = ev.now_ns
        out: list[Effect] = [SetTimer("heartbeat", HEARTBEAT_NS)]
        if self.is_primary:
            out += [Send(p, ("hb", self.epoch, self.node_id)) for p in self.peers]
        elif self.now - self.last_heard > FAILOVER_NS + self.rank * FAILOVER_RANK_NS:
            self.epoch += 1  # naive failover: promote myself, nobody votes
            self.primary = self.node_id
            out += [Send(p, ("hb", self.epoch, self.node_id)) for p in self.peers]
        return out

    def _received(self, src: NodeId, msg: Any) -> list[Effect]:
        kind = msg[0]
        if kind == "hb":
            _, epoch, primary = msg
            if epoch > self.epoch or (epoch == self.epoch and primary <= (self.primary or "~")):
                self.epoch = epoch
                self.primary = NodeId(primary)
                self.last_heard = self.now
            return []
        if kind == "rep":
            _, epoch, f, key, value = msg
            if epoch >= self.epoch and not self.is_primary:
                self.last_heard = self.now
                apply_command(self.state, f, key, value)
                self.op += 1
                return [Persist(self.op, LOG, encode_record([epoch, f, key, value]))]
            return []
        raise AssertionError(f"unknown message {msg!r} from {src}")

    def _request(self, req: ClientRequest) -> list[Effect]:
        if not self.is_primary:
            return [Reply(req.request_id, "fail", self.primary, error="not primary")]
        try:
            kind, result = apply_command(self.state, req.f, req.key, req.value)
        except (ValueError, TypeError) as exc:
            return [Reply(req.request_id, "fail", error=str(exc))]
        out: list[Effect] = []
        if req.f not in READ_ONLY and kind == "ok":
            self.op += 1
            out.append(Persist(self.op, LOG, encode_record([self.epoch, req.f, req.key,
                                                             req.value])))
            out += [Send(p, ("rep", self.epoch, req.f, req.key, req.value)) for p in self.peers]
        out.append(Reply(req.request_id, "ok" if kind == "ok" else "fail", result))
        return out

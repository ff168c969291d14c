"""ReadIndex bookkeeping: read requests waiting for a heartbeat round to confirm leadership.

A leader records its commit index when a read arrives, then sends a heartbeat carrying the
request's context. Once a quorum of voters answered that heartbeat, no newer leader can have
committed anything the old commit index misses, so the read may be served after the state
machine applied up to that index. Requests are answered in arrival order: a quorum for a
later request confirms every earlier one too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keeldb import limits
from keeldb.errors import LimitExceededError
from keeldb.types import NodeId

if TYPE_CHECKING:
    from keeldb.consensus.raft import Raft


@dataclass
class ReadRequest:
    index: int
    frm: NodeId  # who asked (this node, or a follower that forwarded it)
    context: bytes
    acks: set[NodeId] = field(default_factory=set)


class ReadOnly:
    def __init__(self, max_pending: int = limits.raft_read_index_pending_max) -> None:
        self.max_pending = max_pending
        self._pending: OrderedDict[bytes, ReadRequest] = OrderedDict()

    def add_request(self, index: int, frm: NodeId, context: bytes) -> bool:
        """Queue a read; False if the same context is already queued (a retry)."""
        if context in self._pending:
            return False
        if len(self._pending) >= self.max_pending:
            raise LimitExceededError(
                f"{len(self._pending)} ReadIndex requests pending, limit "
                f"raft_read_index_pending_max={self.max_pending}; retry when reads drain")
        self._pending[context] = ReadRequest(index, frm, context)
        return True

    def recv_ack(self, frm: NodeId, context: bytes) -> set[NodeId]:
        """Record a heartbeat answer for `context`; returns who acknowledged it so far."""
        req = self._pending.get(context)
        if req is None:
            return set()
        req.acks.add(frm)
        return req.acks

    def advance(self, context: bytes) -> list[ReadRequest]:
        """Pop and return every request up to and including `context`."""
        if context not in self._pending:
            return []
        out: list[ReadRequest] = []
        while self._pending:
            ctx, req = self._pending.popitem(last=False)
            out.append(req)
            if ctx == context:
                break
        return out

    def last_pending_context(self) -> bytes | None:
        return next(reversed(self._pending)) if self._pending else None

    def pending_count(self) -> int:
        return len(self._pending)

    def reset(self) -> None:
        self._pending.clear()


def lease_valid(r: Raft) -> bool:
    """Did a quorum of voters promise, within the lease, not to elect anyone else?

    A follower that got our heartbeat sent at tick t ignores vote requests until an
    election timeout after it received it, so no other leader exists before t plus
    election_ticks on its clock. We stop lease_margin_ticks early for clock drift.
    """
    if r.lead_transferee:
        return False  # we are handing leadership over ourselves
    sent = sorted((r.ticks if i == r.id else r.prs[i].lease_tick
                   for i in r.conf.voters if i in r.prs), reverse=True)
    if not sent:
        return False
    oldest_in_quorum = sent[len(sent) // 2]
    return r.ticks - oldest_in_quorum < r.cfg.election_ticks - r.cfg.lease_margin_ticks

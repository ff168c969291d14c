"""Membership changes, one server at a time.

A change is proposed as a CONF_CHANGE log entry and takes effect on every node when that entry
is applied (as in etcd-io/raft). Safety of one-at-a-time changes needs two rules the leader
enforces: at most one change is pending (not yet applied), and a new leader does not accept a
change before it has applied an entry of its own term. New voters join as learners first and
are promoted once they caught up, so a slow newcomer never stalls commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import msgpack

from keeldb.consensus.messages import ConfState
from keeldb.errors import CorruptionError
from keeldb.types import NodeId

if TYPE_CHECKING:
    from keeldb.consensus.raft import Raft


class ConfChangeType(StrEnum):
    ADD_LEARNER = "add-learner"  # a new node that replicates but does not vote
    ADD_VOTER = "add-voter"  # promote a learner (or re-add a voter: no-op)
    REMOVE = "remove"  # remove a voter or learner (the leader itself included)


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change. `context` is opaque to the core (as in etcd): the node puts
    the members' addresses there so every replica applying the change learns them."""

    type: ConfChangeType
    node: NodeId
    context: bytes = b""

    def encode(self) -> bytes:
        if not self.context:
            return msgpack.packb([self.type.value, str(self.node)])  # the original format
        return msgpack.packb([self.type.value, str(self.node), self.context],
                             use_bin_type=True)

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        try:
            kind, node, *rest = msgpack.unpackb(data)
            if len(rest) > 1 or (rest and not isinstance(rest[0], bytes)):
                raise ValueError(f"unexpected fields {rest!r}")
            return ConfChange(ConfChangeType(kind), NodeId(node), rest[0] if rest else b"")
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise CorruptionError(f"conf change entry does not decode ({e}): {data!r}") from e


def apply_conf_change(cs: ConfState, cc: ConfChange) -> ConfState:
    """The membership after `cc`. Pure: the caller installs the result."""
    voters, learners = set(cs.voters), set(cs.learners)
    if cc.type == ConfChangeType.ADD_LEARNER:
        if cc.node not in voters:  # demoting a voter is not supported: ignore
            learners.add(cc.node)
    elif cc.type == ConfChangeType.ADD_VOTER:
        learners.discard(cc.node)
        voters.add(cc.node)
    else:
        voters.discard(cc.node)
        learners.discard(cc.node)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


def conf_change_refusal(r: Raft, cc: ConfChange) -> str:
    """Why the leader `r` must refuse `cc` now (empty: it may go ahead)."""
    if r.pending_conf_index > r.log.applied:
        return (f"change at index {r.pending_conf_index} not applied yet "
                f"(applied {r.log.applied}); one change at a time")
    if cc.type == ConfChangeType.ADD_VOTER:
        if cc.node in r.conf.voters:
            return f"{cc.node} is already a voter"
        if cc.node not in r.conf.learners:
            return f"{cc.node} is not a learner; add it as a learner first"
        behind = r.log.last_index() - r.prs[cc.node].match
        if behind > r.cfg.learner_catchup_entries:
            return (f"learner {cc.node} is {behind} entries behind, limit "
                    f"learner_catchup_entries={r.cfg.learner_catchup_entries}")
    elif cc.type == ConfChangeType.ADD_LEARNER:
        if cc.node in r.conf.voters or cc.node in r.conf.learners:
            return f"{cc.node} is already a member"
    elif cc.node not in r.conf.voters and cc.node not in r.conf.learners:
        return f"{cc.node} is not a member"
    elif r.conf.voters == (cc.node,):
        return f"{cc.node} is the last voter"
    return ""

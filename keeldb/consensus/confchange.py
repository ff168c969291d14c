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

import msgpack

from keeldb.consensus.messages import ConfState
from keeldb.errors import CorruptionError
from keeldb.types import NodeId


class ConfChangeType(StrEnum):
    ADD_LEARNER = "add-learner"  # a new node that replicates but does not vote
    ADD_VOTER = "add-voter"  # promote a learner (or re-add a voter: no-op)
    REMOVE = "remove"  # remove a voter or learner (the leader itself included)


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node: NodeId

    def encode(self) -> bytes:
        return msgpack.packb([self.type.value, str(self.node)])

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        try:
            kind, node = msgpack.unpackb(data)
            return ConfChange(ConfChangeType(kind), NodeId(node))
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

"""Majority arithmetic over the voters (learners never count)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from keeldb.types import NodeId


class VoteResult(StrEnum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def quorum_size(voters: int) -> int:
    return voters // 2 + 1


def committed_index(voters: Iterable[NodeId], match: Mapping[NodeId, int]) -> int:
    """The highest index a majority of voters have (0 for an empty voter set)."""
    indexes = sorted((match.get(v, 0) for v in voters), reverse=True)
    if not indexes:
        return 0
    return indexes[quorum_size(len(indexes)) - 1]


def vote_result(voters: Iterable[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    vs = list(voters)
    q = quorum_size(len(vs))
    granted = sum(1 for v in vs if votes.get(v) is True)
    rejected = sum(1 for v in vs if votes.get(v) is False)
    if granted >= q:
        return VoteResult.WON
    if len(vs) - rejected < q:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Iterable[NodeId], active: Iterable[NodeId]) -> bool:
    vs = list(voters)
    act = set(active)
    return sum(1 for v in vs if v in act) >= quorum_size(len(vs))

"""Unit tests of the Raft core's parts: storage, log, progress, quorum, conf changes, reads."""

from __future__ import annotations

import pytest

from keeldb.consensus.confchange import ConfChange, ConfChangeType, apply_conf_change
from keeldb.consensus.log import RaftLog
from keeldb.consensus.messages import ConfState, Entry, Snapshot, SnapshotMeta
from keeldb.consensus.progress import Inflights, Progress, ProgressState
from keeldb.consensus.quorum import VoteResult, committed_index, has_quorum, vote_result
from keeldb.consensus.readonly import ReadOnly
from keeldb.consensus.storage import MemoryStorage, limit_size
from keeldb.errors import (
    CorruptionError,
    LimitExceededError,
    LogCompactedError,
    LogUnavailableError,
    UsageError,
)
from keeldb.types import NodeId

A, B, C, D = (NodeId(x) for x in "abcd")


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(start + i, t, b"d%d" % (start + i)) for i, t in enumerate(terms)]


def test_memory_storage_append_truncates_conflicting_suffix() -> None:
    st = MemoryStorage()
    st.append(ents(1, 1, 1))
    st.append([Entry(2, 2, b"x")])
    assert st.last_index() == 2 and st.term(2) == 2
    with pytest.raises(LogUnavailableError):
        st.term(3)


def test_memory_storage_compaction_and_snapshots() -> None:
    st = MemoryStorage()
    st.append(ents(1, 1, 2, 2))
    with pytest.raises(UsageError, match="create a snapshot first"):
        st.compact(2)
    st.create_snapshot(3, ConfState((A,)), b"img")
    st.compact(3)
    assert st.first_index() == 4 and st.term(3) == 2
    with pytest.raises(LogCompactedError):
        st.entries(3, 5, 1 << 20)
    with pytest.raises(LogCompactedError):
        st.term(2)
    with pytest.raises(UsageError, match="not newer"):
        st.create_snapshot(3, ConfState((A,)), b"img")
    st.apply_snapshot(Snapshot(SnapshotMeta(10, 3, ConfState((A,))), b"new"))
    assert st.first_index() == 11 and st.last_index() == 10


def test_limit_size_keeps_at_least_one_entry() -> None:
    big = [Entry(1, 1, b"x" * 100), Entry(2, 1, b"y")]
    assert limit_size(big, 10) == big[:1]
    assert limit_size(big, 1000) == big


def test_log_unstable_then_stable() -> None:
    st = MemoryStorage()
    log = RaftLog(st)
    log.append(ents(1, 1, 2))
    assert log.last_index() == 3 and log.term(3) == 2 and st.last_index() == 0
    st.append(log.unstable.entries)
    log.stable_to(3, 2)
    assert not log.unstable.entries and log.last_index() == 3
    assert [e.index for e in log.slice(1, 4, 1 << 20)] == [1, 2, 3]


def test_log_maybe_append_and_conflicts() -> None:
    log = RaftLog(MemoryStorage())
    log.append(ents(1, 1, 1, 1))
    assert log.maybe_append(2, 1, 3, tuple(ents(3, 3, start=3))) == 4
    assert [log.term(i) for i in range(1, 5)] == [1, 1, 3, 3]
    assert log.committed == 3
    assert log.maybe_append(4, 9, 4, ()) is None  # mismatch
    with pytest.raises(AssertionError, match="committed"):
        log.append([Entry(2, 5)])


def test_find_conflict_by_term_gives_the_backtracking_hint() -> None:
    log = RaftLog(MemoryStorage())
    log.append(ents(1, 1, 2, 2, 2, 4, 4))
    assert log.find_conflict_by_term(7, 3) == (5, 2)
    assert log.find_conflict_by_term(7, 1) == (2, 1)
    assert log.find_conflict_by_term(7, 0) == (0, 0)
    assert log.find_conflict_by_term(9, 4) == (7, 4)  # past the end: start at last


def test_is_up_to_date_compares_term_then_index() -> None:
    log = RaftLog(MemoryStorage())
    log.append(ents(1, 2, 2))
    assert log.is_up_to_date(3, 2) and log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2) and not log.is_up_to_date(9, 1)


def test_inflights_window() -> None:
    inf = Inflights(max_msgs=2, max_bytes=100)
    inf.add(5, 10)
    inf.add(9, 10)
    assert inf.full()
    inf.free_le(5)
    assert not inf.full() and inf.count() == 1 and inf.bytes == 10
    inf.add(12, 95)
    assert inf.full()  # by bytes
    inf.free_first()
    assert inf.count() == 1


def test_progress_probe_replicate_transitions() -> None:
    pr = Progress(next_index=10, max_msgs=4, max_bytes=1 << 20)
    assert pr.state == ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(12, 10)
    assert pr.is_paused()
    assert pr.maybe_decr_to(9, 4)  # reject of prev=9 with hint 4
    assert pr.next == 5 and not pr.is_paused()
    assert not pr.maybe_decr_to(9, 4)  # stale: next-1 is 4 now
    assert pr.maybe_update(6)
    pr.become_replicate()
    assert pr.next == 7
    pr.sent_entries(10, 10)
    assert pr.next == 11 and pr.inflights.count() == 1
    assert not pr.maybe_decr_to(5, 0)  # at or below match: stale
    snap = Snapshot(SnapshotMeta(20, 2))
    pr.become_snapshot(snap)
    assert pr.is_paused() and pr.pending_snapshot == 20
    pr.become_probe()
    assert pr.next == 21


def test_progress_detects_a_wiped_follower() -> None:
    pr = Progress(next_index=1, max_msgs=4, max_bytes=1 << 20)
    pr.maybe_update(8)
    pr.become_probe()
    assert pr.maybe_decr_to(8, 0)
    assert pr.match == 0 and pr.next == 1


def test_quorum_math() -> None:
    voters = [A, B, C]
    assert committed_index(voters, {A: 5, B: 3, C: 1}) == 3
    assert committed_index([A, B, C, D], {A: 5, B: 3, C: 1, D: 9}) == 3
    assert committed_index([], {}) == 0
    assert vote_result(voters, {A: True, B: True}) == VoteResult.WON
    assert vote_result(voters, {A: True, B: False}) == VoteResult.PENDING
    assert vote_result(voters, {A: True, B: False, C: False}) == VoteResult.LOST
    assert has_quorum(voters, [A, C]) and not has_quorum(voters, [A, D])


def test_conf_change_roundtrip_and_apply() -> None:
    cc = ConfChange(ConfChangeType.ADD_LEARNER, D)
    assert ConfChange.decode(cc.encode()) == cc
    cs = apply_conf_change(ConfState((A, B, C)), cc)
    assert cs == ConfState((A, B, C), (D,))
    cs = apply_conf_change(cs, ConfChange(ConfChangeType.ADD_VOTER, D))
    assert cs == ConfState((A, B, C, D))
    cs = apply_conf_change(cs, ConfChange(ConfChangeType.REMOVE, A))
    assert cs == ConfState((B, C, D))
    with pytest.raises(CorruptionError):
        ConfChange.decode(b"\xc1garbage")


def test_read_only_queue_answers_in_order_and_is_bounded() -> None:
    ro = ReadOnly(max_pending=2)
    assert ro.add_request(5, A, b"r1")
    assert not ro.add_request(5, A, b"r1")  # a retry of the same context
    assert ro.add_request(6, B, b"r2")
    with pytest.raises(LimitExceededError, match="raft_read_index_pending_max"):
        ro.add_request(7, A, b"r3")
    assert ro.recv_ack(B, b"r2") == {B}
    assert [r.context for r in ro.advance(b"r2")] == [b"r1", b"r2"]
    assert ro.pending_count() == 0

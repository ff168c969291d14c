"""Unit tests of the Raft core, one rule at a time."""

from __future__ import annotations

import random

import pytest
from raft_harness import Network, nid

from keeldb.consensus.confchange import ConfChange, ConfChangeType
from keeldb.consensus.messages import NONE, HardState, Message, MsgType, Role
from keeldb.consensus.progress import ProgressState
from keeldb.consensus.raft import NO_REPLY, Config, Raft
from keeldb.consensus.storage import MemoryStorage
from keeldb.errors import ConfChangeRefusedError, ConfigError, ProposalDroppedError
from keeldb.types import NodeId


def three(**cfg: object) -> Network:
    net = Network([1, 2, 3], **cfg)  # type: ignore[arg-type]
    net.elect(1)
    return net


def single(id: str = "1") -> Raft:
    return Raft(Config(id=nid(id)), MemoryStorage.bootstrap([nid(id)]), random.Random(0))


def drain(r: Raft) -> None:
    """Handle Ready batches as a node would (persisting into the core's MemoryStorage)."""
    st = r.log.storage
    assert isinstance(st, MemoryStorage)
    while r.has_ready():
        rd = r.ready()
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        r.advance(rd)


# --- elections --------------------------------------------------------------------------------


def test_randomized_election_timeout_is_in_range_and_varies() -> None:
    seen = set()
    for seed in range(20):
        r = Raft(Config(id=nid(1)), MemoryStorage.bootstrap([nid(1), nid(2), nid(3)]),
                 random.Random(seed))
        assert 10 <= r.randomized_timeout < 20
        seen.add(r.randomized_timeout)
    assert len(seen) > 3, "jitter must spread timeouts to avoid split votes"


def test_follower_campaigns_after_its_timeout_only() -> None:
    net = Network([1, 2, 3], pre_vote=False)
    r = net.raft(1)
    for _ in range(r.randomized_timeout - 1):
        r.tick()
    assert r.role == Role.FOLLOWER
    r.tick()
    assert r.role == Role.CANDIDATE and r.term == 2 and r.vote == nid(1)


def test_pre_vote_keeps_the_term_until_a_quorum_would_vote() -> None:
    net = three()
    net.isolate(3)
    for _ in range(100):
        net.tick(3)
    assert net.raft(3).role == Role.PRE_CANDIDATE
    assert net.raft(3).term == net.raft(1).term, "pre-vote must not bump the term"


def test_check_quorum_leader_steps_down_without_quorum() -> None:
    net = three()
    net.isolate(1)
    net.tick(1, 2 * 10)
    assert net.raft(1).role == Role.FOLLOWER and net.raft(1).lead == NONE


def test_check_quorum_leader_stays_with_quorum() -> None:
    net = three()
    net.isolate(3)
    for _ in range(40):
        net.tick(1)
        net.stabilize()
    assert net.raft(1).role == Role.LEADER


def test_term_never_decreases() -> None:
    r = single()
    r.campaign()
    with pytest.raises(AssertionError, match="never decrease"):
        r._become_follower(r.term - 1, NONE)


def test_one_vote_per_term() -> None:
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    r = net.raft(3)
    r.step(Message(MsgType.VOTE, to=nid(3), frm=nid(1), term=5, index=1, log_term=1))
    r.step(Message(MsgType.VOTE, to=nid(3), frm=nid(2), term=5, index=1, log_term=1))
    resps = [m for m in r.msgs if m.type == MsgType.VOTE_RESP]
    assert [(m.to, m.reject) for m in resps] == [(nid(1), False), (nid(2), True)]
    assert r.vote == nid(1)


def test_vote_refused_to_a_candidate_with_an_older_log() -> None:
    net = three(check_quorum=False)
    net.propose(1, b"x")
    net.stabilize()
    r = net.raft(3)
    r.step(Message(MsgType.VOTE, to=nid(3), frm=nid(2), term=9, index=2, log_term=2))
    assert r.msgs[-1].type == MsgType.VOTE_RESP and r.msgs[-1].reject


def test_leader_lease_ignores_a_disruptive_vote() -> None:
    net = three()
    r = net.raft(2)
    term = r.term
    r.step(Message(MsgType.VOTE, to=nid(2), frm=nid(3), term=term + 5, index=99, log_term=99))
    assert r.term == term and r.lead == nid(1) and not r.msgs


# --- the Ready contract -----------------------------------------------------------------------


def test_vote_grant_waits_for_persistence() -> None:
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    r = net.raft(2)
    r.step(Message(MsgType.VOTE, to=nid(2), frm=nid(1), term=2, index=1, log_term=1))
    rd = r.ready()
    assert rd.hard_state == HardState(2, nid(1), 1)
    assert not rd.messages
    assert [m.type for m in rd.messages_after_persist] == [MsgType.VOTE_RESP]


def test_candidate_vote_requests_wait_for_its_own_vote_to_persist() -> None:
    net = Network([1, 2, 3], pre_vote=False)
    r = net.raft(1)
    r.campaign()
    rd = r.ready()
    assert not rd.messages and {m.type for m in rd.messages_after_persist} == {MsgType.VOTE}


def test_leader_appends_may_go_before_persistence_but_acks_wait() -> None:
    net = three()
    net.raft(1).propose(b"v")
    rd = net.raft(1).ready()
    assert rd.entries and {m.type for m in rd.messages} == {MsgType.APP}
    net.raft(1).advance(rd)
    follower = net.raft(2)
    for m in rd.messages:
        if m.to == nid(2):
            follower.step(m)
    frd = follower.ready()
    assert frd.entries and not frd.messages
    assert [m.type for m in frd.messages_after_persist] == [MsgType.APP_RESP]


def test_leader_commits_only_entries_it_persisted() -> None:
    r = single()
    r.campaign()
    rd = r.ready()
    assert rd.entries and not rd.committed_entries, "must not apply before persisting"
    assert isinstance(r.log.storage, MemoryStorage)
    r.log.storage.append(rd.entries)
    r.advance(rd)
    rd = r.ready()
    assert [e.index for e in rd.committed_entries] == [rd.committed_entries[0].index]
    assert rd.hard_state is not None and rd.hard_state.commit == rd.committed_entries[-1].index


def test_ready_twice_without_advance_is_a_bug() -> None:
    r = single()
    r.campaign()
    r.ready()
    with pytest.raises(AssertionError, match="before advance"):
        r.ready()


# --- replication ------------------------------------------------------------------------------


def test_leader_appends_an_empty_entry_on_election() -> None:
    net = three()
    r = net.raft(1)
    e = r.log.slice(r.log.last_index(), r.log.last_index() + 1, 1 << 20)[0]
    assert e.term == r.term and e.data == b""


def test_a_commit_alone_sends_nothing_to_caught_up_followers() -> None:
    net = three()
    net.propose(1, b"w")
    sent = net.stabilize()
    apps = [m for m in sent if m.type == MsgType.APP]
    assert apps and all(m.entries for m in apps), "an empty append carried only the commit"
    last = net.raft(1).log.last_index()
    assert net.raft(1).log.committed == last
    assert net.raft(2).log.committed < last and net.raft(3).log.committed < last
    beat = net.heartbeat()  # the heartbeat carries the commit index
    assert {m.commit for m in beat if m.type == MsgType.HEARTBEAT} == {last}
    assert net.raft(2).log.committed == net.raft(3).log.committed == last


def test_a_forwarding_follower_learns_its_commit_at_once_and_does_not_ack_it() -> None:
    net = three()
    net.propose(2, b"from 2")  # forwarded to the leader: node 2's client waits for it
    sent = net.stabilize()
    last = net.raft(1).log.last_index()
    assert net.raft(2).log.committed == last, "the forwarding follower waits for no heartbeat"
    assert net.raft(3).log.committed < last
    notices = [m for m in sent if m.type == MsgType.APP and not m.entries]
    assert [(m.to, m.commit, m.context) for m in notices] == [(nid(2), last, NO_REPLY)]
    acks = [m for m in sent if m.type == MsgType.APP_RESP and m.frm == nid(2)]
    assert len(acks) == 1, "only the append with the entry is acknowledged"
    net.propose(1, b"from 1")  # nothing forwarded since: no notice
    sent = net.stabilize()
    assert not [m for m in sent if m.type == MsgType.APP and not m.entries]


def test_a_streaming_follower_gets_no_periodic_heartbeat_but_a_bounded_lag() -> None:
    net = three()
    net.tick(1)  # a first beat to everyone
    net.stabilize()

    def beats() -> list[NodeId]:
        net.tick(1)
        return [m.to for m in net.stabilize() if m.type == MsgType.HEARTBEAT]

    net.propose(1, b"w")
    net.stabilize()
    assert beats() == [], "both acknowledged an append since the last beat"
    assert beats() == [nid(2), nid(3)], "no append since: the beat carries the commit"
    last = net.raft(1).log.last_index()
    assert net.raft(2).log.committed == net.raft(3).log.committed == last
    skip_ticks = net.raft(1).cfg.election_ticks // 2
    sent = []
    for i in range(2 * skip_ticks):  # appends every tick: a beat still every skip_ticks
        net.propose(1, b"s%d" % i)
        net.stabilize()
        sent.append(beats())
    assert sent.count([nid(2), nid(3)]) == 2 and sent.count([]) == 2 * skip_ticks - 2


def test_entries_carry_opaque_bytes() -> None:
    net = three()
    blob = bytes(range(256)) * 3
    net.propose(1, blob)
    net.stabilize()
    net.heartbeat()
    for n in net.nodes.values():
        assert any(d == blob for _, d in n.sm.values())


def test_batching_limits_bytes_per_append() -> None:
    net = three(max_append_bytes=100)
    net.isolate(3)
    for i in range(10):
        net.propose(1, b"%040d" % i)
    net.stabilize()
    net.heal()
    net.tick(1)
    sent = [m for m in net.stabilize() if m.type == MsgType.APP and m.to == nid(3) and m.entries]
    assert len(sent) >= 5
    for m in sent:
        assert len(m.entries) == 1 or sum(e.size() for e in m.entries) <= 100
    assert net.raft(3).log.last_index() == net.raft(1).log.last_index()


def test_pipelining_is_bounded_by_the_inflight_window() -> None:
    net = three(max_inflight_msgs=2)
    for i in range(5):
        net.propose(1, b"p%d" % i)  # no acks delivered in between
    to2 = [m for m in net.queue if m.type == MsgType.APP and m.to == nid(2)]
    assert len(to2) == 2, "replicate state streams up to the window, then waits"
    pr = net.raft(1).prs[nid(2)]
    assert pr.state == ProgressState.REPLICATE and pr.inflights.full()
    net.stabilize()
    assert net.raft(2).log.last_index() == net.raft(1).log.last_index()


def test_probe_state_sends_one_append_until_answered() -> None:
    net = three()
    net.isolate(3)
    net.raft(1).prs[nid(3)].become_probe()
    for i in range(3):
        net.propose(1, b"q%d" % i)
    to3 = [m for m in net.queue if m.type == MsgType.APP and m.to == nid(3)]
    assert len(to3) == 1


def test_unreachable_peer_falls_back_to_probing() -> None:
    net = three()
    pr = net.raft(1).prs[nid(2)]
    assert pr.state == ProgressState.REPLICATE
    pr.recent_active = False
    net.raft(1).report_unreachable(nid(2))
    assert pr.state == ProgressState.PROBE and not pr.recent_active
    net.propose(1, b"x")
    net.stabilize()
    assert pr.state == ProgressState.REPLICATE


def test_fast_backtracking_skips_a_whole_term() -> None:
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    net.elect(1)
    net.isolate(1)
    for i in range(20):
        net.propose(1, b"stale%d" % i)
    net.stabilize()
    net.elect(2)
    for i in range(3):
        net.propose(2, b"new%d" % i)
    net.stabilize()
    net.elect(3)  # a leader whose progress for 1 starts at its own last index
    net.heal()
    net.tick(3)
    msgs = net.stabilize()
    rejects = [m for m in msgs if m.type == MsgType.APP_RESP and m.frm == nid(1) and m.reject]
    assert len(rejects) <= 2, f"backtracking took {len(rejects)} round trips"
    assert net.raft(1).log.last_index() == net.raft(3).log.last_index()


# --- commitment -------------------------------------------------------------------------------


def test_no_commit_by_counting_replicas_of_an_older_term() -> None:
    """Figure 8 of the Raft paper: replicas of a term-2 entry on a majority do not commit it
    for a term-3 leader; only its own entry does, which commits everything before it."""
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    net.elect(1)
    net.isolate(1)
    net.propose(1, b"old")  # term-2 entry only on node 1
    net.stabilize()
    old = net.raft(1).log.last_index()
    # Node 1 becomes leader again in a new term with node 2's vote, without replicating yet.
    net.heal()
    net.crash(1)  # restarts as a follower, its term-2 entry durable
    net.raft(1).campaign()
    net.process(nid(1))
    votes = [m for m in net.queue if m.type == MsgType.VOTE and m.to == nid(2)]
    net.queue.clear()
    net.deliver_one(votes[0])
    net.process(nid(2))
    resp = [m for m in net.queue if m.type == MsgType.VOTE_RESP]
    net.queue.clear()
    net.deliver_one(resp[0])
    net.process(nid(1))
    r = net.raft(1)
    assert r.role == Role.LEADER
    commit = r.log.committed
    # Follower 2 acknowledges only the old entry: a majority holds it, yet no commit.
    r.step(Message(MsgType.APP_RESP, to=nid(1), frm=nid(2), term=r.term, index=old))
    assert r.log.committed == commit < old
    r.step(Message(MsgType.APP_RESP, to=nid(1), frm=nid(2), term=r.term, index=old + 1))
    assert r.log.committed == old + 1


def test_commit_and_applied_never_regress() -> None:
    net = three()
    net.propose(1, b"x")
    net.stabilize()
    log = net.raft(1).log
    c = log.committed
    log.commit_to(c - 1)
    assert log.committed == c
    with pytest.raises(AssertionError, match="applied regresses"):
        log.applied_to(log.applied - 1)


# --- snapshots --------------------------------------------------------------------------------


def _lagging_follower_with_compacted_leader(chunk: int) -> Network:
    net = three(snapshot_chunk_bytes=chunk)
    net.isolate(3)
    for i in range(8):
        net.propose(1, b"value-%d" % i)
    net.stabilize()
    net.compact(1)
    net.heal()
    return net


def test_lagging_follower_gets_a_chunked_snapshot() -> None:
    net = _lagging_follower_with_compacted_leader(chunk=20)
    net.tick(1)
    msgs = net.stabilize()
    chunks = [m for m in msgs if m.type == MsgType.SNAP]
    assert len(chunks) >= 3 and all(len(m.snap_data) <= 20 for m in chunks)
    assert [m.snap_offset for m in chunks] == sorted(m.snap_offset for m in chunks)
    assert net.raft(3).log.committed == net.raft(1).log.committed
    assert net.nodes[nid(3)].sm == net.nodes[nid(1)].sm


def test_lost_snapshot_chunk_is_resent_on_heartbeat() -> None:
    net = _lagging_follower_with_compacted_leader(chunk=20)
    net.tick(1)
    net.drop_rate = 1.0
    for _ in range(6):  # lose a few rounds of chunks
        net.deliver_round()
    net.drop_rate = 0.0
    for _ in range(10):
        net.tick(1)
        net.stabilize()
    assert net.raft(3).log.committed == net.raft(1).log.committed
    assert net.raft(1).prs[nid(3)].state == ProgressState.REPLICATE


def test_follower_refuses_an_out_of_order_chunk() -> None:
    net = _lagging_follower_with_compacted_leader(chunk=20)
    snap = net.nodes[nid(1)].storage.snapshot()
    r = net.raft(3)
    m = Message(MsgType.SNAP, to=nid(3), frm=nid(1), term=net.raft(1).term,
                snapshot_meta=snap.meta, snap_offset=20, snap_data=snap.data[20:40],
                snap_total=len(snap.data))
    r.step(m)
    assert r.msgs[-1].type == MsgType.SNAP_RESP and r.msgs[-1].reject and r.msgs[-1].index == 0


def test_compaction_drops_entries_and_leader_still_serves() -> None:
    net = three()
    for i in range(5):
        net.propose(1, b"c%d" % i)
    net.stabilize()
    at = net.compact(1, keep=2)
    assert net.nodes[nid(1)].storage.first_index() == at - 1
    net.propose(1, b"after")
    net.stabilize()
    net.heartbeat()
    assert net.raft(2).log.committed == net.raft(1).log.committed


# --- membership -------------------------------------------------------------------------------


def test_learner_replicates_but_does_not_vote_or_count() -> None:
    net = three()
    net.add_node(4)
    net.propose_conf(1, ConfChange(ConfChangeType.ADD_LEARNER, nid(4)))
    net.stabilize()
    assert net.raft(4).conf.learners == (nid(4),)
    net.isolate(4)
    net.propose(1, b"w")
    net.stabilize()
    assert net.raft(1).log.committed == net.raft(1).log.last_index(), "learner must not count"
    for _ in range(60):
        net.tick(4)
    assert net.raft(4).role == Role.FOLLOWER, "a learner never campaigns"


def test_learner_promotion_waits_until_it_caught_up() -> None:
    net = three(learner_catchup_entries=0)
    net.add_node(4)
    net.propose_conf(1, ConfChange(ConfChangeType.ADD_LEARNER, nid(4)))
    net.isolate(4)
    net.stabilize()
    net.propose(1, b"more")
    net.stabilize()
    with pytest.raises(ConfChangeRefusedError, match="behind"):
        net.raft(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, nid(4)))
    net.heal()
    net.tick(1)
    net.stabilize()
    net.propose_conf(1, ConfChange(ConfChangeType.ADD_VOTER, nid(4)))
    net.stabilize()
    assert net.raft(1).conf.voters == (nid(1), nid(2), nid(3), nid(4))


def test_one_membership_change_at_a_time() -> None:
    net = three()
    net.add_node(4)
    net.propose_conf(1, ConfChange(ConfChangeType.ADD_LEARNER, nid(4)))
    with pytest.raises(ConfChangeRefusedError, match="one change at a time"):
        net.raft(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE, nid(3)))


def test_removed_leader_steps_down_after_the_change_commits() -> None:
    net = three()
    net.propose_conf(1, ConfChange(ConfChangeType.REMOVE, nid(1)))
    assert net.raft(1).role == Role.LEADER, "still leads until the removal is applied"
    net.stabilize()
    assert net.raft(1).role == Role.FOLLOWER
    lead = net.leader()
    assert lead in (nid(2), nid(3)) and net.raft(lead).conf.voters == (nid(2), nid(3))
    net.propose(lead, b"still serving")
    net.stabilize()
    net.heartbeat()
    assert net.raft(2).log.committed == net.raft(3).log.committed == net.raft(lead).log.last_index()


# --- leadership transfer ----------------------------------------------------------------------


def test_transfer_leader_hands_over_and_drops_proposals_meanwhile() -> None:
    net = three()
    net.raft(1).transfer_leader(nid(2))
    with pytest.raises(ProposalDroppedError, match="moving to 2"):
        net.raft(1).propose(b"x")
    net.stabilize()
    assert net.raft(2).role == Role.LEADER and net.raft(1).lead == nid(2)


def test_transfer_to_an_unreachable_node_is_aborted() -> None:
    net = three()
    net.isolate(3)
    net.raft(1).transfer_leader(nid(3))
    for _ in range(10):
        net.tick(1)
        net.stabilize()
    net.propose(1, b"accepted again")
    assert net.raft(1).role == Role.LEADER and net.raft(1).lead_transferee == NONE


# --- reads ------------------------------------------------------------------------------------


def test_read_index_needs_a_quorum_heartbeat_round() -> None:
    net = three()
    net.isolate(1)
    net.raft(1).read_index(b"r")
    net.stabilize()
    assert not net.nodes[nid(1)].read_states
    net.heal()
    net.tick(1)
    net.stabilize()
    assert [rs.context for rs in net.nodes[nid(1)].read_states] == [b"r"]


def test_follower_read_index_is_forwarded_to_the_leader() -> None:
    net = three()
    net.propose(1, b"w")
    net.stabilize()
    net.raft(3).read_index(b"f")
    net.stabilize()
    (rs,) = net.nodes[nid(3)].read_states
    assert rs.index == net.raft(1).log.committed


def test_read_without_a_leader_is_dropped() -> None:
    net = Network([1, 2, 3])
    with pytest.raises(ProposalDroppedError, match="no leader"):
        net.raft(1).read_index(b"x")


def test_lease_reads_require_check_quorum() -> None:
    with pytest.raises(ConfigError, match="check_quorum"):
        Config(id=nid(1), lease_reads=True, check_quorum=False).validate()


def test_lease_read_answers_without_messages() -> None:
    net = three(lease_reads=True)
    net.tick(1)  # one heartbeat round answered by a quorum starts the lease
    net.stabilize()
    net.raft(1).read_index(b"l")
    assert not net.raft(1).msgs
    net.process(nid(1))
    assert [rs.context for rs in net.nodes[nid(1)].read_states] == [b"l"]


def test_lease_expires_before_followers_may_elect_another_leader() -> None:
    net = three(lease_reads=True, election_ticks=10, lease_margin_ticks=2)
    net.tick(1)
    net.stabilize()
    net.isolate(1)
    net.tick(1, 6)  # heartbeat sent at tick 1, now tick 7: 6 < 10 - 2, lease holds
    net.raft(1).read_index(b"in-lease")
    net.process(nid(1))
    net.tick(1, 2)  # tick 9: 8 >= 10 - 2, the lease is over
    net.raft(1).read_index(b"expired")
    net.stabilize()
    assert [rs.context for rs in net.nodes[nid(1)].read_states] == [b"in-lease"]
    assert net.raft(1).readonly.pending_count() == 1, "falls back to ReadIndex, which waits"


def test_single_node_cluster_commits_and_reads_alone() -> None:
    r = single()
    r.campaign()
    drain(r)
    r.propose(b"solo")
    drain(r)
    assert r.log.committed == r.log.last_index() == 3
    r.read_index(b"q")
    assert r.ready().read_states[0].index == 3


@pytest.mark.parametrize("bad", [dict(election_ticks=1), dict(heartbeat_ticks=0),
                                 dict(max_append_bytes=0), dict(id="")])
def test_config_validation(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"id": nid(1), **bad}
    with pytest.raises(ConfigError):
        Config(**args).validate()  # type: ignore[arg-type]


def test_restart_with_applied_index_replays_membership_from_the_log() -> None:
    net = three()
    net.add_node(4)
    net.propose_conf(1, ConfChange(ConfChangeType.ADD_LEARNER, nid(4)))
    net.stabilize()
    st = net.nodes[nid(2)].storage
    applied = net.raft(2).log.applied
    fresh = Raft(Config(id=nid(2)), st, random.Random(1))
    assert fresh.conf.learners == (), "from the snapshot alone: changes not yet replayed"
    resumed = Raft(Config(id=nid(2), applied=applied), st, random.Random(1))
    assert resumed.conf.learners == (nid(4),) and resumed.log.applied == applied


def test_an_oversized_forwarded_proposal_is_dropped_not_raised() -> None:
    """A peer's message must never crash the leader; a local caller gets the typed error."""
    from keeldb import limits
    from keeldb.consensus.messages import Entry
    from keeldb.errors import LimitExceededError

    net = three()
    leader = net.nodes[nid("1")].raft
    last = leader.log.last_index()
    huge = (Entry(0, 0, b"x" * (limits.raft_entry_bytes_max + 1)),)
    leader.step(Message(MsgType.PROP, to=nid("1"), frm=nid("2"), entries=huge))
    assert leader.log.last_index() == last
    with pytest.raises(LimitExceededError, match="raft_entry_bytes_max"):
        leader.step(Message(MsgType.PROP, to=nid("1"), frm=nid("1"), entries=huge))

"""Randomized, deterministic runs of a Raft cluster over a faulty in-memory network.

Every seed drives a cluster with message loss, duplication and reordering, partitions, crashes
(some between sending a Ready's early messages and persisting it), log compaction, leadership
transfers and ReadIndex reads. The network checks election safety, log matching, leader
completeness and state machine safety after every step; this test adds ReadIndex
linearizability (a read's index covers every write committed before the read was asked) and
liveness after healing. Reproduce a seed with `pytest -k "seed_N"`.
"""

from __future__ import annotations

import random

import pytest
from raft_harness import Network, nid

from keeldb.consensus.confchange import ConfChange, ConfChangeType
from keeldb.consensus.messages import Role
from keeldb.errors import ConfChangeRefusedError, ProposalDroppedError
from keeldb.types import NodeId

DEFAULT_SEEDS = range(30)
SLOW_SEEDS = range(30, 400)


def run_seed(seed: int, steps: int = 1500) -> Network:
    rng = random.Random(f"{seed}:test")
    n = rng.choice((3, 3, 5))
    net = Network(range(1, n + 1), seed=seed, pre_vote=rng.random() < 0.7,
                  check_quorum=rng.random() < 0.7, max_append_bytes=rng.choice((40, 200, 4096)),
                  max_inflight_msgs=rng.choice((1, 4, 64)), snapshot_chunk_bytes=rng.choice((16, 64)),
                  election_ticks=rng.choice((5, 10)))
    ids = sorted(net.nodes)  # grows as nodes join
    net.dup_rate = 0.02
    reads: dict[bytes, int] = {}  # read context -> committed floor when it was asked
    proposals = 0
    for step in range(steps):
        a = rng.random()
        if a < 0.45 and net.queue:
            k = rng.randrange(len(net.queue))
            m = net.queue[k]
            if rng.random() >= net.dup_rate:
                del net.queue[k]
            if rng.random() >= 0.05:  # 5% loss
                net.deliver_one(m)
        elif a < 0.75:
            net.nodes[rng.choice(ids)].raft.tick()
            net.check()
        elif a < 0.85:
            proposals += 1
            try:
                net.raft(rng.choice(ids)).propose(f"s{seed}-p{proposals}".encode())
            except ProposalDroppedError:
                pass
        elif a < 0.88:
            ctx = f"r{step}".encode()
            reads[ctx] = max(net.committed, default=0)
            try:
                net.raft(rng.choice(ids)).read_index(ctx)
            except ProposalDroppedError:
                del reads[ctx]
        elif a < 0.905:
            if rng.random() < 0.5:
                net.heal()
            else:
                shuffled = ids[:]
                rng.shuffle(shuffled)
                cut = rng.randrange(1, len(ids))
                net.partition(shuffled[:cut], shuffled[cut:])
        elif a < 0.92:
            net.crash(rng.choice(ids))
        elif a < 0.94:
            net.compact(rng.choice(ids), keep=rng.choice((0, 2, 10)))
        elif a < 0.95:
            lead = net.leader()
            if lead is not None:
                net.raft(lead).transfer_leader(rng.choice(ids))
        elif a < 0.96:
            _change_membership(net, rng, ids)
        for i in ids:
            while net.nodes[i].raft.has_ready():
                net.process(i, crash_before_persist=rng.random() < 0.01)
        for i in ids:
            for rs in net.nodes[i].read_states:
                if rs.context in reads:
                    floor = reads.pop(rs.context)
                    assert rs.index >= floor, (
                        f"seed {seed}: read {rs.context!r} at index {rs.index} misses "
                        f"commit {floor} that happened before it was asked")
            net.nodes[i].read_states.clear()
    _heal_and_converge(net, seed)
    return net


def _change_membership(net: Network, rng: random.Random, ids: list[NodeId]) -> None:
    """At the leader: promote a learner, add a new node as a learner, or remove a voter
    (possibly the leader itself). Refusals (one change at a time, learner behind) are fine."""
    lead = net.leader()
    if lead is None:
        return
    r = net.raft(lead)
    if r.conf.learners:
        cc = ConfChange(ConfChangeType.ADD_VOTER, r.conf.learners[0])
    elif len(ids) < 7 and rng.random() < 0.5:
        new = nid(len(ids) + 1)
        if new not in net.nodes:
            net.add_node(new)
            ids.append(new)
        cc = ConfChange(ConfChangeType.ADD_LEARNER, new)
    elif len(r.conf.voters) > 3:
        cc = ConfChange(ConfChangeType.REMOVE, rng.choice(r.conf.voters))
    else:
        return
    try:
        r.propose_conf_change(cc)
    except (ConfChangeRefusedError, ProposalDroppedError):
        pass


def _heal_and_converge(net: Network, seed: int) -> None:
    """Liveness: with the faults gone, a leader emerges and every node catches up."""
    net.heal()
    net.drop_rate = 0.0
    net.dup_rate = 0.0
    lead: NodeId | None = None
    for _ in range(300):
        net.tick_all(1)
        net.stabilize()
        lead = net.leader()
        if lead is None:
            continue
        try:
            net.propose(lead, b"final")
            break
        except ProposalDroppedError:
            continue  # e.g. a transfer in progress: retry after the next tick
    assert lead is not None, f"seed {seed}: no leader after healing"
    # Without pre-vote a lagging node can keep disrupting elections for a while: liveness
    # is probabilistic, so allow many election timeouts.
    commits: dict[NodeId, int] = {}
    for _ in range(1000):
        net.tick_all(1)
        net.stabilize()
        lead = net.leader() or lead
        conf = net.raft(lead).conf
        members = set(conf.voters) | set(conf.learners)
        commits = {i: n.raft.log.committed for i, n in net.nodes.items() if i in members}
        if len(set(commits.values())) == 1 and net.raft(lead).role == Role.LEADER:
            break
    assert len(set(commits.values())) == 1, f"seed {seed}: nodes did not converge: {commits}"
    assert any(d == b"final" for _, d in net.committed.values()), f"seed {seed}: final lost"
    assert all(net.nodes[i].raft.log.applied == c for i, c in commits.items())


def _run_reporting(seed: int, steps: int, test: str) -> None:
    try:
        run_seed(seed, steps)
    except AssertionError as e:
        raise AssertionError(f"{e}\nreproduce: python -m pytest -m 'slow or not slow' "
                             f"'tests/unit/consensus/test_raft_random.py::{test}[seed_{seed}]'"
                             ) from e


@pytest.mark.parametrize("seed", DEFAULT_SEEDS, ids=lambda s: f"seed_{s}")
def test_random_cluster_is_safe(seed: int) -> None:
    _run_reporting(seed, 1500, "test_random_cluster_is_safe")


# Seeds that once failed (with the schedule length they failed at), kept forever:
# 9 - a lost MsgApp with a full in-flight window stalled a follower (heartbeat now frees a slot);
# 81 - a lagging node without pre-vote kept disrupting elections (liveness needs patience).
REGRESSION_SEEDS = ((9, 1500), (81, 4000))


@pytest.mark.parametrize("seed,steps", REGRESSION_SEEDS, ids=[f"seed_{s}" for s, _ in REGRESSION_SEEDS])
def test_regression_seeds(seed: int, steps: int) -> None:
    _run_reporting(seed, steps, "test_regression_seeds")


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS, ids=lambda s: f"seed_{s}")
def test_random_cluster_is_safe_many_seeds(seed: int) -> None:
    _run_reporting(seed, 4000, "test_random_cluster_is_safe_many_seeds")

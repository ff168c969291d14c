"""RaftNode scripted scenarios in the simulator (no random faults: each test makes its own)."""

from __future__ import annotations

import msgpack
import pytest

from keeldb import limits
from keeldb.consensus import (
    ConfState,
    Entry,
    HardState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from keeldb.errors import CorruptionError, StateRestoreError
from keeldb.node import raft_codec
from keeldb.node.effects import ClientRequest, Halt, Persist, PersistDone, Reply, Start
from keeldb.node.raft_log import LOG_FILE, SNAP_FILE, DurableLog, fingerprint
from keeldb.node.raft_node import SUSPECT_FILE, RaftNode, Sessions
from keeldb.testing.cluster import SimCluster, SimConfig
from keeldb.testing.raft_kv import KvStateMachine, SimRaftKvNode
from keeldb.types import NodeId

NODES = ("n1", "n2", "n3")


def cluster(seed: int = 1) -> SimCluster:
    c = SimCluster(SimConfig("raft-kv", seed, faults=()))
    c.start()
    c.run_for(400)
    return c


def node(c: SimCluster, name: str) -> RaftNode:
    n = c.world.drivers[NodeId(name)].node
    assert isinstance(n, RaftNode), f"{name} is down"
    return n


def leader(c: SimCluster) -> str:
    leaders = [n for n in NODES if c.world.drivers[NodeId(n)].node is not None
               and node(c, n).raft is not None and node(c, n).raft.role == Role.LEADER]  # type: ignore[union-attr]
    assert len(leaders) >= 1, "no leader"
    return max(leaders, key=lambda n: node(c, n).raft.term)  # type: ignore[union-attr]


def kv(c: SimCluster, name: str) -> dict[object, object]:
    sm = node(c, name).sessions.sm
    assert isinstance(sm, KvStateMachine)
    return sm.state


def ok(c: SimCluster, name: str, f: str, key: object = None, value: object = None,
       timeout_ms: float = 400) -> object:
    reply = c.request(name, f, key, value, timeout_ms=timeout_ms)
    assert reply is not None and reply.type == "ok", f"{f} {key} on {name}: {reply}"
    return reply.value


def test_one_leader_is_elected_and_everyone_follows_it() -> None:
    c = cluster()
    lead = leader(c)
    for n in NODES:
        assert node(c, n).raft.lead == lead  # type: ignore[union-attr]
        assert node(c, n).raft.term == node(c, lead).raft.term  # type: ignore[union-attr]


def test_writes_replicate_and_a_follower_forwards_them() -> None:
    c = cluster()
    lead = leader(c)
    follower = next(n for n in NODES if n != lead)
    ok(c, lead, "write", "x", 1)
    ok(c, follower, "write", "y", 2)  # proposed on the follower, forwarded by its core
    assert ok(c, follower, "read", "x") == 1
    c.run_for(50)
    for n in NODES:
        assert kv(c, n) == {"x": 1, "y": 2}
        assert node(c, n).applied == node(c, lead).applied


def test_cas_fails_cleanly_and_unknown_functions_are_refused() -> None:
    c = cluster()
    ok(c, "n1", "write", "k", 5)
    reply = c.request("n2", "cas", "k", [4, 6], timeout_ms=400)
    assert reply is not None and reply.type == "fail"
    assert ok(c, "n3", "cas", "k", [5, 6]) == [5, 6]
    bad = c.request("n1", "frobnicate", "k", 1)
    assert bad is not None and bad.type == "fail" and "unknown function" in bad.error


def test_a_leader_crash_elects_another_and_the_old_one_catches_up() -> None:
    c = cluster()
    old = leader(c)
    ok(c, old, "write", "a", 1)
    c.crash(old, power_loss=True)
    c.run_for(400)
    new = leader(c)
    assert new != old
    ok(c, new, "write", "b", 2)
    c.restart(old)
    c.run_for(300)
    assert kv(c, old) == {"a": 1, "b": 2}
    assert node(c, old).raft.lead == new  # type: ignore[union-attr]


def test_a_partitioned_leader_cannot_acknowledge_and_steps_down() -> None:
    c = cluster()
    old = leader(c)
    c.isolate(old)
    reply = c.request(old, "write", "z", 1, timeout_ms=600)
    assert reply is not None and reply.type == "info"  # proposed, never committed
    stale_read = c.request(old, "read", "z", timeout_ms=600)
    assert stale_read is not None and stale_read.type == "fail"
    others = [n for n in NODES if n != old]
    ok(c, others[0], "write", "z", 2)
    new = leader(c)
    assert new in others
    assert node(c, old).raft.role != Role.LEADER  # type: ignore[union-attr]  # check-quorum
    c.heal()
    c.run_for(300)
    assert kv(c, old)["z"] == 2
    assert ok(c, old, "read", "z") == 2


def test_read_index_reads_see_the_latest_write_and_stale_reads_may_not() -> None:
    c = cluster()
    lead = leader(c)
    a, b = (n for n in NODES if n != lead)
    ok(c, a, "write", "r", 1)
    assert ok(c, b, "read", "r") == 1
    c.isolate(b)
    ok(c, a, "write", "r", 2)
    assert ok(c, b, "read", "r", "stale") == 1  # flagged per request: local state, at once
    reply = c.request(b, "read", "r", timeout_ms=600)
    assert reply is not None and reply.type == "fail"  # no leader reachable to confirm
    c.heal()
    c.run_for(300)
    assert ok(c, b, "read", "r") == 2


def test_a_wiped_follower_catches_up_by_snapshot() -> None:
    c = cluster()
    lead = leader(c)
    victim = next(n for n in NODES if n != lead)
    for i in range(150):  # past SIM_CONFIG.snapshot_entries: the leader compacts its log
        ok(c, lead, "write", f"k{i % 7}", i)
    c.run_for(50)
    assert node(c, lead).dlog.storage.first_index() > 2  # type: ignore[union-attr]
    c.crash(victim)
    disk = c.world.disks[NodeId(victim)]
    for name in disk.list():
        disk.remove(name)
    disk.sync_dir()
    c.restart(victim)
    c.run_for(200)
    # The leader notices the wiped log when the next append is rejected below the old match.
    ok(c, lead, "write", "after", 1)
    c.run_for(200)
    assert node(c, victim).stats.snapshots_installed >= 1
    assert kv(c, victim) == kv(c, lead)
    assert node(c, victim).applied == node(c, lead).applied


def test_every_acknowledged_write_survives_a_power_loss_of_all_nodes() -> None:
    c = cluster()
    for i in range(80):
        ok(c, NODES[i % 3], "write", f"p{i % 5}", i)
    expected = dict(kv(c, leader(c)))
    for n in NODES:
        c.crash(n, power_loss=True)
    for n in NODES:
        c.restart(n)
    c.run_for(600)
    for i in range(5):
        assert ok(c, NODES[i % 3], "read", f"p{i}") == expected[f"p{i}"]


def test_a_failed_fsync_halts_the_node_and_it_recovers() -> None:
    c = cluster()
    lead = leader(c)
    follower = next(n for n in NODES if n != lead)
    ok(c, lead, "write", "h", 1)
    c.world.disks[NodeId(follower)].fail_syncs = 1
    ok(c, lead, "write", "h", 2)
    c.run_for(500)
    assert c.world.stats.halts >= 1
    assert kv(c, follower)["h"] == 2


def test_a_duplicated_entry_applies_once() -> None:
    c = cluster()
    lead = leader(c)
    cmd, read_only = KvStateMachine().command("txn", None, [["append", "l", 7]])
    assert not read_only
    data = Sessions.encode("retrying-client", 1, 1, cmd)
    raft = node(c, lead).raft
    assert raft is not None
    raft.propose(data)
    raft.propose(data)  # a retry with the same (session, seq)
    c.run_for(100)
    for n in NODES:
        assert kv(c, n)["l"] == [7]


def test_sessions_dedup_and_forget_answered_commands() -> None:
    s = Sessions(KvStateMachine())
    cmd, _ = KvStateMachine().command("txn", None, [["append", "l", 1]])
    assert s.apply(10, Sessions.encode("c", 1, 1, cmd)) == ("c", 1, ["ok", [["append", "l", 1]]])
    assert s.apply(11, Sessions.encode("c", 1, 1, cmd))[2] == ["ok", [["append", "l", 1]]]
    # seq 2 says seq 1 was answered: a late copy of seq 1 is skipped, not applied
    s.apply(12, Sessions.encode("c", 2, 2, cmd))
    assert s.apply(13, Sessions.encode("c", 1, 1, cmd))[2] is None
    sm = s.sm
    assert isinstance(sm, KvStateMachine) and sm.state["l"] == [1, 1]
    # the table survives a snapshot
    t = Sessions(KvStateMachine())
    t.restore(s.snapshot())
    assert t.apply(14, Sessions.encode("c", 2, 2, cmd))[2] == s.table["c"].done[2]
    assert t.lookup("c", 1) == (True, None) and t.lookup("c", 3) == (False, None)


def test_sessions_table_is_bounded() -> None:
    s = Sessions(KvStateMachine(), sessions_max=3, done_max=4)
    cmd, _ = KvStateMachine().command("write", "k", 1)
    for i in range(10):
        s.apply(i + 1, Sessions.encode(f"c{i}", 1, 1, cmd))
    assert sorted(s.table) == ["c7", "c8", "c9"]
    for seq in range(1, 10):
        s.apply(100 + seq, Sessions.encode("c9", seq, 1, cmd))
    assert len(s.table["c9"].done) <= 4


def test_kv_snapshot_round_trip_and_bad_images() -> None:
    sm = KvStateMachine()
    sm.apply(1, msgpack.packb(["write", "a", [1, 2]]))
    other = KvStateMachine()
    other.restore(sm.snapshot())
    assert other.state == {"a": [1, 2]}
    with pytest.raises(StateRestoreError):
        other.restore(msgpack.packb([99, []]))


def test_requests_during_recovery_get_a_retryable_failure() -> None:
    n = SimRaftKvNode()
    effects = n.step(Start(NodeId("n1"), (NodeId("n2"), NodeId("n3")), 0))
    assert n.state == "recovering" and effects
    (reply,) = n.step(ClientRequest(1, "write", "k", 1))
    assert isinstance(reply, Reply) and reply.type == "fail" and "recovering" in reply.error


def _files_with(extra: bytes) -> dict[str, bytes]:
    _, writes = DurableLog.bootstrap((NodeId("n1"), NodeId("n2"), NodeId("n3")))
    files = {w.file: w.data for w in writes}
    assert set(files) == {LOG_FILE, SNAP_FILE}
    files[LOG_FILE] += extra
    return files


def _start(files: dict[str, bytes]) -> tuple[SimRaftKvNode, list[object]]:
    n = SimRaftKvNode()
    return n, list(n.step(Start(NodeId("n1"), (NodeId("n2"), NodeId("n3")), 5, files, True)))


def test_a_damaged_log_is_read_twice_then_a_torn_tail_is_cut() -> None:
    torn = raft_codec.encode_record(["h", 9, "n2", 1])[:-3]
    files = _files_with(torn)
    n, effects = _start(files)
    assert n.state == "halting"
    (suspect,) = effects
    assert isinstance(suspect, Persist) and suspect.file == SUSPECT_FILE
    assert isinstance(n.step(PersistDone(suspect.op))[0], Halt)
    n1, (again,) = _start({**files, SUSPECT_FILE: suspect.data})  # seen twice: not yet
    assert n1.state == "halting" and isinstance(again, Persist) and again.data.endswith(b"#2")
    # the same bytes a third time: a torn tail for real; it is cut and the node recovers
    n2, effects2 = _start({**files, SUSPECT_FILE: again.data})
    assert n2.state == "recovering"
    cut = [e for e in effects2 if isinstance(e, Persist) and e.file == LOG_FILE]
    assert cut and cut[0].replace and cut[0].data == files[LOG_FILE][:-len(torn)]
    assert n2.dlog is not None and n2.dlog.storage.hard_state.term == 1


def test_a_corrupt_log_read_twice_refuses_to_start() -> None:
    files = _files_with(raft_codec.encode_record(["h", 1, "", 1]))
    log = bytearray(files[LOG_FILE])
    log[12] ^= 0x40  # inside the first record, with whole records after it
    files[LOG_FILE] = bytes(log)
    with pytest.raises(CorruptionError, match="corrupt"):
        _start({**files, SUSPECT_FILE: fingerprint(files) + b"#2"})


def test_an_oversized_write_is_refused_at_the_node() -> None:
    c = cluster()
    reply = c.request("n1", "write", "big", "x" * (limits.raft_entry_bytes_max + 1))
    assert reply is not None and reply.type == "fail" and "raft_entry_bytes_max" in reply.error


def test_start_rewrites_a_log_that_a_newer_snapshot_replaced() -> None:
    voters = (NodeId("n1"), NodeId("n2"), NodeId("n3"))
    log, writes = DurableLog.bootstrap(voters)
    files = {w.file: w.data for w in writes}
    rd = Ready(entries=tuple(Entry(i, 2, b"") for i in range(2, 9)),
               hard_state=HardState(2, NodeId("n1"), 5))
    files[LOG_FILE] += b"".join(w.data for w in log.ready_writes(rd))
    # the snapshot file of an installed snapshot was replaced, the log's replace failed
    snap = Snapshot(SnapshotMeta(50, 4, ConfState(voters)), b"")
    files[SNAP_FILE] = raft_codec.encode_record(raft_codec.snapshot_to_plain(snap))
    n, effects = _start(files)
    (rewrite,) = [e for e in effects if isinstance(e, Persist) and e.file == LOG_FILE]
    recs, _, problem = raft_codec.decode_records(rewrite.data, LOG_FILE)
    assert rewrite.replace and problem == "" and recs[0] == ["b", 50, 4]
    assert n.dlog is not None and n.dlog.storage.last_index() == 50

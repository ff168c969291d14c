"""Cluster operations on real `keeldb serve` processes, driven with redis-py.

(a) partitions through the fault hooks: a follower, then the leader, cut from the others;
(b) a member removed, wiped and added again: it recovers by (chunked) snapshot;
(c) a 4th node added while clients run, leadership moved to it, the old leader removed;
plus READONLY stale reads and the lease read mode. Histories are checked linearizable
(register model) and every acknowledged write to a unique key is read back from every member.
Every wait is a bounded poll; every process started is killed by PID in teardown.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ClusterDownError, MovedError, TryAgainError

from keeldb.check.linear import linearizable
from keeldb.cli.cluster_cmds import HOST, NodePlan, admin_post, plan_cluster, spawn, wait_ready
from keeldb.runtime.real.admin import heal, isolate
from tests.integration.test_cluster import Cluster, Recorder, client, worker

WAIT_S = 30.0
SNAPSHOT_ENTRIES = 40  # small, so that a re-added member must be fed a snapshot


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(nodes: int = 3, extra: tuple[str, ...] = ()) -> Cluster:
        plans = [replace(p, extra=extra) for p in plan_cluster(nodes, 0, tmp_path)]
        c = Cluster(plans)
        made.append(c)
        for p in c.plans:
            c.procs[p.id] = spawn(p, c.plans)
        for p in c.plans:
            wait_ready(p, c.procs[p.id].pid)
        return c

    yield make
    for c in made:
        for node in list(c.procs):
            c.kill(node)


class Workload:
    """Client threads recording a history against the nodes `targets` (a live list)."""

    def __init__(self, plans: list[NodePlan], workers: int = 4) -> None:
        self.rec = Recorder()
        self.stop = threading.Event()
        self.acked: set[str] = set()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=worker, args=(w, plans, self.rec, self.stop,
                                                              self.acked, self.lock),
                                         daemon=True) for w in range(workers)]

    def __enter__(self) -> Workload:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)

    def progress(self, more: int, what: str) -> None:
        """Wait (bounded) until `more` further operations succeeded."""
        start = self.rec.ok()
        deadline = time.monotonic() + WAIT_S
        while self.rec.ok() < start + more and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.rec.ok() >= start + more, f"no progress {what}: {self.rec.counts}"

    def check(self, members: list[NodePlan]) -> None:
        assert not any(t.is_alive() for t in self.threads)
        assert not self.rec.errors, self.rec.errors
        result = linearizable(self.rec.ops, "register")
        assert result.valid, result
        assert self.acked, "no unique write was acknowledged"
        assert_has(members, {k: b"1" for k in self.acked})


def assert_has(members: list[NodePlan], expected: dict[str, bytes]) -> None:
    """Every member serves every expected value (linearizable reads: caught up first)."""
    keys = sorted(expected)
    for p in members:
        r = client(p)
        deadline = time.monotonic() + WAIT_S
        try:
            while True:
                try:
                    got = r.mget(keys)
                    break
                except (TryAgainError, ClusterDownError):
                    assert time.monotonic() < deadline, f"{p.id} never answered"
                    time.sleep(0.05)
            missing = [k for k, v in zip(keys, got, strict=True) if v != expected[k]]
            assert not missing, f"{p.id} lost acknowledged writes: {missing[:10]}"
        finally:
            r.close()


def post(c: Cluster, action: str, node: str, **body: Any) -> dict[str, Any]:
    """POST /cluster/<action> to the leader's admin port; the reply must be ok."""
    deadline = time.monotonic() + WAIT_S
    while True:  # the node that says it leads (a joiner knows no leader yet)
        leaders = [p for p in c.plans if p.id in c.procs
                   and (c.status(p.id) or {}).get("role") == "leader"]
        if leaders:
            break
        assert time.monotonic() < deadline, "no leader"
        time.sleep(0.05)
    code, reply = admin_post(HOST, leaders[0].admin_port, action, {"id": node, **body})
    assert code == 200 and reply["ok"], (code, reply)
    return reply


def wait_status(c: Cluster, node: str, pred: Callable[[dict[str, Any]], bool]
                ) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        st = c.status(node)
        if st is not None and pred(st):
            return st
        assert time.monotonic() < deadline, f"{node}: {st}"
        time.sleep(0.05)


def write_until_ok(p: NodePlan, key: str, value: str) -> None:
    r = client(p)
    deadline = time.monotonic() + WAIT_S
    try:
        while True:
            try:
                assert r.set(key, value) is True
                return
            except (TryAgainError, ClusterDownError):
                assert time.monotonic() < deadline, f"{key} never written on {p.id}"
                time.sleep(0.05)
    finally:
        r.close()


def test_partitions_keep_the_majority_serving_and_history_linearizable(
        make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster()
    nodes = [p.id for p in c.plans]
    leader = c.leader(nodes)
    follower = next(n for n in nodes if n != leader)
    with Workload(c.plans) as load:
        load.progress(20, "before the faults")
        cut = ("127.0.0.1", c.plan(follower).fault_port)
        isolate(cut)  # a follower alone: the leader and the other follower go on
        try:
            load.progress(20, "with a follower partitioned")
            r = client(c.plan(follower))
            with pytest.raises((TryAgainError, ClusterDownError)):
                r.set("minority", "x")  # it refuses: no leader reachable, bounded wait
            r.close()
        finally:
            heal(cut)
        cut = ("127.0.0.1", c.plan(leader).fault_port)
        isolate(cut)  # now the leader is the minority: the others elect a new one
        try:
            new = c.leader([n for n in nodes if n != leader])
            assert new != leader
            load.progress(20, "with the old leader partitioned")
            r = client(c.plan(leader))
            with pytest.raises((TryAgainError, ClusterDownError)):
                r.set("minority", "y")
            with pytest.raises(TryAgainError):
                r.get("minority")  # no stale read from the cut-off old leader
            r.close()
        finally:
            heal(cut)
        c.leader(nodes)
        load.progress(10, "after the heal")
    load.check(c.plans)


def test_removed_wiped_member_rejoins_by_snapshot(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(extra=("--snapshot-entries", str(SNAPSHOT_ENTRIES)))
    nodes = [p.id for p in c.plans]
    leader = c.leader(nodes)
    victim = next(n for n in nodes if n != leader)
    r = client(c.plan(leader))
    pipe = r.pipeline(transaction=False)
    expected = {f"k{i}": f"v{i}".encode() for i in range(3 * SNAPSHOT_ENTRIES)}
    for k, v in expected.items():
        pipe.set(k, v)
    assert all(pipe.execute())
    r.close()
    plan = c.plan(victim)
    wait_status(c, victim, lambda s: victim in s["raft"]["clients"])  # it announced itself
    # Wiped and started as before (a founder, --peers): the cluster's book knows another
    # disk of it, so it is detected, replicates, but neither votes nor campaigns.
    c.kill(victim)
    shutil.rmtree(plan.data)
    c.start(victim)
    st = wait_status(c, victim, lambda s: s["member_state"] == "wiped")
    assert st["raft"]["refuse_votes"] is True and st["raft"]["voters"] == sorted(nodes)
    deadline = time.monotonic() + WAIT_S
    while "keeldb cluster remove" not in Path(plan.log).read_text():
        assert time.monotonic() < deadline, "no advice in the node's log"
        time.sleep(0.1)
    # The documented procedure: remove, wipe, start with --join, add.
    assert post(c, "remove", victim)["changed"] is True
    c.kill(victim)
    shutil.rmtree(plan.data)
    c.plans = [replace(p, join=True) if p.id == victim else p for p in c.plans]
    c.start(victim)
    # No membership at all until the leader adds it (wait: /status answers while it recovers)
    wait_status(c, victim, lambda s: s["member_state"] == "joining" and s["voters"] == [])
    reply = post(c, "add", victim, addr=f"{HOST}:{plan.peer_port}")
    assert reply["voter"] is True and reply["changed"] is True
    st = wait_status(c, victim, lambda s: victim in s["voters"])
    assert st["snapshots_installed"] >= 1 and st["member_state"] == "ok", st
    # Its own state, read locally (READONLY), holds everything written before the wipe.
    local = client(c.plan(victim))
    local.execute_command("READONLY")
    keys = sorted(expected)
    deadline = time.monotonic() + WAIT_S
    while local.mget(keys) != [expected[k] for k in keys]:
        assert time.monotonic() < deadline, "the re-added member never caught up"
        time.sleep(0.05)
    local.close()
    metrics = _get(c.plan(victim).admin_port, "/metrics")
    assert "keeldb_raft_snapshots_installed 1.0" in metrics or \
        "keeldb_raft_snapshots_installed 2.0" in metrics, metrics[:2000]
    assert_has(c.plans, expected)


def test_add_transfer_remove_while_clients_run(make_cluster: Callable[..., Cluster],
                                               tmp_path: Path) -> None:
    c = make_cluster()
    old = c.leader([p.id for p in c.plans])
    with Workload(list(c.plans)) as load:
        load.progress(20, "before the change")
        base = c.plans[0]
        n4 = NodePlan(**{**asdict(plan_cluster(1, 0, tmp_path / "x")[0]), "id": "n4",
                         "data": str(tmp_path / "n4"), "log": str(tmp_path / "n4.log"),
                         "join": True, "extra": base.extra})
        c.plans.append(n4)
        c.start("n4")
        assert post(c, "add", "n4", addr=f"{HOST}:{n4.peer_port}")["voter"] is True
        load.progress(20, "after adding n4")
        assert post(c, "transfer", "n4")["leader"] == "n4"
        assert post(c, "remove", old)["changed"] is True
        survivors = [p.id for p in c.plans if p.id != old]
        c.leader(survivors)  # they agree on one leader
        load.progress(20, "after removing the old leader")
    # Then the leader (n4) removes itself: it steps down once the change commits.
    assert post(c, "remove", "n4")["was_leader"] is True
    members = [p for p in c.plans if p.id not in (old, "n4")]
    c.leader([p.id for p in members])
    for p in members:
        wait_status(c, p.id, lambda s: sorted(s["voters"]) == sorted(m.id for m in members))
    load.check(members)


def test_readonly_reads_locally_and_lease_mode_serves(make_cluster: Callable[..., Cluster]
                                                      ) -> None:
    c = make_cluster(extra=("--read-mode", "lease", "--redirect"))
    nodes = [p.id for p in c.plans]
    leader = c.leader(nodes)
    follower = next(n for n in nodes if n != leader)
    write_until_ok(c.plan(leader), "s", "1")
    assert_has(c.plans, {"s": b"1"})  # lease-mode linearizable reads on every node
    st = c.status(leader)
    assert st is not None and st["read_mode"] == "lease"
    r = client(c.plan(follower))
    deadline = time.monotonic() + WAIT_S
    while True:  # --redirect: once the leader's address is replicated, writes get MOVED
        try:
            assert r.set("s", "2") is True
        except MovedError as exc:
            assert f"MOVED 0 127.0.0.1:{c.plan(leader).port}" in f"MOVED {exc}", exc
            break
        assert time.monotonic() < deadline, "no MOVED from the follower"
        time.sleep(0.1)
    assert r.get("s") in (b"1", b"2")  # reads are still served (linearizable)
    write_until_ok(c.plan(leader), "s", "1")
    assert_has(c.plans, {"s": b"1"})
    cut = ("127.0.0.1", c.plan(follower).fault_port)
    isolate(cut)
    try:
        with pytest.raises(TryAgainError):
            r.get("s")  # linearizable by default: refused when cut off
        assert r.execute_command("READONLY") in (b"OK", "OK", True)
        assert r.get("s") == b"1"  # the local (possibly stale) value, at once
        assert r.execute_command("READWRITE") in (b"OK", "OK", True)
        with pytest.raises(TryAgainError):
            r.get("s")
    finally:
        heal(cut)
        r.close()


def _get(port: int, path: str) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())

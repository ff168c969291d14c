"""A 3-node Raft cluster of real `keeldb serve --peers` processes, driven with redis-py.

Several client threads write and read a few keys on different nodes while the test SIGKILLs
the leader, waits for a new one, restarts the old leader and lets it catch up. The history is
checked linearizable (register model, per key) and every acknowledged write to a unique key is
read back from every node at the end. Every wait is a bounded poll; every process started is
killed by PID in teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, TryAgainError
from redis.retry import Retry

from keeldb.check.history import Op
from keeldb.check.linear import linearizable
from keeldb.cli.cluster_cmds import (
    NodePlan,
    admin_status,
    load_cluster,
    pid_alive,
    plan_cluster,
    spawn,
    wait_ready,
)
from keeldb.errors import NodeUnavailableError
from keeldb.runtime.real.admin import heal, isolate

WAIT_S = 30.0
KEYS = ("a", "b", "c")
WORKERS = 4
WORKER_OPS_MAX = 2_000  # per worker: the loops end on their own even if a phase hangs


class Cluster:
    """The test's handle on its processes (killed by PID in teardown)."""

    def __init__(self, plans: list[NodePlan]) -> None:
        self.plans = plans
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        plan = self.plan(node)
        self.procs[node] = spawn(plan, self.plans)
        wait_ready(plan, self.procs[node].pid)

    def plan(self, node: str) -> NodePlan:
        return next(p for p in self.plans if p.id == node)

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(timeout=10)

    def status(self, node: str) -> dict[str, Any] | None:
        try:
            return admin_status(self.plan(node), timeout_s=1.0)
        except NodeUnavailableError:
            return None

    def leader(self, among: list[str]) -> str:
        """Poll (bounded) until one of `among` is leader and the others agree on it."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            st = {n: self.status(n) for n in among}
            leaders = {n for n, s in st.items() if s and s.get("role") == "leader"}
            seen = {s.get("leader") for s in st.values() if s}
            if len(leaders) == 1 and seen == leaders:
                return leaders.pop()
            time.sleep(0.05)
        raise AssertionError(f"no agreed leader among {among}: {st}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(plan_cluster(3, 0, tmp_path))
    try:
        for p in c.plans:
            c.procs[p.id] = spawn(p, c.plans)
        for p in c.plans:
            wait_ready(p, c.procs[p.id].pid)
        yield c
    finally:
        for node in list(c.procs):
            c.kill(node)


class Recorder:
    """A thread-safe history of `Op`s (times are monotonic ns, for the timeline only)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "fail": 0, "info": 0}
        self.errors: list[BaseException] = []  # a worker that crashed fails the test

    def add(self, process: Any, type_: str, f: str, key: str, value: Any) -> None:
        with self.lock:
            self.ops.append(Op(len(self.ops), process, type_, f, key, value,
                               time.monotonic_ns()))
            if type_ != "invoke":
                self.counts[type_] += 1

    def ok(self) -> int:
        with self.lock:
            return self.counts["ok"]


def client(plan: NodePlan) -> redis.Redis:
    # No silent retries: redis-py (6+) re-sends a command after a connection error by
    # default, so a write whose first attempt committed could come back as TRYAGAIN from the
    # retry, and the history would call it failed.
    return redis.Redis(host="127.0.0.1", port=plan.port, socket_timeout=2.0,
                       socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))


def worker(w: int, plans: list[NodePlan], rec: Recorder, stop: threading.Event,
           acked: set[str], acked_lock: threading.Lock) -> None:
    try:
        _work(w, plans, rec, stop, acked, acked_lock)
    except BaseException as exc:
        with rec.lock:
            rec.errors.append(exc)
        raise


def _work(w: int, plans: list[NodePlan], rec: Recorder, stop: threading.Event,
          acked: set[str], acked_lock: threading.Lock) -> None:
    target, gen = w % len(plans), 0
    r = client(plans[target])
    for i in range(WORKER_OPS_MAX):
        if stop.is_set():
            break
        process = f"{w}.{gen}"
        key = KEYS[(i * 7 + w) % len(KEYS)]
        if i % 5 == 4:  # a unique key: checked for loss at the end
            uniq = f"u-{w}-{i}"
            try:
                if r.set(uniq, "1"):
                    with acked_lock:
                        acked.add(uniq)
            except redis.RedisError:
                pass
            continue
        f, value = ("write", f"{w}-{i}") if i % 2 else ("read", None)
        rec.add(process, "invoke", f, key, value)
        try:
            if value is not None:
                assert r.set(key, value) is True
                rec.add(process, "ok", f, key, value)
            else:
                got = r.get(key)
                rec.add(process, "ok", f, key, got.decode() if isinstance(got, bytes) else got)
        except redis.ResponseError as exc:
            # TRYAGAIN: nothing happened; CLUSTERDOWN: a write's outcome is unknown.
            assert isinstance(exc, TryAgainError | ClusterDownError), repr(exc)
            definite = isinstance(exc, TryAgainError) or f == "read"
            rec.add(process, "fail" if definite else "info", f, key, value)
            if not definite:
                gen += 1
            time.sleep(0.02)
        except (redis.ConnectionError, redis.TimeoutError):
            rec.add(process, "info", f, key, value)
            gen += 1  # an open op: this process is done, continue as a new one
            target = (target + 1) % len(plans)  # the node may be dead: try the next
            r.close()
            r = client(plans[target])
            time.sleep(0.05)
    r.close()


def wait_caught_up(c: Cluster, node: str, leader: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        st, lst = c.status(node), c.status(leader)
        if st and lst and st.get("raft_applied") is not None \
                and st["raft_applied"] >= lst["commit_index"] - 5:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node} did not catch up with {leader}")


def _mget_retrying(r: redis.Redis, keys: list[str], attempts: int = 5) -> list[bytes | None]:
    """MGET; a TRYAGAIN (a read not confirmed in time on a starved machine: nothing happened)
    is retried a bounded number of times, as any client would."""
    for attempt in range(attempts):
        try:
            return r.mget(keys)  # type: ignore[no-any-return]
        except TryAgainError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def test_cluster_survives_leader_kill_and_stays_linearizable(cluster: Cluster) -> None:
    c = cluster
    nodes = [p.id for p in c.plans]
    leader = c.leader(nodes)
    rec, stop = Recorder(), threading.Event()
    acked: set[str] = set()
    acked_lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(w, c.plans, rec, stop, acked, acked_lock),
                                daemon=True)
               for w in range(WORKERS)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        before_kill = rec.ok()
        c.kill(leader)  # SIGKILL
        survivors = [n for n in nodes if n != leader]
        new_leader = c.leader(survivors)
        assert new_leader != leader
        ok_at_election = rec.ok()
        deadline = time.monotonic() + WAIT_S
        while rec.ok() < ok_at_election + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rec.ok() >= ok_at_election + 20, f"the survivors do not serve: {rec.counts}"
        c.start(leader)  # restart: it recovers its disk and catches up
        wait_caught_up(c, leader, c.leader(nodes))
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert not rec.errors, rec.errors
    assert before_kill > 0, rec.counts
    result = linearizable(rec.ops, "register")
    assert result.valid, result
    assert acked, "no unique write was acknowledged"
    for p in c.plans:  # every node, the restarted one included, has every acked write
        r = client(p)
        try:
            keys = sorted(acked)
            got = _mget_retrying(r, keys)
            missing = [k for k, v in zip(keys, got, strict=True) if v != b"1"]
            assert not missing, f"{p.id} lost acknowledged writes: {missing[:10]}"
        finally:
            r.close()


def test_multi_exec_is_one_entry_and_writes_forward(cluster: Cluster) -> None:
    c = cluster
    nodes = [p.id for p in c.plans]
    leader = c.leader(nodes)
    follower = next(n for n in nodes if n != leader)
    r = client(c.plan(follower))
    try:
        before = c.status(leader)
        assert before is not None
        pipe = r.pipeline(transaction=True)
        pipe.set("x", "1")
        pipe.incr("x")
        pipe.incrby("x", 5)
        assert pipe.execute() == [True, 2, 7]
        after = c.status(leader)
        assert after is not None
        # one entry for the transaction (a sweep may add one more)
        assert 1 <= after["commit_index"] - before["commit_index"] <= 2
        assert r.info("server")["keeldb_role"] == "follower"
        for p in c.plans:
            assert client(p).get("x") == b"7"
    finally:
        r.close()


def test_pipelined_requests_of_one_connection_take_effect_in_order(cluster: Cluster) -> None:
    """A read pipelined behind a write on one connection sees that write, on the leader and
    on a follower that forwards (the write waits for the end of the loop turn to be
    proposed; the read must not be answered from a state before it)."""
    c = cluster
    nodes = [p.id for p in c.plans]
    leader = c.leader(nodes)
    follower = next(n for n in nodes if n != leader)
    for node in (leader, follower):
        r = client(c.plan(node))
        try:
            for round_ in range(20):
                key = f"pipe-{node}-{round_}"
                pipe = r.pipeline(transaction=False)
                pipe.set(key, "v1")
                pipe.get(key)
                pipe.incr(f"{key}-n")
                pipe.get(f"{key}-n")
                pipe.append(key, "x")
                pipe.get(key)
                pipe.delete(key)
                pipe.exists(key)
                assert pipe.execute() == [True, b"v1", 1, b"1", 3, b"v1x", 1, 0], node
        finally:
            r.close()


def test_partitioned_leader_steps_down_and_catches_up_after_heal(cluster: Cluster) -> None:
    c = cluster
    nodes = [p.id for p in c.plans]
    old = c.leader(nodes)
    fault_addr = ("127.0.0.1", c.plan(old).fault_port)
    faults = isolate(fault_addr)  # through the serve process's fault port
    assert sorted(faults["drop_to"]) == sorted(n for n in nodes if n != old)
    try:
        new = c.leader([n for n in nodes if n != old])
        r = client(c.plan(new))
        assert r.set("p", "after") is True
        r.close()
        cut = client(c.plan(old))
        with pytest.raises((TryAgainError, ClusterDownError)):
            cut.set("p", "lost?")  # no quorum: a bounded wait, then a retryable error
        with pytest.raises(TryAgainError):
            cut.get("p")  # ReadIndex cannot be confirmed: no stale answer
        cut.close()
    finally:
        heal(fault_addr)
    c.leader(nodes)  # all three agree on one leader again
    deadline = time.monotonic() + WAIT_S
    got = None
    back = client(c.plan(old))
    try:
        while time.monotonic() < deadline:
            try:
                got = back.get("p")
                break
            except (TryAgainError, ClusterDownError):
                time.sleep(0.05)
    finally:
        back.close()
    assert got == b"after"  # caught up; its isolated write never committed


def test_cluster_cli_start_status_stop(tmp_path: Path) -> None:
    d = tmp_path / "cl"
    cmd = [sys.executable, "-m", "keeldb", "cluster"]
    pids: list[int] = []
    try:
        out = subprocess.run([*cmd, "start", "--nodes", "3", "--base-port", "0", "--dir",
                              str(d)], capture_output=True, text=True, timeout=90)
        plans = load_cluster(d) if (d / "cluster.json").exists() else []
        pids = [p.pid for p in plans]
        assert out.returncode == 0, out.stderr
        assert len(plans) == 3 and all(pid_alive(p.pid) for p in plans)
        for p in plans:
            assert str(p.port) in out.stdout and str(p.pid) in out.stdout
        r = client(plans[1])
        deadline = time.monotonic() + WAIT_S
        while True:  # the first write may meet the first election
            try:
                assert r.set("k", "v")
                break
            except redis.ResponseError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        r.close()
        st = subprocess.run([*cmd, "status", "--dir", str(d), "--json"], capture_output=True,
                            text=True, timeout=30)
        assert st.returncode == 0, st.stderr
        rows = json.loads(st.stdout)
        assert sorted(row["role"] for row in rows) == ["follower", "follower", "leader"]
        assert all(row["up"] and row["commit_index"] >= 1 for row in rows)
        stop = subprocess.run([*cmd, "stop", "--dir", str(d), "--timeout", "10"],
                              capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout.count("stopped") + stop.stdout.count("killed") == 3
        assert not any(pid_alive(p.pid) for p in plans)
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)

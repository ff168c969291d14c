"""Transactions on a real 3-node Raft cluster (one cluster for the module), judged by
Hermitage and by the anomaly checker.

- Hermitage: a sample of cases.yaml at the three levels by default, every case when slow.
- Concurrent client threads run list-append / rw-register transactions through
  `keeldb.connect` while the test SIGKILLs the leader and restarts it; the history (invoke,
  then ok / fail / info for an unknown commit) must show no anomaly the level forbids.
- A seeded, stepped write-skew workload (one thread moves several open transactions, each on
  its own connection) shows G2-item at `snapshot` and none at `serializable`.
- A bank workload keeps its total on every read of all balances at `serializable`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keeldb
from keeldb.check import transactions
from keeldb.cli.cluster_cmds import plan_cluster, spawn, wait_ready
from keeldb.client import Client, ClientTransaction
from keeldb.errors import CommitUnknown, KeeldbError, TransactionConflict, TryAgainError
from keeldb.txn import LEVELS, SERIALIZABLE, SNAPSHOT
from keeldb.txn.isolation import CHECKER_NAMES
from tests.conformance.test_hermitage import load
from tests.integration.test_cluster import Cluster
from tests.integration.test_txn_anomalies import (
    Generator,
    MicroOp,
    Recorder,
    _key,
    run_micro,
    write_skew_plans,
)
from tests.integration.test_txn_server import (
    SAMPLE_3NODE,
    SERVER_OCCURS,
    cluster_addresses,
    judge,
    warm,
)

WORKERS = 4
TXNS_EACH = 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(plan_cluster(3, 0, tmp_path_factory.mktemp("txn-cluster")))
    try:
        for p in c.plans:
            c.procs[p.id] = spawn(p, c.plans)
        for p in c.plans:
            wait_ready(p, c.procs[p.id].pid)
        c.leader([p.id for p in c.plans])
        warm(cluster_addresses(c))
        yield c
    finally:
        for node in list(c.procs):
            c.kill(node)


addresses = cluster_addresses


@pytest.fixture(scope="module")
def cases(testdata_dir: Path) -> dict[str, Any]:
    return load(testdata_dir)


@pytest.mark.parametrize("level", LEVELS)
def test_hermitage_sample_on_three_nodes(cases: dict[str, Any], cluster: Cluster,
                                         level: str) -> None:
    for case in cases["cases"]:
        if case["id"] in SAMPLE_3NODE:
            verdict = judge(cases, case, level, addresses(cluster))
            assert verdict == ("occurs" if case["id"] in SERVER_OCCURS[level] else "prevented")


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
def test_hermitage_on_three_nodes(cases: dict[str, Any], cluster: Cluster, level: str) -> None:
    occurs = {case["id"] for case in cases["cases"]
              if judge(cases, case, level, addresses(cluster)) == "occurs"}
    assert occurs == SERVER_OCCURS[level]


def _planned(plan: list[MicroOp]) -> list[MicroOp]:
    return [[f, k, None if f == "r" else v] for f, k, v in plan]


def worker(w: int, addrs: list[str], level: str, workload: str, rec: Recorder,
           errors: list[BaseException], progress: list[int], key_base: int) -> None:
    rng = random.Random(f"{w}:{level}:{workload}:cluster")
    gen = Generator(workload, keys=4, rng=rng)
    target = w % len(addrs)
    client = keeldb.connect(addrs[target], timeout_s=3)
    process = w * 1000
    try:
        for _ in range(TXNS_EACH):
            plan = [[f, k, (w, v) if f != "r" else v] for f, k, v in gen.txn()]
            plan = [[f, key_base + k, v[0] * 100_000 + v[1] if isinstance(v, tuple) else v]
                    for f, k, v in plan]  # values unique over the workers, keys per test
            rec.add(process, "invoke", _planned(plan))
            done: list[MicroOp] = []
            try:
                with client.transaction(level) as tx:
                    done = [run_micro(tx, mop) for mop in plan]  # type: ignore[arg-type]
                rec.add(process, "ok", done)
            except CommitUnknown:
                rec.add(process, "info", _planned(plan))
                process += 1  # an open op: continue as a new process
            except KeeldbError as exc:
                assert exc.retryable or isinstance(exc, TransactionConflict), repr(exc)
                rec.add(process, "fail", _planned(plan))
                if not isinstance(exc, TransactionConflict):
                    client.close()  # the node may be down: try the next one
                    target = (target + 1) % len(addrs)
                    client = keeldb.connect(addrs[target], timeout_s=3)
                    time.sleep(0.05)
            progress[w] += 1
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)
    finally:
        client.close()


def stepped(addrs: list[str], level: str, plans: Any, rng: random.Random, clients: int,
            txns_each: int) -> Recorder:
    """One thread moves `clients` open transactions (one connection each) in a seeded order."""
    rec = Recorder()
    warm(addrs)  # after a kill and restart, wait until every node serves reads again
    conns = [keeldb.connect(addrs[i % len(addrs)], timeout_s=10) for i in range(clients)]
    state: list[dict[str, Any]] = [{"tx": None, "left": txns_each, "proc": i}
                                   for i in range(clients)]
    try:
        while True:
            live = [i for i, s in enumerate(state) if s["tx"] is not None or s["left"] > 0]
            if not live:
                return rec
            i = rng.choice(live)
            s = state[i]
            if s["tx"] is None:
                s.update(plan=plans(), done=[], left=s["left"] - 1,
                         tx=conns[i].transaction(level))
                s["tx"].begin()
                rec.add(s["proc"], "invoke", _planned(s["plan"]))
                continue
            tx: ClientTransaction = s["tx"]
            try:
                if len(s["done"]) < len(s["plan"]):
                    s["done"].append(run_micro(tx, s["plan"][len(s["done"])]))  # type: ignore[arg-type]
                    continue
                tx.commit()
                rec.add(s["proc"], "ok", s["done"])
            except (TransactionConflict, TryAgainError):  # nothing of it was applied
                tx.rollback()
                rec.add(s["proc"], "fail", _planned(s["plan"]))
            except CommitUnknown:
                rec.add(s["proc"], "info", _planned(s["plan"]))
                s["proc"] += clients  # an open op: continue as a new process
            s["tx"] = None
    finally:
        for c in conns:
            c.close()


def test_write_skew_is_g2_item_at_snapshot_and_absent_at_serializable(cluster: Cluster) -> None:
    addrs = addresses(cluster)
    found = {}
    for n, level in enumerate((SNAPSHOT, SERIALIZABLE)):
        rng = random.Random("write-skew-cluster")
        base = write_skew_plans(rng, pairs=2)

        def plans(base: Any = base, n: int = n) -> list[MicroOp]:  # fresh keys per level
            return [[f, k + 10 * n, v] for f, k, v in base()]

        rec = stepped(addrs, level, plans, rng, clients=4, txns_each=20)
        result = transactions(rec.ops, isolation="serializable", workload="list-append")
        found[level] = set(result.details["found_types"])
        if level == SERIALIZABLE:
            assert result.valid, result.explanation
        else:
            si = transactions(rec.ops, isolation="snapshot-isolation", workload="list-append")
            assert si.valid, si.explanation
    assert "G2-item" in found[SNAPSHOT] and "G2-item" not in found[SERIALIZABLE]


@pytest.mark.parametrize(("level", "workload", "key_base"), [
    (SERIALIZABLE, "list-append", 1000),
    pytest.param(SNAPSHOT, "rw-register", 2000, marks=pytest.mark.slow)])
def test_no_forbidden_anomaly_while_the_leader_is_killed(cluster: Cluster, level: str,
                                                         workload: str, key_base: int) -> None:
    addrs = addresses(cluster)
    rec, errors, progress = Recorder(), [], [0] * WORKERS
    threads = [threading.Thread(target=worker, args=(w, addrs, level, workload, rec, errors,
                                                     progress, key_base))
               for w in range(WORKERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(progress) < WORKERS * TXNS_EACH // 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    leader = cluster.leader([p.id for p in cluster.plans])
    cluster.kill(leader)  # SIGKILL
    others = [p.id for p in cluster.plans if p.id != leader]
    cluster.leader(others)
    cluster.start(leader)
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors
    kinds = [op.type for op in rec.ops]
    assert kinds.count("ok") > WORKERS * TXNS_EACH // 4, kinds.count("ok")
    result = transactions(rec.ops, isolation=CHECKER_NAMES[level], workload=workload)
    assert result.valid, result.explanation


def test_bank_total_holds_at_serializable_while_the_leader_is_killed(cluster: Cluster) -> None:
    addrs = addresses(cluster)
    accounts = [f"acct{a}".encode() for a in range(4)]
    setup = keeldb.connect(addrs[0], timeout_s=10)
    retried_setup = keeldb.transactional(setup, isolation=SERIALIZABLE, retries_max=50)
    retried_setup(_open_accounts)(accounts)
    setup.close()
    totals: list[int] = []
    errors: list[BaseException] = []
    progress = [0, 0, 0]

    def work(w: int) -> None:
        target = w % len(addrs)
        client: Client = keeldb.connect(addrs[target], timeout_s=3)
        rng = random.Random(f"{w}:bank-cluster")
        try:
            for _ in range(15):
                retried = keeldb.transactional(client, isolation=SERIALIZABLE, retries_max=5,
                                               backoff_ms_max=100)
                try:
                    retried(_move)(*rng.sample(accounts, 2), rng.randint(1, 20))
                    totals.append(retried(_total)())
                except CommitUnknown:
                    pass  # a transfer is atomic either way: the total must still hold
                except KeeldbError as exc:
                    assert exc.retryable, repr(exc)
                    client.close()  # retries ran out on this node: it may be down
                    target = (target + 1) % len(addrs)
                    client = keeldb.connect(addrs[target], timeout_s=3)
                progress[w] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(progress) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    leader = cluster.leader([p.id for p in cluster.plans])
    cluster.kill(leader)  # SIGKILL
    cluster.leader([p.id for p in cluster.plans if p.id != leader])
    cluster.start(leader)
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors
    final = keeldb.connect(addrs[0], timeout_s=10)
    totals.append(keeldb.transactional(final, isolation=SERIALIZABLE, retries_max=50)(_total)())
    final.close()
    assert len(totals) > 20 and set(totals) == {400}, sorted(set(totals))


def _open_accounts(tx: ClientTransaction, accounts: list[bytes]) -> None:
    for a in accounts:
        tx.put(a, b"100")


def _move(tx: ClientTransaction, src: bytes, dst: bytes, amount: int) -> None:
    a, b = int(tx.get(src) or b"0"), int(tx.get(dst) or b"0")
    tx.put(src, str(a - amount).encode())
    tx.put(dst, str(b + amount).encode())


def _total(tx: ClientTransaction) -> int:
    return sum(int(v) for _, v in tx.scan(b"acct", b"acct~"))


_ = _key  # the embedded workload's key naming is reused by run_micro

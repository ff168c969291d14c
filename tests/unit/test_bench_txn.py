"""`keeldb bench txn`: the workload generator, the abort accounting, tiny real runs."""

from __future__ import annotations

import json
import os
import random
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from keeldb.bench import txn as bench
from keeldb.bench import txn_pg
from keeldb.errors import (
    SerializationConflict,
    TransactionConflict,
    TransactionTooOldError,
    UsageError,
)

# --- workload --------------------------------------------------------------------------------


@pytest.mark.parametrize("contention, space", [("low", 1_000), ("high", 16)])
def test_txn_has_four_distinct_keys_from_its_key_space(contention: str, space: int) -> None:
    wl = bench.Workload(contention, keys=1_000, hot_keys=16)
    assert wl.key_space == space
    allowed = {bench.key_of(i) for i in range(space)}
    rng = random.Random(1)
    seen: set[bytes] = set()
    for _ in range(500):
        ops = bench.make_txn(rng, wl)
        keys = [k for k, _ in ops]
        assert len(ops) == bench.OPS_PER_TXN == len(set(keys))
        assert set(keys) <= allowed
        assert all(v is None or len(v) == bench.VALUE_BYTES for _, v in ops)
        seen.update(keys)
    if contention == "high":
        assert seen == allowed  # the whole hot set is used


def test_sorted_key_order_keeps_the_keys_and_sorts_them() -> None:
    plain, ordered = bench.Workload("high"), bench.Workload("high", key_order="sorted")
    for i in range(50):
        a = bench.make_txn(random.Random(i), plain)
        b = bench.make_txn(random.Random(i), ordered)
        assert [k for k, _ in b] == sorted(k for k, _ in a)
    with pytest.raises(UsageError, match="key-order"):
        bench.Workload("low", key_order="reverse")


def test_half_of_the_operations_are_reads() -> None:
    rng = random.Random(7)
    wl = bench.Workload("low", keys=10_000)
    ops = [op for _ in range(2_000) for op in bench.make_txn(rng, wl)]
    reads = sum(v is None for _, v in ops) / len(ops)
    assert 0.47 < reads < 0.53


def test_every_system_and_level_gets_the_same_transactions_per_client() -> None:
    wl = bench.Workload("high")
    a = [bench.make_txn(bench.client_rng(5, "high", 3), wl) for _ in range(1)]
    b = [bench.make_txn(bench.client_rng(5, "high", 3), wl) for _ in range(1)]
    other = bench.make_txn(bench.client_rng(5, "high", 4), wl)
    assert a == b and a[0] != other


def test_key_encoding_and_bad_workloads() -> None:
    assert bench.key_of(42) == b"user0000000042"
    with pytest.raises(UsageError, match="hot-keys 20"):
        bench.Workload("high", keys=10, hot_keys=20)
    with pytest.raises(UsageError, match="--keys 3"):
        bench.Workload("low", keys=3)
    with pytest.raises(UsageError, match="contention"):
        bench.Workload("medium")
    with pytest.raises(UsageError, match="exactly one"):
        bench.RunConfig(seconds=1.0, txns=10)
    with pytest.raises(UsageError, match="unknown or no system"):
        bench.RunConfig(systems=("mysql",))


# --- abort accounting ------------------------------------------------------------------------


class ScriptedClient:
    """Aborts the attempts named in `script` ('ww', ...), commits the others."""

    def __init__(self, script: Sequence[str | None]) -> None:
        self.script = list(script)
        self.attempts = 0

    def run_txn(self, level: str, ops: Sequence[bench.Op]) -> float:
        kind = self.script[self.attempts] if self.attempts < len(self.script) else None
        self.attempts += 1
        if kind is not None:
            raise bench.Aborted(kind)
        return 0.001

    def close(self) -> None:
        pass


def test_aborts_are_counted_and_retried_until_the_commit() -> None:
    client = ScriptedClient(["write-write", "read-write", "write-write", None])
    stats = bench.ClientStats()
    waits: list[float] = []
    ok = bench.run_logical(client, "serializable", (), stats, random.Random(0),
                           sleep=waits.append)
    assert ok and client.attempts == 4
    assert (stats.commits, stats.aborts, stats.gave_up) == (1, 3, 0)
    assert stats.abort_kinds == Counter({"write-write": 2, "read-write": 1})
    assert len(waits) == 3 and all(0 <= w <= bench.BACKOFF_MS_MAX / 1000 for w in waits)
    assert stats.commit_latencies_s == [0.001] and len(stats.latencies_s) == 1


def test_a_transaction_is_given_up_after_the_retry_bound() -> None:
    client = ScriptedClient(["deadlock"] * (bench.RETRIES_MAX + 5))
    stats = bench.ClientStats()
    assert not bench.run_logical(client, "snapshot", (), stats, random.Random(0),
                                 sleep=lambda s: None)
    assert client.attempts == bench.RETRIES_MAX
    assert (stats.commits, stats.aborts, stats.gave_up) == (0, bench.RETRIES_MAX, 1)
    assert stats.latencies_s == []


def test_the_end_of_a_point_abandons_a_retrying_transaction() -> None:
    stats = bench.ClientStats()
    assert not bench.run_logical(ScriptedClient(["ww", None]), "snapshot", (), stats,
                                 random.Random(0), stop=lambda: True, sleep=lambda s: None)
    assert (stats.commits, stats.aborts, stats.abandoned, stats.gave_up) == (0, 1, 1, 0)


def test_other_errors_are_not_aborts() -> None:
    class Broken(ScriptedClient):
        def run_txn(self, level: str, ops: Sequence[bench.Op]) -> float:
            raise OSError("disk gone")

    stats = bench.ClientStats()
    with pytest.raises(OSError):
        bench.run_logical(Broken([]), "snapshot", (), stats, random.Random(0))
    assert stats.aborts == 0 and stats.commits == 0


def test_point_summary() -> None:
    a, b = bench.ClientStats(), bench.ClientStats()
    for i in range(1, 101):
        (a if i % 2 else b).committed(i / 1000, i / 10_000)
    a.aborted("write-write")
    b.aborted("read-write")
    b.aborted("read-write")
    s = bench.summarize_point([a, b], elapsed_s=2.0)
    assert (s["commits"], s["aborts"], s["attempts"]) == (100, 3, 103)
    assert s["abort_rate"] == pytest.approx(3 / 103)
    assert s["txn_per_sec"] == 50.0
    assert s["abort_kinds"] == {"read-write": 2, "write-write": 1}
    assert s["latency_ms_p50"] == pytest.approx(50.0)
    assert s["latency_ms_p99"] == pytest.approx(99.0)
    assert s["commit_ms_p99"] == pytest.approx(9.9)
    empty = bench.summarize_point([bench.ClientStats()], 1.0)
    assert empty["abort_rate"] is None and empty["latency_ms_p50"] is None


def test_error_classification() -> None:
    assert bench.keeldb_abort_kind(SerializationConflict("x", kind="read-write")) == "read-write"
    assert bench.keeldb_abort_kind(TransactionTooOldError("x")) == "TransactionTooOldError"
    assert bench.keeldb_abort_kind(UsageError("x")) is None
    plain = TransactionConflict("TXNCONFLICT key changed")  # the cluster client's error
    assert bench.keeldb_abort_kind(plain) == "conflict@commit"
    assert bench.keeldb_abort_kind(plain, at_commit=False) == "conflict@step"

    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    assert txn_pg.pg_abort_kind(PgError("40001")) == "serialization_failure"
    assert txn_pg.pg_abort_kind(PgError("40P01")) == "deadlock"
    assert txn_pg.pg_abort_kind(PgError("23505")) is None
    assert txn_pg.pg_abort_kind(ValueError()) is None


def test_keeldb_client_turns_a_lost_commit_into_an_abort_and_rolls_back() -> None:
    class Tx:
        rolled_back = False

        def get(self, key: bytes) -> None:
            return None

        def put(self, key: bytes, value: bytes) -> None:
            pass

        def commit(self) -> None:
            raise SerializationConflict("lost", key=b"k", kind="read-write")

        def rollback(self) -> None:
            Tx.rolled_back = True

    class Db:
        def transaction(self, isolation: str) -> Tx:
            assert isolation == "serializable"
            return Tx()

    client = bench._KeeldbClient(Db(), owned=False)
    with pytest.raises(bench.Aborted) as err:
        client.run_txn("serializable", [(b"a", None), (b"b", b"v")])
    assert err.value.kind == "read-write" and Tx.rolled_back


# --- real runs -------------------------------------------------------------------------------


def _embedded(base: Path) -> bench.System:
    return bench.EmbeddedSystem(base, sync="never")


def test_tiny_embedded_run(tmp_path: Path) -> None:
    config = bench.RunConfig(systems=(bench.EMBEDDED,), clients=4, seconds=None, txns=150,
                             keys=200, hot_keys=8, seed=3, dir=tmp_path)
    result = bench.run(config, {bench.EMBEDDED: _embedded})
    assert result["schema"] == bench.SCHEMA and result["notes"] == []
    points = result["results"]
    assert [(p["contention"], p["level"]) for p in points] == [
        (c, lv) for c in bench.CONTENTIONS for lv in bench.LEVELS]
    for p in points:
        assert p["error"] is None and p["abandoned"] == 0
        assert p["commits"] + p["gave_up"] == 150
        assert p["attempts"] == p["commits"] + p["aborts"] == p["latency_samples"] + p["aborts"]
        assert sum(p["abort_kinds"].values()) == p["aborts"]
        assert set(p["abort_kinds"]) <= {"write-write", "read-write"}
        if p["level"] == "read_committed":
            assert p["aborts"] == 0  # keeldb's read committed never validates
        if p["level"] == "snapshot":
            assert "read-write" not in p["abort_kinds"]  # only first-committer-wins
    assert os.listdir(tmp_path) == []  # the store was removed


def test_one_client_never_aborts(tmp_path: Path) -> None:
    config = bench.RunConfig(systems=(bench.EMBEDDED,), clients=1, seconds=None, txns=100,
                             keys=50, hot_keys=4, contentions=("high",), dir=tmp_path)
    result = bench.run(config, {bench.EMBEDDED: _embedded})
    assert [p["aborts"] for p in result["results"]] == [0, 0, 0]
    assert [p["commits"] for p in result["results"]] == [100, 100, 100]


def test_an_unavailable_system_is_skipped_with_a_note(tmp_path: Path) -> None:
    def missing(base: Path) -> bench.System:
        raise txn_pg.Unavailable("psycopg (v3) is not installed")

    config = bench.RunConfig(systems=(bench.EMBEDDED, bench.POSTGRES), clients=2,
                             seconds=None, txns=20, keys=20, hot_keys=4,
                             levels=("snapshot",), contentions=("low",), dir=tmp_path)
    result = bench.run(config, {bench.EMBEDDED: _embedded, bench.POSTGRES: missing})
    assert result["config"]["systems_run"] == [bench.EMBEDDED]
    assert result["notes"] == ["postgresql skipped: psycopg (v3) is not installed"]
    assert [p["system"] for p in result["results"]] == [bench.EMBEDDED]


def test_cli_writes_the_json_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from keeldb.cli.main import main
    out = tmp_path / "txn.json"
    rc = main(["bench", "txn", "--systems", "keeldb-embedded", "--txns", "40", "--keys", "100",
               "--clients", "2", "--levels", "serializable", "--contention", "high",
               "--sync", "never", "--dir", str(tmp_path / "db"), "--out", str(out), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    (point,) = printed["results"]
    assert (point["system"], point["level"], point["contention"]) == (
        "keeldb-embedded", "serializable", "high")
    assert point["commits"] + point["gave_up"] == 40
    assert main(["bench", "txn", "--seconds", "1", "--txns", "5"]) == 2


def test_find_bindir_honours_the_environment(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("initdb", "postgres"):
        p = tmp_path / name
        p.write_text("#!/bin/sh\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("KEELDB_PG_BINDIR", str(tmp_path))
    assert txn_pg.find_bindir() == tmp_path


def _postgres_or_skip() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    if txn_pg.find_bindir() is None:
        pytest.skip("PostgreSQL's initdb/postgres are not installed")


@pytest.mark.slow
def test_postgres_run() -> None:
    _postgres_or_skip()
    made: list[Any] = []

    def pg(base: Path) -> bench.System:
        made.append(bench.PostgresSystem(base))
        return made[-1]  # type: ignore[no-any-return]

    # No --dir: the run's own temporary directory is one the server's user (when this runs
    # as root) can reach, unlike pytest's private tmp_path.
    config = bench.RunConfig(systems=(bench.POSTGRES,), clients=4, seconds=None, txns=100,
                             keys=200, hot_keys=8)
    result = bench.run(config, {bench.POSTGRES: pg})
    assert result["notes"] == []
    st = result["settings"][bench.POSTGRES]
    assert (st["fsync"], st["synchronous_commit"]) == ("on", "on")
    for p in result["results"]:
        assert p["error"] is None and p["commits"] + p["gave_up"] == 100
        assert set(p["abort_kinds"]) <= {"serialization_failure", "deadlock"}
    assert made[0].proc is None and not made[0].root.exists()  # stopped and removed


@pytest.mark.slow
def test_three_node_cluster_run() -> None:
    from keeldb.cli.bench_txn_cmds import FACTORIES
    from keeldb.cli.cluster_cmds import pid_alive

    made: list[bench.System] = []

    def cluster(base: Path) -> bench.System:
        made.append(FACTORIES[bench.CLUSTER](base))
        return made[-1]

    config = bench.RunConfig(systems=(bench.CLUSTER,), clients=3, seconds=None, txns=30,
                             keys=100, hot_keys=6)
    result = bench.run(config, {bench.CLUSTER: cluster})
    assert result["notes"] == []
    for p in result["results"]:
        assert p["error"] is None and p["commits"] + p["gave_up"] == 30
        assert set(p["abort_kinds"]) <= {"conflict@step", "conflict@commit"}
        if p["level"] == "read_committed":
            assert p["aborts"] == 0
    pids = result["settings"][bench.CLUSTER]["pids"]
    assert len(pids) == 3 and not any(pid_alive(pid) for pid in pids)  # stopped by PID

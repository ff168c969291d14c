"""`keeldb bench txn`: transaction throughput and abort rates, keeldb vs PostgreSQL.

    keeldb bench txn                                       # every system, level and contention
    keeldb bench txn --systems keeldb-embedded,postgresql --seconds 5 --clients 8
    keeldb bench txn --levels serializable --contention high --txns 2000 --json

The workload, the accounting and the systems are in `keeldb.bench.txn` (docs/benchmarks.md).
This module adds what needs the CLI layer: the local 3-node cluster (started with the helpers
of `keeldb cluster start`, stopped by PID at the end) and the tables.
"""

from __future__ import annotations

import importlib
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from keeldb.bench import txn as bench
from keeldb.bench.txn_pg import Unavailable
from keeldb.cli.app import bench_app, console, err_console, show_bench_result, split_choices
from keeldb.cli.cluster_cmds import HOST, NodePlan, admin_status, plan_cluster, spawn, stop_pid
from keeldb.cli.cluster_cmds import wait_ready as wait_node_ready
from keeldb.errors import BenchmarkFailedError, KeeldbError, UsageError

CLUSTER_NODES = 3
LEADER_TIMEOUT_S = 30.0
POLL_S = 0.1


# --- the 3-node cluster ---------------------------------------------------------------------

def _wait_leader(plans: list[NodePlan]) -> NodePlan:
    """The node that says it leads (bounded wait)."""
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    while time.monotonic() < deadline:
        for plan in plans:
            try:
                if admin_status(plan, timeout_s=1.0).get("role") == "leader":
                    return plan
            except KeeldbError:
                continue
        time.sleep(POLL_S)
    raise Unavailable(f"no leader elected in {LEADER_TIMEOUT_S:.0f} s; see the node logs")


def cluster_factory(base: Path) -> bench.System:
    """Start a local 3-node cluster (free ports, data under `base`) and wrap it."""
    # Looked up at run time: the client's transactions arrive in a later build than this.
    connect = getattr(importlib.import_module("keeldb.client"), "connect", None)
    if connect is None:
        raise Unavailable("keeldb.client.connect (the cluster transaction client) is not in "
                          "this build")
    directory = Path(tempfile.mkdtemp(prefix="keeldb-bench-cluster-", dir=base))
    plans = plan_cluster(CLUSTER_NODES, 0, directory)
    started: list[NodePlan] = []

    def stop() -> None:
        for plan in started:
            stop_pid(plan.pid, plan.id)
        shutil.rmtree(directory, ignore_errors=True)

    try:
        for plan in plans:
            proc = spawn(plan, plans)
            started.append(replace(plan, pid=proc.pid))
        for plan in started:
            wait_node_ready(plan, plan.pid)
        leader = _wait_leader(started)
        address = f"{HOST}:{leader.port}"
        probe = connect(address)
        try:
            with probe.transaction(isolation="serializable") as tx:
                tx.get(bench.key_of(0))
        finally:
            probe.close()
    except Unavailable:
        stop()
        raise
    except Exception as exc:
        stop()
        raise Unavailable(f"the 3-node cluster could not run a transaction: "
                          f"{type(exc).__name__}: {exc}") from None
    description = {"nodes": CLUSTER_NODES, "connect_to": "the leader at start",
                   "durability": "keeldb serve --id --peers (Raft mode): a commit is one Raft "
                                 "entry, acknowledged once a majority has fsynced it",
                   "pids": [p.pid for p in started]}
    return bench.ClusterSystem(lambda: connect(address), description, stop)


FACTORIES: dict[str, bench.SystemFactory] = {
    bench.POSTGRES: lambda base: bench.PostgresSystem(base),
    bench.CLUSTER: cluster_factory,
}


# --- output ----------------------------------------------------------------------------------

def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


SHORT_KINDS = {"write-write": "ww", "read-write": "rw", "serialization_failure": "40001",
               "deadlock": "40P01", "conflict@step": "c@step",
               "conflict@commit": "c@commit"}


def _kinds(kinds: dict[str, int]) -> str:
    return " ".join(f"{SHORT_KINDS.get(k, k)}:{v}" for k, v in kinds.items()) or "-"


def render(result: dict[str, Any], out: Console) -> None:
    cfg = result["config"]
    budget = f"{cfg['seconds']:g} s" if cfg["seconds"] is not None else f"{cfg['txns']:,} txns"
    t = Table(title=f"transactions: {cfg['clients']} clients, {budget} per point, "
                    f"{cfg['keys']:,} keys (high: hot set of {cfg['hot_keys']}), "
                    f"keys in {cfg['key_order']} order")
    for col in ("load", "level", "system", "txn/s", "aborts", "by kind", "p50 ms", "p99 ms",
                "commit p50", "commit p99"):
        t.add_column(col, justify="left" if col in ("load", "level", "system",
                                                    "by kind") else "right")
    for p in bench.point_table(result):
        t.add_row(p["contention"], p["level"], p["system"], _f(p["txn_per_sec"], ",.0f"),
                  _rate(p["abort_rate"]), _kinds(p["abort_kinds"]), _f(p["latency_ms_p50"], ".2f"),
                  _f(p["latency_ms_p99"], ".2f"), _f(p["commit_ms_p50"], ".2f"),
                  _f(p["commit_ms_p99"], ".2f"))
    out.print(t)
    out.print("aborts = aborted attempts / attempts; by kind: ww/rw keeldb write-write/read-write "
              "conflict, c@step/c@commit cluster TXNCONFLICT at a step/at commit, 40001/40P01 "
              "PostgreSQL serialization failure/deadlock; latency of a "
              "committed transaction, retries included", highlight=False)
    for name, st in result["settings"].items():
        out.print(f"{name}: {st.get('durability', '')}", highlight=False)
    for note in result["notes"]:
        out.print(f"[yellow]note:[/] {note}", highlight=False)


@bench_app.command("txn")
def txn(
    systems: str = typer.Option(",".join(bench.SYSTEMS), "--systems",
                                help="Comma-separated systems, or 'all': "
                                + ", ".join(bench.SYSTEMS) + "."),
    levels: str = typer.Option("all", "--levels", help="Comma-separated isolation levels, or "
                               "'all': " + ", ".join(bench.LEVELS) + "."),
    contention: str = typer.Option("low,high", "--contention",
                                   help="low (uniform over --keys) and/or high (uniform over "
                                        "the --hot-keys first keys)."),
    clients: int = typer.Option(bench.CLIENTS_DEFAULT, "--clients",
                                help="Concurrent client threads (one connection each)."),
    seconds: float | None = typer.Option(None, "--seconds", help="Seconds per point "
                                         f"(default {bench.SECONDS_DEFAULT:g})."),
    txns: int | None = typer.Option(None, "--txns", help="Logical transactions per point "
                                    "(instead of --seconds)."),
    keys: int = typer.Option(bench.KEYS_DEFAULT, "--keys", help="Keys in the table."),
    hot_keys: int = typer.Option(bench.HOT_KEYS_DEFAULT, "--hot-keys",
                                 help="Size of the hot set of the high-contention workload."),
    key_order: str = typer.Option("random", "--key-order",
                                  help="random (as generated; lock-based engines may deadlock) "
                                       "or sorted (every transaction in key order)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the transactions and backoffs."),
    sync: str = typer.Option("always", "--sync", help="keeldb-embedded fsync policy; 'always' "
                             "matches PostgreSQL's fsync=on, synchronous_commit=on."),
    out: Path | None = typer.Option(None, "--out", help="JSON result file "
                                    "(default benchmarks/results/txn-<date>.json)."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON result to stdout."),
    db_dir: Path | None = typer.Option(None, "--dir", help="Where to create the databases "
                                       "(default a fresh temporary directory)."),
) -> None:
    """Transaction throughput and abort rate per isolation level: keeldb embedded and on a
    3-node cluster vs PostgreSQL, YCSB-A-like 4-key transactions."""
    if seconds is not None and txns is not None:
        raise UsageError("pass --seconds or --txns, not both")
    config = bench.RunConfig(
        systems=split_choices(systems, bench.SYSTEMS, "system"),
        levels=split_choices(levels, bench.LEVELS, "level"),
        contentions=split_choices(contention, bench.CONTENTIONS, "contention"),
        clients=clients, seconds=None if txns is not None else (seconds or
                                                                bench.SECONDS_DEFAULT),
        txns=txns, keys=keys, hot_keys=hot_keys, key_order=key_order, seed=seed, dir=db_dir,
        command="keeldb " + shlex.join(sys.argv[1:]))
    factories = {**FACTORIES, bench.EMBEDDED: lambda base: bench.EmbeddedSystem(base, sync)}
    show = err_console if json_out else console

    def on_event(ev: bench.Event) -> None:
        d = ev.detail
        if ev.kind == "load":
            show.print(f"{ev.system}: loading {d['keys']:,} keys", highlight=False)
        elif ev.kind == "skip":
            show.print(f"[yellow]{ev.system} skipped:[/] {d['note']}", highlight=False)
        elif ev.kind == "point":
            show.print(f"{d['contention']:>4} {d['level']:<14} {ev.system:<16} "
                       f"{_f(d['txn_per_sec'], ',.0f'):>8} txn/s  aborts "
                       f"{_rate(d['abort_rate'])}",
                       highlight=False)

    result = bench.run(config, factories, on_event)
    out_path = out or bench.default_out_path()
    bench.write_result(result, out_path)
    show_bench_result(result, out_path, json_out, render)
    failed = [p for p in result["results"] if p["error"]]
    if failed:
        raise BenchmarkFailedError(
            f"{len(failed)} of {len(result['results'])} points failed (see the notes and "
            f"'results' in {out_path}); rerun with --systems to isolate the failing system")

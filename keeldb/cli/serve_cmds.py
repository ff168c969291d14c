"""`keeldb serve`: run one node as a Redis-protocol server over the embedded store.

    keeldb serve                                  # 127.0.0.1:6380, data in ./keeldb-data
    keeldb serve --port 6390 --data /var/lib/keeldb --sync batch --password s3cret
    redis-cli -p 6380 set a b
    keeldb serve --id n1 --peers n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003 \
        --port 6381 --data ./n1               # one Raft-replicated node (docs/cluster.md)
    keeldb serve --id n4 --join n1=127.0.0.1:7001,n2=...,n4=127.0.0.1:7004 \
        --port 6384 --data ./n4               # a new member; then `keeldb cluster add n4 ...`
"""

from __future__ import annotations

import gc
import sys

import typer

from keeldb import limits
from keeldb.cli.app import app
from keeldb.types import SYNC_POLICIES


def freeze_startup_heap() -> None:
    """Move every object alive once the server is up (modules, functions, classes, the
    recovered store and Raft log) out of the cyclic GC's reach (`gc.freeze`): a full
    collection walks only what was allocated later. Measured (one process, the server's
    modules, a 100,000-key memtable, 20,000 Raft entries): a full collection costs 20-25 ms
    of CPU, during which the event loop answers nobody; after the freeze, 2-5 ms. Frozen
    objects are still freed by reference counting; only cyclic garbage among them stays."""
    gc.collect()
    gc.freeze()


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(6380, "--port", help="RESP port (0: any free port)"),
    data: str = typer.Option("./keeldb-data", "--data", help="data directory"),
    sync: str = typer.Option("always", "--sync",
                             help=f"fsync policy: {'|'.join(SYNC_POLICIES)}; always = a reply "
                                  "leaves only after its write is fsynced"),
    password: str | None = typer.Option(None, "--password", help="require AUTH with this"),
    admin_port: int = typer.Option(0, "--admin-port",
                                   help="loopback HTTP port for /metrics and /status "
                                        "(0: any free port, -1: none)"),
    max_clients: int = typer.Option(limits.server_clients_max_default, "--max-clients",
                                    help="client connections at once"),
    node_id: str = typer.Option("n1", "--node-id", "--id",
                                help="this node's id (shown in /status; its name in --peers)"),
    peers: str = typer.Option("", "--peers",
                              help="Raft mode: n1=HOST:PORT,n2=... the peer port of every "
                                   "node, this one included (empty: a single node)"),
    fault_port: int = typer.Option(-1, "--fault-port",
                                   help="Raft mode: loopback port for link faults (keeldb node "
                                        "partition|isolate|heal --admin); -1: none, 0: any"),
    join: str = typer.Option("", "--join",
                             help="Raft mode, a NEW member: n1=HOST:PORT,... the current "
                                  "members' peer ports and this node's; it waits as a "
                                  "non-voter until `keeldb cluster add` (instead of --peers)"),
    read_mode: str = typer.Option("readindex", "--read-mode",
                                  help="Raft mode: readindex (linearizable, default) or lease "
                                       "(no heartbeat round per read; assumes bounded clock "
                                       "drift, docs/cluster.md)"),
    redirect: bool = typer.Option(False, "--redirect",
                                  help="Raft mode: a follower answers writes with MOVED 0 "
                                       "HOST:PORT (the leader) instead of forwarding them"),
    snapshot_entries: int = typer.Option(0, "--snapshot-entries",
                                         help="Raft mode: applied entries between two "
                                              "snapshots (0: "
                                              f"{limits.server_raft_snapshot_entries})"),
    sweep_interval_ms: int = typer.Option(limits.server_sweep_interval_ms_default,
                                          "--sweep-interval-ms",
                                          help="period of the expired-key sweep"),
) -> None:
    """Serve the Redis protocol on one node; SIGTERM/SIGINT stop it cleanly."""
    from keeldb.server.resp_server import ServerConfig, run

    def ready(line: str) -> None:
        freeze_startup_heap()
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    run(ServerConfig(host=host, port=port, data_dir=data, sync=sync, password=password,
                     admin_port=None if admin_port == -1 else admin_port,
                     max_clients=max_clients, node_id=node_id,
                     sweep_interval_ms=sweep_interval_ms, peers=peers,
                     fault_port=None if fault_port == -1 else fault_port, join=join,
                     read_mode=read_mode, snapshot_entries=snapshot_entries,
                     redirect=redirect), ready)

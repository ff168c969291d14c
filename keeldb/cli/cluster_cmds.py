"""`keeldb cluster start|status|stop`: a local cluster of real `keeldb serve --peers` processes.

    keeldb cluster start --nodes 3                 # RESP 6381.., Raft 6481.., admin 6581..
    keeldb cluster status                          # role, term, commit index of each node
    keeldb cluster stop                            # SIGTERM by recorded PID, SIGKILL after 10 s

Ports from `--base-port P`: node i (0-based) serves RESP on P+i, Raft on P+100+i, its HTTP
admin (/status, /metrics) on P+200+i and link faults (`keeldb node partition --admin
127.0.0.1:PORT`) on P+300+i; `--base-port 0` picks free ports. Each node keeps its
data in DIR/<id> and its output in DIR/<id>.log; DIR/cluster.json records the layout and PIDs.
The functions here (`plan_cluster`, `spawn`, `wait_ready`, `stop_pid`) are also what the
integration tests drive real clusters with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from keeldb.cli.app import app, fail, print_json, print_table
from keeldb.errors import ConfigError, NodeUnavailableError

cluster_app = typer.Typer(help="Start, inspect and stop a local Raft cluster of real processes.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")

HOST = "127.0.0.1"
CLUSTER_FILE = "cluster.json"
NODES_MAX = 9  # a local cluster; more voters only slow commits down
PEER_OFFSET, ADMIN_OFFSET, FAULT_OFFSET = 100, 200, 300
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05


@dataclass(frozen=True)
class NodePlan:
    """One node of a local cluster: its ports and where its files go."""

    id: str
    port: int
    peer_port: int
    admin_port: int
    data: str
    log: str
    fault_port: int = -1  # -1: none
    pid: int = 0

    def argv(self, peers: str) -> list[str]:
        return [sys.executable, "-m", "keeldb", "serve", "--id", self.id, "--peers", peers,
                "--host", HOST, "--port", str(self.port), "--admin-port", str(self.admin_port),
                "--data", self.data, "--fault-port", str(self.fault_port)]


def _free_ports(n: int) -> list[int]:
    import socket
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def plan_cluster(nodes: int, base_port: int, directory: Path) -> list[NodePlan]:
    """Ids n1..nN with ports from `base_port` (0: free ports) and files under `directory`."""
    if not 1 <= nodes <= NODES_MAX:
        raise ConfigError(f"--nodes {nodes} is out of range; pass 1..{NODES_MAX} (3 or 5 "
                          "tolerate 1 or 2 failures)")
    if base_port:
        if not 1024 <= base_port <= 65535 - FAULT_OFFSET - nodes:
            raise ConfigError(f"--base-port {base_port} leaves no room for {nodes} nodes' "
                              f"ports; pass 1024..{65535 - FAULT_OFFSET - nodes} or 0 (any)")
        ports = [[base_port + off + i for off in (0, PEER_OFFSET, ADMIN_OFFSET, FAULT_OFFSET)]
                 for i in range(nodes)]
    else:
        free = _free_ports(4 * nodes)
        ports = [free[4 * i:4 * i + 4] for i in range(nodes)]
    d = directory.resolve()
    return [NodePlan(f"n{i + 1}", p, q, a, str(d / f"n{i + 1}"), str(d / f"n{i + 1}.log"), fp)
            for i, (p, q, a, fp) in enumerate(ports)]


def peers_arg(plans: list[NodePlan]) -> str:
    return ",".join(f"{p.id}={HOST}:{p.peer_port}" for p in plans)


def spawn(plan: NodePlan, plans: list[NodePlan]) -> subprocess.Popen[bytes]:
    """Start one node in the background (its own session, output appended to its log)."""
    Path(plan.data).parent.mkdir(parents=True, exist_ok=True)
    with open(plan.log, "ab") as out:
        return subprocess.Popen(plan.argv(peers_arg(plans)), stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def admin_status(plan: NodePlan, timeout_s: float = 2.0) -> dict[str, Any]:
    """GET /status of a node's admin port (NodeUnavailableError if it does not answer)."""
    url = f"http://{HOST}:{plan.admin_port}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback
            data = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise NodeUnavailableError(f"node {plan.id} admin port {plan.admin_port} does not "
                                   f"answer ({exc}); is it running?") from None
    assert isinstance(data, dict), data
    return data


def wait_ready(plan: NodePlan, pid: int, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Poll the node's /status until it answers (bounded); raise if its process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise NodeUnavailableError(f"node {plan.id} (pid {pid}) exited at start; see "
                                       f"{plan.log}")
        try:
            return admin_status(plan, timeout_s=1.0)
        except NodeUnavailableError:
            time.sleep(POLL_S)
    raise NodeUnavailableError(f"node {plan.id} not ready after {timeout_s:.0f} s; see "
                               f"{plan.log}")


def pid_alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie (a zombie child is reaped here)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


def _is_our_node(pid: int, node: str) -> bool:
    """Guard against PID reuse: the process must be `keeldb serve --id node`."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return pid_alive(pid)  # no /proc: trust the recorded PID
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in args and node.encode() in args


def stop_pid(pid: int, node: str, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """SIGTERM, wait (bounded), then SIGKILL. Returns what happened."""
    if not pid_alive(pid) or not _is_our_node(pid, node):
        return "not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return "stopped"
        time.sleep(POLL_S)
    os.kill(pid, signal.SIGKILL)
    while pid_alive(pid) and time.monotonic() < deadline + timeout_s:
        time.sleep(POLL_S)
    return "killed"


def load_cluster(directory: Path) -> list[NodePlan]:
    path = directory / CLUSTER_FILE
    try:
        obj = json.loads(path.read_text())
        return [NodePlan(**n) for n in obj["nodes"]]
    except FileNotFoundError:
        raise ConfigError(f"no {CLUSTER_FILE} in {directory}; start a cluster with `keeldb "
                          "cluster start --dir DIR` or pass its --dir") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a cluster file ({exc}); remove it and start "
                          "again") from None


def save_cluster(directory: Path, plans: list[NodePlan]) -> None:
    tmp = directory / (CLUSTER_FILE + ".tmp")
    tmp.write_text(json.dumps({"peers": peers_arg(plans),
                               "nodes": [asdict(p) for p in plans]}, indent=2) + "\n")
    os.replace(tmp, directory / CLUSTER_FILE)


def _running(plans: list[NodePlan]) -> list[str]:
    return [p.id for p in plans if p.pid and pid_alive(p.pid) and _is_our_node(p.pid, p.id)]


@cluster_app.command("start")
def start(
    nodes: int = typer.Option(3, "--nodes", help="how many nodes (3 or 5 for fault tolerance)"),
    base_port: int = typer.Option(6381, "--base-port",
                                  help="RESP ports from here; +100 peer, +200 admin; 0: any"),
    directory: Path = typer.Option(Path("./keeldb-cluster"), "--dir",
                                   help="data dirs, logs and cluster.json go here"),
    as_json: bool = typer.Option(False, "--json", help="print the layout as JSON"),
) -> None:
    """Start N `keeldb serve --id --peers` processes in the background. In a DIR that
    holds a cluster already, start its nodes that are not running (a restart after a kill)."""
    directory.mkdir(parents=True, exist_ok=True)
    plans = plan_cluster(nodes, base_port, directory)
    running: list[str] = []
    if (directory / CLUSTER_FILE).exists():
        old = load_cluster(directory)
        running = _running(old)
        if len(old) != nodes:
            if running:
                fail(f"{directory} holds a {len(old)}-node cluster with nodes "
                     f"{', '.join(running)} running; stop it or pass --nodes {len(old)}")
        else:
            plans = old  # a restart keeps the recorded ports: the Raft peers know them
    started: list[NodePlan] = []
    try:
        for plan in plans:
            if plan.id in running:
                started.append(plan)
                continue
            proc = spawn(plan, plans)
            started.append(NodePlan(**{**asdict(plan), "pid": proc.pid}))
            save_cluster(directory, started + plans[len(started):])
        for plan in started:
            if plan.id not in running:
                wait_ready(plan, plan.pid)
    except BaseException:
        for plan in started:
            if plan.id not in running:
                stop_pid(plan.pid, plan.id, timeout_s=2.0)
        raise
    if as_json:
        print_json([asdict(p) for p in started])
        return
    print_table(f"keeldb cluster in {directory.resolve()}",
                ["id", "resp", "peer", "admin", "faults", "data", "pid"],
                [[p.id, f"{HOST}:{p.port}", p.peer_port, p.admin_port, p.fault_port, p.data,
                  p.pid]
                 for p in started])
    typer.echo(f"try: redis-cli -p {started[0].port} set hello world")


@cluster_app.command("status")
def status(
    directory: Path = typer.Option(Path("./keeldb-cluster"), "--dir", help="the cluster's dir"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Role, term, commit index and leader of each node (from its admin /status)."""
    rows: list[dict[str, Any]] = []
    for plan in load_cluster(directory):
        row: dict[str, Any] = {"id": plan.id, "pid": plan.pid, "resp": plan.port}
        try:
            st = admin_status(plan)
            row.update(up=True, role=st.get("role"), term=st.get("term"),
                       commit_index=st.get("commit_index"), leader=st.get("leader"),
                       applied_index=st.get("applied_index"), keys=st.get("keys"))
        except NodeUnavailableError:
            row.update(up=False, role="down", term=None, commit_index=None, leader=None,
                       applied_index=None, keys=None)
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    cols = ["id", "pid", "resp", "up", "role", "term", "commit_index", "leader",
            "applied_index", "keys"]
    print_table(f"keeldb cluster in {directory.resolve()}", cols,
                [[("-" if r[c] is None else r[c]) for c in cols] for r in rows])


@cluster_app.command("stop")
def stop(
    directory: Path = typer.Option(Path("./keeldb-cluster"), "--dir", help="the cluster's dir"),
    timeout: float = typer.Option(STOP_TIMEOUT_S, "--timeout",
                                  help="seconds to wait after SIGTERM before SIGKILL"),
) -> None:
    """SIGTERM each recorded PID, SIGKILL the ones still running after --timeout."""
    plans = load_cluster(directory)
    rows = [[p.id, p.pid, stop_pid(p.pid, p.id, timeout) if p.pid else "never started"]
            for p in plans]
    print_table(f"keeldb cluster in {directory.resolve()}", ["id", "pid", "result"], rows)

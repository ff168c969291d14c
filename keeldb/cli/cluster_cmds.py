"""`keeldb cluster start|status|stop`: a local cluster of real `keeldb serve --peers` processes.

    keeldb cluster start --nodes 3                 # RESP 6381.., Raft 6481.., admin 6581..
    keeldb cluster status                          # role, term, commit index of each node
    keeldb cluster stop                            # SIGTERM by recorded PID, SIGKILL after 10 s
    keeldb cluster add n4                          # start a 4th node (--join), learner, voter
    keeldb cluster add n4 10.0.0.4:7004 --admin 10.0.0.1:6581   # a node started by hand
    keeldb cluster remove n3                       # the leader itself included
    keeldb cluster transfer n2                     # hand leadership to n2

Ports from `--base-port P`: node i (0-based) serves RESP on P+i, Raft on P+100+i, its HTTP
admin (/status, /metrics) on P+200+i and link faults (`keeldb node partition --admin
127.0.0.1:PORT`) on P+300+i; `--base-port 0` picks free ports. Each node keeps its
data in DIR/<id> and its output in DIR/<id>.log; DIR/cluster.json records the layout and PIDs.
The functions here (`plan_cluster`, `spawn`, `wait_ready`, `stop_pid`, `admin_post`) are
also what the integration tests drive real clusters with.

Membership commands talk to a node's admin port (POST /cluster/..., keeldb.server.raft_admin):
with `--dir` they find the leader among the recorded nodes (and keep cluster.json in step:
`add` records the node it starts, `remove` stops the removed node and drops it); with
`--admin HOST:PORT` they ask that node, which must be the leader.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
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
    join: bool = False  # added after the cluster's start: `serve --join` (no bootstrap)
    extra: tuple[str, ...] = ()  # more `keeldb serve` options (e.g. --snapshot-entries 50)

    def argv(self, peers: str) -> list[str]:
        flag = "--join" if self.join else "--peers"
        return [sys.executable, "-m", "keeldb", "serve", "--id", self.id, flag, peers,
                "--host", HOST, "--port", str(self.port), "--admin-port", str(self.admin_port),
                "--data", self.data, "--fault-port", str(self.fault_port), *self.extra]


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
    nodes: int = typer.Option(0, "--nodes",
                              help="how many nodes (3 or 5 for fault tolerance); default 3, "
                                   "or the recorded nodes of an existing --dir"),
    base_port: int = typer.Option(6381, "--base-port",
                                  help="RESP ports from here; +100 peer, +200 admin; 0: any"),
    directory: Path = typer.Option(Path("./keeldb-cluster"), "--dir",
                                   help="data dirs, logs and cluster.json go here"),
    as_json: bool = typer.Option(False, "--json", help="print the layout as JSON"),
) -> None:
    """Start N `keeldb serve --id --peers` processes in the background. In a DIR that
    holds a cluster already, start its nodes that are not running (a restart after a kill)."""
    directory.mkdir(parents=True, exist_ok=True)
    running: list[str] = []
    if (directory / CLUSTER_FILE).exists():
        old = load_cluster(directory)
        running = _running(old)
        nodes = nodes or len(old)
        plans = plan_cluster(nodes, base_port, directory)
        if len(old) != nodes:
            if running:
                fail(f"{directory} holds a {len(old)}-node cluster with nodes "
                     f"{', '.join(running)} running; stop it or pass --nodes {len(old)}")
        else:
            plans = old  # a restart keeps the recorded ports: the Raft peers know them
    else:
        plans = plan_cluster(nodes or 3, base_port, directory)
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
                       applied_index=st.get("applied_index"), keys=st.get("keys"),
                       member=_membership(plan.id, st),
                       snapshots_installed=st.get("snapshots_installed"))
        except NodeUnavailableError:
            row.update(up=False, role="down", term=None, commit_index=None, leader=None,
                       applied_index=None, keys=None, member=None, snapshots_installed=None)
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    cols = ["id", "pid", "resp", "up", "role", "member", "term", "commit_index", "leader",
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


def _membership(node: str, st: dict[str, Any]) -> str:
    """voter / learner / none, as this node's own applied configuration says."""
    if node in (st.get("voters") or ()):
        return "voter"
    if node in (st.get("learners") or ()):
        return "learner"
    return "none"


# --- membership and leadership ---------------------------------------------------------------

ADD_TIMEOUT_S = 90.0  # the server bounds the learner's catch-up; this only bounds the socket


def admin_post(host: str, port: int, action: str, body: dict[str, Any],
               timeout_s: float = ADD_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """POST /cluster/<action> to a node's admin port: (HTTP status, JSON reply)."""
    req = urllib.request.Request(f"http://{host}:{port}/cluster/{action}", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - loopback
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), json.loads(exc.read())
        except ValueError:
            return int(exc.code), {"ok": False, "error": "http", "message": str(exc)}
    except (OSError, ValueError) as exc:
        raise NodeUnavailableError(f"admin port {host}:{port} does not answer ({exc}); is "
                                   "the node running?") from None


def _split_addr(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not (colon and host and port.isdigit()):
        raise ConfigError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def cluster_post(action: str, body: dict[str, Any], directory: Path | None,
                 admin: str | None) -> dict[str, Any]:
    """Send a membership/leadership action to the leader; the JSON reply, or fail()."""
    if admin:
        targets = [_split_addr(admin)]
        by_id: dict[str, tuple[str, int]] = {}
    else:
        plans = load_cluster(directory or Path("./keeldb-cluster"))
        by_id = {p.id: (HOST, p.admin_port) for p in plans}
        targets = [(HOST, p.admin_port) for p in plans if _leader_first(p)]
        targets += [a for a in by_id.values() if a not in targets]
    reply: dict[str, Any] = {}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while targets and time.monotonic() < deadline:
        host, port = targets.pop(0)
        try:
            code, reply = admin_post(host, port, action, body)
        except NodeUnavailableError as exc:
            reply = {"ok": False, "error": "down", "message": exc.message}
            continue
        if code == 200:
            return reply
        if reply.get("error") == "not-leader" and reply.get("leader") in by_id:
            targets.insert(0, by_id[reply["leader"]])
        elif reply.get("error") == "no-leader":
            time.sleep(0.2)
            targets.append((host, port))
        else:
            break
    fail(f"{action} failed: {reply.get('message', reply)}")


def _leader_first(plan: NodePlan) -> bool:
    try:
        return admin_status(plan, timeout_s=1.0).get("role") == "leader"
    except NodeUnavailableError:
        return False


def _start_local_member(directory: Path, node: str) -> tuple[NodePlan, str]:
    """`cluster add ID` on a local cluster: start `serve --join` for a new node, record it."""
    plans = load_cluster(directory)
    if any(p.id == node for p in plans):
        fail(f"{node} is already recorded in {directory / CLUSTER_FILE}; pick another id, or "
             f"pass its address to re-add it (`keeldb cluster add {node} HOST:PORT`)")
    data = directory.resolve() / node
    if data.exists() and any(data.iterdir()):
        fail(f"{data} is not empty: a new member starts from an empty data dir (it recovers "
             "by snapshot); remove that dir or pick another id")
    ports = _free_ports(4)
    plan = NodePlan(node, ports[0], ports[1], ports[2], str(data),
                    str(directory.resolve() / f"{node}.log"), ports[3], join=True)
    everyone = [*plans, plan]
    proc = spawn(plan, everyone)
    plan = NodePlan(**{**asdict(plan), "pid": proc.pid})
    save_cluster(directory, [*plans, plan])
    wait_ready(plan, plan.pid)
    return plan, f"{HOST}:{plan.peer_port}"


@cluster_app.command("add")
def add(
    node: str = typer.Argument(..., help="the new member's id, e.g. n4"),
    addr: str = typer.Argument("", help="its Raft HOST:PORT (as in its --join); empty with "
                                        "--dir: start a new local node"),
    directory: Path = typer.Option(Path("./keeldb-cluster"), "--dir", help="the cluster's dir"),
    admin: str = typer.Option("", "--admin", help="HOST:PORT of the leader's admin port "
                                                  "(instead of --dir)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Add a member: it joins as a learner, catches up, then is promoted to voter."""
    plan = None
    if not addr:
        if admin:
            fail("pass the new node's Raft address: keeldb cluster add ID HOST:PORT --admin ...")
        plan, addr = _start_local_member(directory, node)
    reply = cluster_post("add", {"id": node, "addr": addr}, None if admin else directory,
                         admin or None)
    if as_json:
        print_json({**reply, **({"plan": asdict(plan)} if plan else {})})
        return
    where = f" (resp {HOST}:{plan.port}, admin {plan.admin_port}, pid {plan.pid})" if plan else ""
    typer.echo(f"{node} at {addr} is a voter{where}")


@cluster_app.command("remove")
def remove(
    node: str = typer.Argument(..., help="the member to remove (the leader itself is fine)"),
    directory: Path = typer.Option(Path("./keeldb-cluster"), "--dir", help="the cluster's dir"),
    admin: str = typer.Option("", "--admin", help="HOST:PORT of the leader's admin port"),
    keep_running: bool = typer.Option(False, "--keep-running",
                                      help="with --dir: do not stop the removed node"),
) -> None:
    """Remove a member (a leader removing itself steps down once the change commits)."""
    reply = cluster_post("remove", {"id": node}, None if admin else directory, admin or None)
    stopped = ""
    if not admin and (directory / CLUSTER_FILE).exists():
        plans = load_cluster(directory)
        gone = [p for p in plans if p.id == node]
        if gone and not keep_running:
            stopped = f"; its process {stop_pid(gone[0].pid, node)}" if gone[0].pid else ""
            save_cluster(directory, [p for p in plans if p.id != node])
    changed = "removed" if reply.get("changed") else "was not a member"
    typer.echo(f"{node} {changed}{stopped}")


@cluster_app.command("transfer")
def transfer(
    node: str = typer.Argument(..., help="the voter that should lead"),
    directory: Path = typer.Option(Path("./keeldb-cluster"), "--dir", help="the cluster's dir"),
    admin: str = typer.Option("", "--admin", help="HOST:PORT of the leader's admin port"),
) -> None:
    """Hand leadership to another voter (it must be caught up; bounded wait)."""
    reply = cluster_post("transfer", {"id": node}, None if admin else directory, admin or None)
    typer.echo(f"{reply['leader']} leads")

"""`keeldb bench cluster`: replicated writes side by side (docs/benchmarks.md).

For each system: start its server processes in a fresh temporary directory (durable
settings: keeldb `--sync always` and Raft log fsync, Redis `appendfsync always`, etcd's
default WAL fsync; PySyncObj has no fsync), find its leader, drive the leader with the one
load generator (`keeldb.bench.loadgen`) at each concurrency, then stop every process it
started by PID (SIGTERM, SIGKILL after a bound), also on error. A peer whose program or
library is missing is skipped with a note.

    result = run(RunConfig(systems=("keeldb-1", "keeldb-3"), concurrencies=(1, 64)))
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from keeldb import limits
from keeldb.bench import loadgen
from keeldb.bench.loadgen import HTTP, RESP, Target
from keeldb.bench.storage import machine_info
from keeldb.errors import BenchmarkFailedError

SCHEMA = "keeldb.bench.cluster/1"
SYSTEMS = ("keeldb-1", "keeldb-3", "redis", "etcd-1", "etcd-3", "pysyncobj-3")
CONCURRENCIES_DEFAULT = (1, 16, 64, 256)
LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
LOG_TAIL_BYTES = 2000
# The figures, measured on this machine; used when a peer did not run.
REFERENCE: dict[str, dict[int, tuple[float, float | None]]] = {
    "etcd-3": {1: (651.0, 5.0), 64: (5930.0, 34.0), 256: (6959.0, 94.0)},
    "etcd-1": {64: (11000.0, None)},
    "pysyncobj-3": {1: (2000.0, None), 64: (5300.0, 190.0)},
}


@dataclass(frozen=True)
class RunConfig:
    systems: tuple[str, ...] = SYSTEMS
    concurrencies: tuple[int, ...] = CONCURRENCIES_DEFAULT
    seconds: float = 5.0
    warmup_s: float = 1.0
    value_bytes: int = 100
    seed: int = 1
    dir: Path | None = None
    command: str = ""
    use_uvloop: bool = True


@dataclass(frozen=True)
class Event:
    kind: str  # "start" | "point" | "skip" | "error"
    system: str
    detail: dict[str, Any] = field(default_factory=dict)


def default_out_path(now: dt.datetime | None = None) -> Path:
    day = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    return Path("benchmarks") / "results" / f"cluster-{day}.json"


# --- processes ------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Procs:
    """The processes of one system; `stop_all` ends each by PID (never by name)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> None:
        log = self.workdir / f"{name}.log"
        out: IO[bytes]
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                 cwd=cwd, start_new_session=True)
        self.procs.append((name, p, log))

    def check_alive(self) -> None:
        for name, p, log in self.procs:
            if p.poll() is not None:
                raise BenchmarkFailedError(f"{name} (pid {p.pid}) exited with {p.returncode}: "
                                           f"{_tail(log)}")

    def pids(self) -> list[int]:
        return [p.pid for _, p, _ in self.procs]

    def stop_all(self) -> None:
        for _, p, _ in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _, p, _ in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()


def _tail(log: Path) -> str:
    try:
        data = log.read_bytes()[-LOG_TAIL_BYTES:]
    except OSError:
        return "(no log)"
    return data.decode(errors="replace").strip() or "(empty log)"


def _wait(what: str, procs: Procs, probe: Callable[[], bool],
          timeout_s: float = limits.bench_cluster_ready_s) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if probe():
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(POLL_S)
    raise BenchmarkFailedError(f"{what} not ready after {timeout_s:.0f} s (limits."
                               "bench_cluster_ready_s); see the logs in the bench directory")


# --- probes ---------------------------------------------------------------------------------

def resp_call(port: int, *args: bytes, timeout_s: float = 2.0) -> bytes:
    """One RESP command; the raw reply (a line, or a bulk string's payload)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as s:
        s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a)
                                                    for a in args))
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a reply")
            buf += chunk
            end = buf.find(b"\r\n")
            if end < 0:
                continue
            if buf[:1] != b"$":
                return buf[:end]
            size = int(buf[1:end])
            if size < 0:
                return b""
            if len(buf) >= end + 2 + size + 2:
                return buf[end + 2:end + 2 + size]


def resp_role(port: int) -> str:
    """"leader" for a keeldb/PySyncObj leader or a Redis master, else what INFO says."""
    info = resp_call(port, b"INFO").decode(errors="replace")
    for line in info.splitlines():
        key, _, val = line.partition(":")
        if key in ("keeldb_role", "role"):
            return "leader" if val.strip() in ("leader", "master", "standalone") else val.strip()
    return "unknown"


def etcd_post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2.0)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
        if resp.status != 200:
            raise ValueError(f"{path}: HTTP {resp.status} {data}")
        assert isinstance(data, dict), data
        return data
    finally:
        conn.close()


def etcd_is_leader(port: int) -> bool:
    st = etcd_post(port, "/v3/maintenance/status", {})
    return bool(st.get("leader")) and st.get("leader") == st.get("header", {}).get("member_id")


def _leader(what: str, procs: Procs, ports: list[int], is_leader: Callable[[int], bool]) -> int:
    """The client port of the node that says it leads (waits, bounded)."""
    found: list[int] = []

    def probe() -> bool:
        found[:] = [p for p in ports if is_leader(p)]
        return bool(found)

    _wait(what, procs, probe)
    return found[0]


# --- systems --------------------------------------------------------------------------------

@dataclass
class Running:
    target: Target
    version: str
    settings: str


def _keeldb_version() -> str:
    try:
        return importlib.metadata.version("keeldb")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _start_keeldb(n: int, procs: Procs, work: Path) -> Running:
    ports = free_ports(2 * n)
    client, peer = ports[:n], ports[n:]
    ids = [f"n{i + 1}" for i in range(n)]
    peers = ",".join(f"{ids[i]}={LOOPBACK}:{peer[i]}" for i in range(n))
    for i in range(n):
        argv = [sys.executable, "-m", "keeldb", "serve", "--id", ids[i], "--port",
                str(client[i]), "--admin-port", "-1", "--data", str(work / ids[i]),
                "--sync", "always"]
        if n > 1:
            argv += ["--peers", peers]
        procs.spawn(f"keeldb-{ids[i]}", argv)
    for i in range(n):
        _wait(f"keeldb {ids[i]}", procs,
              lambda i=i: resp_call(client[i], b"PING") == b"+PONG")  # type: ignore[misc]
    leader = _leader("a keeldb leader", procs, client, lambda p: resp_role(p) == "leader")
    settings = "sync=always" + (", Raft log fsync per batch" if n > 1 else "")
    return Running(Target(LOOPBACK, leader, RESP), _keeldb_version(), settings)


def _start_redis(procs: Procs, work: Path) -> Running:
    exe = shutil.which("redis-server")
    assert exe is not None
    (port,) = free_ports(1)
    procs.spawn("redis", [exe, "--port", str(port), "--bind", LOOPBACK, "--dir", str(work),
                          "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                          "--daemonize", "no"])
    _wait("redis", procs, lambda: resp_call(port, b"PING") == b"+PONG")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    return Running(Target(LOOPBACK, port, RESP), version,
                   "appendonly yes, appendfsync always")


def _start_etcd(n: int, procs: Procs, work: Path) -> Running:
    exe = shutil.which("etcd")
    assert exe is not None
    ports = free_ports(2 * n)
    client, peer = ports[:n], ports[n:]
    names = [f"e{i + 1}" for i in range(n)]
    initial = ",".join(f"{names[i]}=http://{LOOPBACK}:{peer[i]}" for i in range(n))
    for i in range(n):
        procs.spawn(f"etcd-{names[i]}", [
            exe, "--name", names[i], "--data-dir", str(work / names[i]),
            "--listen-client-urls", f"http://{LOOPBACK}:{client[i]}",
            "--advertise-client-urls", f"http://{LOOPBACK}:{client[i]}",
            "--listen-peer-urls", f"http://{LOOPBACK}:{peer[i]}",
            "--initial-advertise-peer-urls", f"http://{LOOPBACK}:{peer[i]}",
            "--initial-cluster", initial, "--initial-cluster-token", "keeldb-bench",
            "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"])
    leader = _leader("an etcd leader", procs, client, etcd_is_leader)
    # One put through the gateway proves the write path before the clock starts.
    etcd_post(leader, "/v3/kv/put", {"key": base64.b64encode(b"warm").decode(),
                                         "value": base64.b64encode(b"up").decode()})
    version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[0].strip()
    return Running(Target(LOOPBACK, leader, HTTP), version,
                   "default WAL fsync, v3 JSON gateway")


def _start_syncobj(n: int, procs: Procs, work: Path) -> Running:
    ports = free_ports(2 * n)
    client, raft = ports[:n], ports[n:]
    addrs = [f"{LOOPBACK}:{p}" for p in raft]
    for i in range(n):
        procs.spawn(f"pysyncobj-{i + 1}", [
            sys.executable, "-m", "keeldb.bench.syncobj_kv", "--self", addrs[i],
            "--partners", ",".join(a for j, a in enumerate(addrs) if j != i),
            "--port", str(client[i])], cwd=work)
    for i in range(n):
        _wait(f"pysyncobj {i + 1}", procs,
              lambda i=i: resp_call(client[i], b"PING") == b"+PONG")  # type: ignore[misc]
    leader = _leader("a pysyncobj leader", procs, client, lambda p: resp_role(p) == "leader")
    return Running(Target(LOOPBACK, leader, RESP),
                   "pysyncobj " + importlib.metadata.version("pysyncobj"),
                   "in-memory log, no fsync")


def missing(system: str) -> str | None:
    """Why `system` cannot run here, or None."""
    if system == "redis" and shutil.which("redis-server") is None:
        return "redis-server not installed (apt-get install redis-server)"
    if system.startswith("etcd") and shutil.which("etcd") is None:
        return "etcd not installed (apt-get install etcd-server)"
    if system.startswith("pysyncobj"):
        try:
            importlib.metadata.version("pysyncobj")
        except importlib.metadata.PackageNotFoundError:
            return "pysyncobj not installed (pip install 'keeldb[bench]')"
    return None


def start_system(system: str, procs: Procs, work: Path) -> Running:
    if system == "keeldb-1":
        return _start_keeldb(1, procs, work)
    if system == "keeldb-3":
        return _start_keeldb(3, procs, work)
    if system == "redis":
        return _start_redis(procs, work)
    if system in ("etcd-1", "etcd-3"):
        return _start_etcd(int(system[-1]), procs, work)
    if system == "pysyncobj-3":
        return _start_syncobj(3, procs, work)
    raise AssertionError(f"unknown system {system!r}")


# --- the run --------------------------------------------------------------------------------

def run_system(system: str, config: RunConfig, base: Path,
               on_event: Callable[[Event], None]) -> dict[str, Any]:
    """Start `system`, run every concurrency against its leader, stop it (always)."""
    work = Path(tempfile.mkdtemp(prefix=f"{system}-", dir=base))
    procs = Procs(work)
    out: dict[str, Any] = {"system": system, "points": {}, "error": "", "version": "",
                           "settings": ""}
    try:
        running = start_system(system, procs, work)
        out.update(version=running.version, settings=running.settings)
        on_event(Event("start", system, {"version": running.version}))
        for c in config.concurrencies:
            procs.check_alive()
            point = loadgen.run_point(running.target, c, config.seconds,
                                      warmup_s=config.warmup_s,
                                      value_bytes=config.value_bytes, seed=config.seed,
                                      use_uvloop=config.use_uvloop)
            out["points"][str(c)] = point.to_json()
            on_event(Event("point", system, point.to_json()))
        procs.check_alive()
    except (BenchmarkFailedError, OSError) as exc:
        out["error"] = str(exc)
        on_event(Event("error", system, {"error": str(exc)}))
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _cell(results: dict[str, Any], system: str, c: int) -> tuple[float, float | None,
                                                                 str] | None:
    """(ops/s, p99 ms, source) of `system` at `c`: this run's, else the issue's figure."""
    r = results.get(system)
    p = r["points"].get(str(c)) if r else None
    if p and p["ops"] > 0 and not p["errors"]:
        return float(p["ops_per_sec"]), p["p99_ms"], "this run"
    ref = REFERENCE.get(system, {}).get(c)
    return (ref[0], ref[1], "issue's figure") if ref else None


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for keeldb, judged against the peers of this run where they ran."""
    rows: list[dict[str, Any]] = []

    def add(name: str, mine: tuple[float, float | None, str] | None,
            peer: tuple[float, float | None, str] | None, ops_x: float,
            p99_div: float | None) -> None:
        row: dict[str, Any] = {"target": name, "met": None, "keeldb_ops": None,
                               "peer_ops": None, "keeldb_p99_ms": None, "peer_p99_ms": None,
                               "peer_source": None}
        if mine is not None and mine[2] == "this run" and peer is not None:
            row.update(keeldb_ops=mine[0], peer_ops=peer[0], keeldb_p99_ms=mine[1],
                       peer_p99_ms=peer[1], peer_source=peer[2])
            met = mine[0] >= ops_x * peer[0]
            if p99_div is not None and peer[1] is not None:
                met = met and mine[1] is not None and mine[1] * p99_div <= peer[1]
            row["met"] = met
        rows.append(row)

    k3, k1 = "keeldb-3", "keeldb-1"
    add("3 nodes, c=1: >= 1.0x etcd-3 ops/s", _cell(results, k3, 1),
        _cell(results, "etcd-3", 1), 1.0, None)
    for c in (64, 256):
        add(f"3 nodes, c={c}: >= 1.0x etcd-3 ops/s, p99 <= etcd-3's",
            _cell(results, k3, c), _cell(results, "etcd-3", c), 1.0, 1.0)
        add(f"3 nodes, c={c}: >= 1.2x pysyncobj-3 ops/s, p99 5x lower",
            _cell(results, k3, c), _cell(results, "pysyncobj-3", c), 1.2, 5.0)
    add("1 node, c=64: >= 1.0x etcd-1 ops/s", _cell(results, k1, 64),
        _cell(results, "etcd-1", 64), 1.0, None)
    return rows


def run(config: RunConfig, on_event: Callable[[Event], None] = lambda e: None
        ) -> dict[str, Any]:
    """Every system in turn; the JSON-able result (see docs/benchmarks.md)."""
    assert config.systems and all(s in SYSTEMS for s in config.systems), config.systems
    assert all(1 <= c <= limits.bench_cluster_concurrency_max for c in config.concurrencies)
    started = dt.datetime.now(dt.UTC)
    base = Path(tempfile.mkdtemp(prefix="keeldb-bench-cluster-", dir=config.dir))
    notes: list[str] = [
        "one load generator process drives every system the same way (closed loop, one "
        "request in flight per connection, the leader's client port); its CPU cost is the "
        "same for all systems and it shares the machine's cores with the servers",
    ]
    results: dict[str, Any] = {}
    try:
        machine = machine_info(base)
        for system in config.systems:
            why = missing(system)
            if why is not None:
                notes.append(f"{system} skipped: {why}")
                on_event(Event("skip", system, {"why": why}))
                continue
            results[system] = run_system(system, config, base, on_event)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    machine["loadavg_at_end"] = list(os.getloadavg())
    return {
        "schema": SCHEMA,
        "command": config.command,
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": {"systems": list(config.systems), "systems_run": list(results),
                   "concurrencies": list(config.concurrencies), "seconds": config.seconds,
                   "warmup_s": config.warmup_s, "value_bytes": config.value_bytes,
                   "seed": config.seed, "load_generator": "keeldb.bench.loadgen",
                   "uvloop": loadgen.uvloop_version() if config.use_uvloop else None},
        "results": results,
        "targets": check_targets(results),
        "notes": notes,
    }


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out)


def markdown(result: dict[str, Any]) -> str:
    """A result as the Markdown of docs/benchmarks.md: machine, one table, targets, notes."""
    cfg, m = result["config"], result["machine"]
    load = "/".join(f"{x:.1f}" for x in (m.get("loadavg_at_start") or []))
    load_end = "/".join(f"{x:.1f}" for x in (m.get("loadavg_at_end") or []))
    lines = [f"Command: `{result['command'] or 'keeldb bench cluster'}` ({cfg['seconds']:g} s "
             f"per point after {cfg['warmup_s']:g} s of warm-up, {cfg['value_bytes']}-byte "
             f"values; {result['started_utc']} - {result['finished_utc']}).", "",
             f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['python']}, data on "
             f"{m['db_filesystem']}; load average (1/5/15 min) {load} at start, {load_end} "
             "at end.", "",
             "| system | settings | clients | ops/s | p50 ms | p99 ms |",
             "|---|---|---:|---:|---:|---:|"]
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    # JSON files keep keys sorted: put systems and client counts back in run order.
    order = {s: i for i, s in enumerate(SYSTEMS)}
    for system in sorted(result["results"], key=lambda s: order.get(s, len(order))):
        r = result["results"][system]
        if r["error"]:
            lines.append(f"| {system} | {r['settings']} | - | failed: {r['error'][:60]} | | |")
        for i, c in enumerate(sorted(r["points"], key=int)):
            p = r["points"][c]
            name, settings = (system, r["settings"]) if i == 0 else ("", "")
            lines.append(f"| {name} | {settings} | {c} | {p['ops_per_sec']:,.0f} | "
                         f"{fmt(p['p50_ms'])} | {fmt(p['p99_ms'])} |")
    lines += ["", "| target | keeldb | peer | verdict |", "|---|---|---|---|"]
    for t in result["targets"]:
        if t["met"] is None:
            lines.append(f"| {t['target']} | - | - | not measured |")
            continue
        p99 = t["keeldb_p99_ms"]
        peer_p99 = t["peer_p99_ms"]
        lines.append(f"| {t['target']} | {t['keeldb_ops']:,.0f}/s, p99 "
                     f"{'-' if p99 is None else f'{p99:.1f}'} ms | {t['peer_ops']:,.0f}/s, p99 "
                     f"{'-' if peer_p99 is None else f'{peer_p99:.1f}'} ms ({t['peer_source']})"
                     f" | {'met' if t['met'] else '**not met**'} |")
    lines.append("")
    lines += [f"- note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"

"""Start, stop and restart real node processes on loopback (for tests and the CLI).

    specs = local_cluster("register", ["n1"], base_dir)
    procs = [NodeProcess(s) for s in specs]
    for p in procs: p.start()
    for p in procs: p.wait_ready()
    ...
    for p in procs: p.kill()          # SIGKILL by PID; never by name

Ports are picked by binding to port 0 and closing the socket (`free_port`); another process
could take one in between, which `wait_ready` reports as the child's exit with its log tail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from keeldb.errors import AdminError, NodeUnavailableError
from keeldb.runtime.real import admin
from keeldb.types import NodeId

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 15.0
LOG_TAIL_BYTES = 4000


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
        assert isinstance(port, int)
        return port


@dataclass(frozen=True)
class NodeSpec:
    system: str
    node: NodeId
    peers: dict[NodeId, tuple[str, int]]
    data_dir: Path
    client_port: int
    admin_port: int
    log_path: Path
    seed: str = "0"

    @property
    def client_addr(self) -> tuple[str, int]:
        return (LOOPBACK, self.client_port)

    @property
    def admin_addr(self) -> tuple[str, int]:
        return (LOOPBACK, self.admin_port)

    def argv(self) -> list[str]:
        peers = ",".join(f"{n}={h}:{p}" for n, (h, p) in sorted(self.peers.items()))
        return [sys.executable, "-m", "keeldb.runtime.real.runner", "--system", self.system,
                "--id", self.node, "--peers", peers, "--data", str(self.data_dir),
                "--client-port", str(self.client_port), "--admin-port", str(self.admin_port),
                "--seed", self.seed]


def local_cluster(system: str, nodes: Sequence[str], base_dir: Path) -> list[NodeSpec]:
    """Specs for `nodes` on loopback with fresh free ports, data and logs under `base_dir`."""
    peers = {NodeId(n): (LOOPBACK, free_port()) for n in nodes}
    return [NodeSpec(system, NodeId(n), peers, base_dir / n, free_port(), free_port(),
                     base_dir / f"{n}.log") for n in nodes]


class NodeProcess:
    """One node's OS process. Restartable: `kill()` then `start()` again keeps disk and ports."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.spec.log_path, "ab")  # closed in _signal()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.spec.argv(), stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL, env=env)
        self.starts += 1

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Poll the admin port until the node answers `status`; its status is returned."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise NodeUnavailableError(
                    f"node {self.spec.node} exited with {self.proc.returncode} before it was "
                    f"ready; log tail:\n{self.log_tail()}")
            try:
                return admin.status(self.spec.admin_addr, timeout_s=1.0)
            except AdminError:
                if time.monotonic() > deadline:
                    raise NodeUnavailableError(
                        f"node {self.spec.node} not ready after {timeout_s}s; log tail:\n"
                        f"{self.log_tail()}") from None
                time.sleep(0.02)

    def status(self) -> dict[str, Any]:
        return admin.status(self.spec.admin_addr)

    def kill(self) -> None:
        """SIGKILL (a crash: nothing unsynced survives) and reap."""
        self._signal(signal.SIGKILL)

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (a clean stop) and reap; SIGKILL if it does not exit in time."""
        self._signal(signal.SIGTERM, timeout_s)
        assert self.proc is not None
        return self.proc.returncode

    def _signal(self, sig: int, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self) -> str:
        try:
            data = self.spec.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-LOG_TAIL_BYTES:].decode(errors="replace")

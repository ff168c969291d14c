"""`keeldb serve` as a child process for integration tests: start it, talk to it, reap it.

`start(data, *args)` runs `python -m keeldb serve --port 0 --admin-port 0 --data <data>` and
waits for its ready line, which names the ports. `running(...)` is the same as a context
manager that always reaps the process (by its PID) on the way out; fixtures build on it.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
READY_TIMEOUT_S = 20
READY = re.compile(rb"redis://[^:]+:(\d+) admin=http://127\.0\.0\.1:(\d+)")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    data: Path

    def client(self, **kwargs: Any) -> Any:  # a redis.Redis
        import redis  # only the tests that speak through redis-py need it installed
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0), socket_timeout=20,
                           **kwargs)

    def http(self, path: str) -> tuple[int, str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError("the server did not stop within 15 s of the signal") from None

    def reap(self) -> None:
        """Teardown: SIGKILL the process if it still runs (by its PID), wait, close pipes."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def start(data: Path, *args: str) -> Server:
    proc = subprocess.Popen([sys.executable, "-m", "keeldb", "serve", "--port", "0",
                             "--admin-port", "0", "--data", str(data), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + READY_TIMEOUT_S
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        if sel.select(deadline - time.monotonic()):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    sel.close()
    match = READY.search(line)
    if match is None:
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"no ready line: {line!r}; stderr: {err.decode()[-2000:]}")
    return Server(proc, int(match.group(1)), int(match.group(2)), data)


@contextmanager
def running(data: Path, *args: str) -> Iterator[Server]:
    """A started server, reaped when the block ends (however it ends)."""
    srv = start(data, *args)
    try:
        yield srv
    finally:
        srv.reap()

"""PostgreSQL for `keeldb bench txn`: a throwaway cluster in a temporary directory.

`PostgresSystem(directory)` finds `initdb` and `postgres` (`$KEELDB_PG_BINDIR`, then `PATH`,
then `pg_config --bindir`, then Debian's versioned layout), runs `initdb` into a fresh
directory under `directory`, starts `postgres` listening on a free loopback port (and a unix
socket in its own directory only) with fsync=on and synchronous_commit=on, and on `close()`
stops it by PID (SIGINT: fast shutdown; SIGKILL after a bound) and removes the directory.

PostgreSQL refuses to run as root: when this process is root, the server runs as the
unprivileged user `$KEELDB_PG_USER`, else `postgres`, else `nobody` (the subprocess drops its
privileges itself; nothing system-wide is created). The client is psycopg 3 (`pip install
'keeldb[bench]'`). Anything missing raises `Unavailable`, and the benchmark skips PostgreSQL
with that note.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PG_LEVELS: dict[str, str] = {
    "read_committed": "READ COMMITTED",
    "snapshot": "REPEATABLE READ",  # snapshot isolation in PostgreSQL
    "serializable": "SERIALIZABLE",  # serializable snapshot isolation (SSI)
}
PG_USER = "keeldb"  # the database superuser initdb creates
HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.1
CONNECTIONS_MAX = 100  # max_connections; the benchmark opens at most CLIENTS_MAX + 1
LOG_TAIL_BYTES = 2_000
SERVER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("max_connections", str(CONNECTIONS_MAX)),
)
SHOWN = ("server_version", "fsync", "synchronous_commit", "wal_sync_method",
         "full_page_writes", "shared_buffers", "max_connections")
# SQLSTATEs that abort a transaction because of a concurrent one: retried, counted.
ABORT_SQLSTATES: dict[str, str] = {"40001": "serialization_failure", "40P01": "deadlock"}


class Unavailable(Exception):
    """This system cannot run here (a missing binary or library); the message says why."""


def find_bindir() -> Path | None:
    """A directory holding both `initdb` and `postgres`, or None."""
    def ok(d: str | Path | None) -> Path | None:
        if d and all(os.access(Path(d) / b, os.X_OK) for b in ("initdb", "postgres")):
            return Path(d)
        return None

    found = ok(os.environ.get("KEELDB_PG_BINDIR"))
    if found:
        return found
    initdb = shutil.which("initdb")
    if initdb:
        found = ok(Path(initdb).parent) or ok(Path(initdb).resolve().parent)
        if found:
            return found
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            found = ok(out)
            if found:
                return found
        except (OSError, subprocess.SubprocessError):
            pass

    def version(p: str) -> tuple[int, ...]:
        parts = Path(p).parent.name.split(".")
        return tuple(int(x) for x in parts if x.isdigit())

    # Debian/Ubuntu install every major version side by side in this layout.
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        found = ok(d)
        if found:
            return found
    return None


def server_account() -> tuple[int, int, str] | None:
    """(uid, gid, name) to run PostgreSQL as when this process is root; None when not root."""
    if os.geteuid() != 0:
        return None
    names = [n for n in (os.environ.get("KEELDB_PG_USER"), "postgres", "nobody") if n]
    for name in names:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid != 0:
            return pw.pw_uid, pw.pw_gid, name
    raise Unavailable(f"running as root and none of the users {names} exists to run "
                      "PostgreSQL as; set KEELDB_PG_USER to an unprivileged user")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(data.splitlines()[-3:])


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise Unavailable("psycopg (v3) is not installed; pip install 'keeldb[bench]'") from None
    return psycopg


def pg_abort_kind(exc: BaseException) -> str | None:
    """'serialization_failure' or 'deadlock' for SQLSTATE 40001/40P01, else None."""
    return ABORT_SQLSTATES.get(getattr(exc, "sqlstate", None) or "")


class _PgClient:
    def __init__(self, conn: Any, psycopg: Any) -> None:
        self.conn = conn
        self.psycopg = psycopg
        self.level: str | None = None

    def run_txn(self, level: str, ops: Sequence[tuple[bytes, bytes | None]]) -> float:
        from keeldb.bench.txn import Aborted
        if level != self.level:  # only between transactions (the connection is idle)
            self.conn.isolation_level = getattr(self.psycopg.IsolationLevel,
                                                PG_LEVELS[level].replace(" ", "_"))
            self.level = level
        try:
            with self.conn.cursor() as cur:
                for key, value in ops:
                    if value is None:
                        cur.execute("SELECT v FROM kv WHERE k = %s", (key,))
                        cur.fetchone()
                    else:
                        cur.execute("UPDATE kv SET v = %s WHERE k = %s", (value, key))
                        assert cur.rowcount == 1, f"update of {key!r} hit {cur.rowcount} rows"
            t0 = time.perf_counter()
            self.conn.commit()
            return time.perf_counter() - t0
        except self.psycopg.Error as exc:
            self.conn.rollback()
            kind = pg_abort_kind(exc)
            if kind is None:
                raise
            raise Aborted(kind) from exc

    def close(self) -> None:
        self.conn.close()


class PostgresSystem:
    """A private PostgreSQL server for one benchmark run."""

    name = "postgresql"

    def __init__(self, directory: Path) -> None:
        self.psycopg = _psycopg()
        bindir = find_bindir()
        if bindir is None:
            raise Unavailable("no initdb/postgres found (PATH, pg_config --bindir, "
                              "KEELDB_PG_BINDIR); install Debian's postgresql package")
        self.bindir = bindir
        account = server_account()
        self.account = account[2] if account else pwd.getpwuid(os.geteuid()).pw_name
        self.root = Path(tempfile.mkdtemp(prefix="keeldb-bench-pg-", dir=directory))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        drop: dict[str, Any] = {}
        if account:
            os.chown(self.root, account[0], account[1])
            drop = {"user": account[0], "group": account[1], "extra_groups": []}
        try:
            self._initdb(drop)
            self._start(drop)
            self._wait_ready()
            with self._connect(autocommit=True) as conn:
                conn.execute("CREATE TABLE kv (k bytea PRIMARY KEY, v bytea NOT NULL)")
                self.shown = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                              for name in SHOWN}
        except BaseException:
            self.close()
            raise

    def _initdb(self, drop: dict[str, Any]) -> None:
        cmd = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, "-A", "trust",
               "-E", "UTF8", "--locale=C", "--no-sync"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                                 cwd=self.root, check=False, **drop)
        except (OSError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"initdb as {self.account} could not run: {exc}") from None
        if res.returncode != 0:
            last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"initdb as user {self.account} failed (exit {res.returncode}): "
                              f"{last[0]}; is {self.root.parent} readable by that user? "
                              "pass --dir elsewhere")

    def _start(self, drop: dict[str, Any]) -> None:
        cmd = [str(self.bindir / "postgres"), "-D", str(self.data),
               "-c", f"listen_addresses={HOST}", "-c", f"port={self.port}",
               "-c", f"unix_socket_directories={self.root}"]
        for name, value in SERVER_SETTINGS:
            cmd += ["-c", f"{name}={value}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         cwd=self.root, start_new_session=True, **drop)

    def _connect(self, autocommit: bool = False) -> Any:
        return self.psycopg.connect(host=HOST, port=self.port, user=PG_USER, dbname="postgres",
                                    autocommit=autocommit, connect_timeout=5)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"postgres exited at start ({self.proc.returncode}): "
                                  f"{_tail(self.log)}")
            try:
                self._connect(autocommit=True).close()
                return
            except self.psycopg.OperationalError:
                time.sleep(POLL_S)
        raise Unavailable(f"postgres not ready after {READY_TIMEOUT_S:.0f} s: {_tail(self.log)}")

    def load(self, keys: int, value_bytes: int, seed: int) -> None:
        from keeldb.bench.txn import key_of
        rng = random.Random(f"{seed}:load")
        with self._connect(autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute("TRUNCATE kv")
                with cur.copy("COPY kv (k, v) FROM STDIN") as copy:
                    for i in range(keys):
                        copy.write_row((key_of(i), rng.randbytes(value_bytes)))
                cur.execute("VACUUM ANALYZE kv")

    def client(self) -> _PgClient:
        return _PgClient(self._connect(), self.psycopg)

    def settings(self) -> dict[str, Any]:
        return {**self.shown, "run_as": self.account,
                "durability": "fsync=on, synchronous_commit=on: every commit's WAL is "
                              "flushed before the commit returns",
                "levels": dict(PG_LEVELS)}

    def close(self) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL after a bound; remove the directory."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.root, ignore_errors=True)

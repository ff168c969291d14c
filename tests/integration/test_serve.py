"""`keeldb serve` as a real process, driven by real Redis clients.

Each server is `python -m keeldb serve --port 0 --admin-port 0 --data <tmp>` (started by
`tests.integration.serve_process`); its ready line names the ports. Every process started
here is stopped by its PID in teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.serve_process import Server, running, start

redis = pytest.importorskip("redis")


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def go(*args: str, data: Path | None = None) -> Server:
        srv = start(data or tmp_path / "data", *args)
        started.append(srv)
        return srv

    yield go
    for srv in started:  # teardown: every process we started, by PID
        srv.reap()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("serve") / "data", "--sweep-interval-ms", "50") as srv:
        yield srv


def raw(port: int, data: bytes, *, wait_close: bool = True) -> bytes:
    """Send bytes on a fresh socket; read until the server closes it (or a short lull)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        sock.settimeout(10 if wait_close else 0.5)
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            assert not wait_close, f"the server did not close the connection; got {out!r}"
        return out


# --- commands over redis-py ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_string_commands(shared: Server, protocol: int) -> None:
    r = shared.client(protocol=protocol)
    p = f"p{protocol}:"
    assert r.set(p + "a", "1") and r.get(p + "a") == b"1"
    assert r.incr(p + "a") == 2 and r.incrby(p + "a", 10) == 12 and r.decr(p + "a") == 11
    assert r.mset({p + "m1": "x", p + "m2": "y"})
    assert r.mget(p + "m1", p + "m2", p + "none") == [b"x", b"y", None]
    assert r.delete(p + "m1", p + "none") == 1 and r.get(p + "m1") is None
    assert r.set(p + "t", "v") and r.expire(p + "t", 100) and 99 <= r.ttl(p + "t") <= 100
    assert r.ttl(p + "a") == -1 and r.ttl(p + "none") == -2
    keys = sorted(r.scan_iter(match=p + "*", count=2))
    assert keys == sorted(k.encode() for k in (p + "a", p + "m2", p + "t"))
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.incr(p + "m2")
    r.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_multi_exec_watch(shared: Server, protocol: int) -> None:
    r, other = shared.client(protocol=protocol), shared.client()
    key = f"w{protocol}"
    pipe = r.pipeline(transaction=True)
    pipe.set(key, "1").incr(key).get(key)
    assert pipe.execute() == [True, 2, b"2"]
    with r.pipeline() as pipe:  # an untouched WATCH lets EXEC through
        pipe.watch(key)
        pipe.multi()
        pipe.incr(key)
        assert pipe.execute() == [3]
    with r.pipeline() as pipe:  # another client's write between WATCH and EXEC aborts it
        pipe.watch(key)
        other.set(key, "theirs")
        pipe.multi()
        pipe.set(key, "mine")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert r.get(key) == b"theirs"
    r.close()
    other.close()


def test_expiry_is_seen_and_swept(shared: Server) -> None:
    r = shared.client()
    r.set("exp:keep", "1")
    before = r.dbsize()
    r.set("exp:gone", "v", px=150)
    assert r.get("exp:gone") == b"v" and 0 < r.pttl("exp:gone") <= 150
    deadline = time.monotonic() + 10
    while r.get("exp:gone") is not None:  # the server's clock at proposal decides
        assert time.monotonic() < deadline, "a key with PX 150 never expired"
        time.sleep(0.05)
    while r.dbsize() > before:  # a Sweep proposal removed the record
        assert time.monotonic() < deadline, "the expired key was never swept"
        time.sleep(0.05)
    _, _, metrics = shared.http("/metrics")
    assert re.search(r"^keeldb_expired_keys_swept_total [1-9]", metrics, re.M), metrics
    r.close()


def test_concurrent_clients_and_pipelines(shared: Server) -> None:
    threads, rounds = 8, 150
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            r = shared.client(protocol=2 + n % 2)
            for i in range(rounds):
                r.incr("cc:counter")
                r.set(f"cc:{n}:{i}", f"{n}-{i}")
            pipe = r.pipeline(transaction=False)  # deeper than resp_pending_executes_max
            for _ in range(1500):
                pipe.incr(f"cc:pipe:{n}")
            assert pipe.execute() == list(range(1, 1501))
            r.close()
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not errors, errors
    r = shared.client()
    assert r.get("cc:counter") == str(threads * rounds).encode()
    for n in range(threads):
        assert r.mget([f"cc:{n}:{i}" for i in range(rounds)]) == [
            f"{n}-{i}".encode() for i in range(rounds)]
    r.close()


# --- bad input ----------------------------------------------------------------------------


def test_bad_input_gets_redis_errors_and_others_keep_working(shared: Server) -> None:
    r = shared.client()
    r.set("bad:k", "v")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="unknown command 'NOPE'"):
        r.execute_command("NOPE", "x")
    assert raw(shared.port, b"*1\r\n$4\r\nPING\r\n*abc\r\n").startswith(
        b"+PONG\r\n-ERR Protocol error: invalid multibulk length")
    assert raw(shared.port, b"*2\r\n$3\r\nGET\r\n$99999999999\r\n").startswith(
        b"-ERR Protocol error: invalid bulk length")
    assert raw(shared.port, b"\x00\xff\x13garbage\r\n", wait_close=False).startswith(b"-ERR")
    assert raw(shared.port, b"*1\r\n$4\r\nPINGxx\r\n").startswith(b"-ERR Protocol error")
    assert r.get("bad:k") == b"v" and r.ping()  # the first connection was never disturbed
    _, _, metrics = shared.http("/metrics")
    assert re.search(r"^keeldb_protocol_errors_total [3-9]", metrics, re.M), metrics
    r.close()


def test_metrics_and_status(shared: Server) -> None:
    r = shared.client()
    r.set("m:k", "v")
    r.get("m:k")
    status, ctype, body = shared.http("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    for name in ("keeldb_commands_total", "keeldb_command_errors_total",
                 'keeldb_command_latency_seconds_bucket{kind="write"',
                 'keeldb_command_latency_seconds_count{kind="read"}', "keeldb_fsyncs_total",
                 "keeldb_fsync_latency_seconds_count", "keeldb_connections ",
                 "keeldb_engine_wal_bytes_written"):
        assert name in body, name
    fsyncs = float(re.search(r"^keeldb_fsyncs_total (\S+)", body, re.M).group(1))  # type: ignore[union-attr]
    assert fsyncs >= 1  # sync=always: writes were fsynced
    status, ctype, body = shared.http("/status")
    info = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert info["role"] == "standalone" and info["node_id"] == "n1" and info["sync"] == "always"
    assert info["data_dir"] == str(shared.data) and info["keys"] >= 1
    assert info["applied_index"] >= 1 and info["engine"]["last_seq"] >= 1
    with pytest.raises(urllib.error.HTTPError) as exc:
        shared.http("/nope")
    assert exc.value.code == 404
    r.close()


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_redis_cli(shared: Server) -> None:
    def cli(*args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(shared.port), *args], capture_output=True,
                              text=True, timeout=30, check=True).stdout
    assert cli("set", "a", "b") == "OK\n"
    assert cli("get", "a") == "b\n"


# --- separate servers: auth, limits, durability ---------------------------------------------


def test_auth_when_password_set(launch: Callable[..., Server]) -> None:
    srv = launch("--password", "sesame")
    with pytest.raises(redis.AuthenticationError):
        srv.client().get("a")
    with pytest.raises(redis.AuthenticationError):
        srv.client(password="wrong").get("a")
    for protocol in (2, 3):
        r = srv.client(password="sesame", protocol=protocol)
        assert r.set("a", "1") and r.get("a") == b"1"
        r.close()
    assert raw(srv.port, b"GET a\r\n", wait_close=False) == b"-NOAUTH Authentication required.\r\n"
    assert srv.stop() == 0


def test_max_clients(launch: Callable[..., Server]) -> None:
    srv = launch("--max-clients", "2")
    first, second = srv.client(), srv.client()
    assert first.ping() and second.ping()
    assert raw(srv.port, b"PING\r\n") == b"-ERR max number of clients reached\r\n"
    second.close()
    deadline = time.monotonic() + 10
    while raw(srv.port, b"PING\r\nQUIT\r\n") != b"+PONG\r\n+OK\r\n":  # a slot frees up
        assert time.monotonic() < deadline, "a closed client's slot never came back"
        time.sleep(0.05)
    _, _, metrics = srv.http("/metrics")
    assert re.search(r"^keeldb_connections_rejected_total [1-9]", metrics, re.M)
    first.close()
    assert srv.stop() == 0


def test_sigkill_keeps_every_acknowledged_write(launch: Callable[..., Server], tmp_path: Path) -> None:
    """sync=always: SIGKILL while four clients write; after a restart every write that was
    acknowledged is there (unacknowledged ones may or may not be)."""
    srv = launch("--sync", "always")
    acked: dict[int, list[int]] = {n: [] for n in range(4)}
    stop = threading.Event()

    def writer(n: int) -> None:
        r = srv.client()
        try:
            for i in range(100_000):
                if stop.is_set():
                    return
                r.set(f"k:{n}:{i}", str(i))
                acked[n].append(i)
                if i % 10 == 0:
                    r.incr(f"count:{n}")
                    acked[n].append(-i - 1)  # an INCR after write i, acknowledged
        except (redis.ConnectionError, redis.TimeoutError):
            return  # the server died mid-request: that write is not acknowledged

    pool = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in pool:
        t.start()
    deadline = time.monotonic() + 20
    while sum(len(v) for v in acked.values()) < 400 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(10)
    stop.set()
    for t in pool:
        t.join(30)
    assert sum(len(v) for v in acked.values()) >= 400, "the writers made too little progress"
    again = launch("--sync", "always", data=srv.data)
    r = again.client()
    for n, done in acked.items():
        writes = [i for i in done if i >= 0]
        values = r.mget([f"k:{n}:{i}" for i in writes])
        missing = [i for i, v in zip(writes, values, strict=True) if v != str(i).encode()]
        assert not missing, f"client {n}: acknowledged writes lost after SIGKILL: {missing[:10]}"
        incrs = sum(1 for i in done if i < 0)
        assert int(r.get(f"count:{n}") or 0) >= incrs
    r.close()
    assert again.stop() == 0


def test_sigterm_syncs_and_closes_the_store(launch: Callable[..., Server]) -> None:
    """Even with sync=never a clean stop leaves every write on disk and the lock released."""
    srv = launch("--sync", "never")
    r = srv.client()
    r.mset({f"s:{i}": str(i) for i in range(500)})
    r.set("s:last", "x")
    r.close()
    assert srv.stop(signal.SIGTERM) == 0
    again = launch("--sync", "never", data=srv.data)  # the LOCK is free again
    r = again.client()
    assert r.get("s:last") == b"x" and r.get("s:499") == b"499"
    r.close()
    assert again.stop(signal.SIGINT) == 0


# --- the apply path in-process: no reply before its fsync -----------------------------------


def test_local_apply_path_replies_only_after_the_covering_fsync() -> None:
    """A SIGKILL cannot tell an fsynced write from one in the page cache, so the ordering
    "apply, fsync, then reply" is checked here with a recording stand-in for the store."""
    from keeldb.node.kvstate import Applied, Batch, Get, KvStateMachine, Set
    from keeldb.server.admin_http import ServerMetrics
    from keeldb.server.resp_server import LocalApplyPath
    from keeldb.storage.memory import MemoryEngine

    events: list[tuple[str, int]] = []
    sm = KvStateMachine(MemoryEngine())

    class RecordingStore:
        def sync(self) -> None:
            events.append(("sync", sm.applied_index))

    async def main() -> None:
        fatal: list[BaseException] = []
        path = LocalApplyPath(RecordingStore(), sm, asyncio.get_running_loop(),
                              ServerMetrics(lambda: None), sync_always=True,
                              on_fatal=fatal.append)
        path.start()
        assert path.try_inline(Batch((Set(b"x", b"1"),))) is None  # a write needs its fsync
        read = path.try_inline(Batch((Get(b"x"),)))  # idle: a read runs at once
        assert isinstance(read, Applied) and read.replies == (None,)

        def on_reply(n: int) -> Callable[[object], None]:
            return lambda result: events.append(("reply", n))

        for chunk in range(10):
            path.submit([(Batch((Set(b"k%d" % n, b"v"),)), on_reply(n))
                         for n in range(chunk * 5, chunk * 5 + 5)])
            assert path.try_inline(Batch((Get(b"x"),))) is None  # writes in flight: queue it
            await asyncio.sleep(0)
        await path.idle.wait()
        await path.stop()
        assert not fatal

    asyncio.run(main())
    synced = 0
    replies = 0
    for kind, n in events:
        if kind == "sync":
            synced = n
        else:
            assert n + 1 <= synced, f"write {n} (index {n + 1}) answered before its fsync"
            replies += 1
    assert replies == 50 and sm.applied_index == 50


def test_a_client_that_never_reads_is_dropped(shared: Server) -> None:
    """Replies pile up for a client that pipelines big GETs and reads nothing: past
    server_reply_backlog_bytes_max (64 MiB) the server drops it and serves the others."""
    r = shared.client()
    r.set("big", b"x" * (1024 * 1024))
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 200)  # 200 MiB of replies
        deadline = time.monotonic() + 20
        while True:
            _, _, metrics = shared.http("/metrics")
            if re.search(r"^keeldb_clients_dropped_total [1-9]", metrics, re.M):
                break
            assert time.monotonic() < deadline, "a client 200 MiB behind was never dropped"
            time.sleep(0.05)
    assert r.get("big") == b"x" * (1024 * 1024) and r.delete("big") == 1
    r.close()

"""Real Redis clients against the command layer over TCP: redis-py (RESP2 and RESP3),
redis-cli and redis-benchmark (skipped when not installed)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from keeldb.server.commands import ConnectionConfig
from tests.integration.local_resp_server import LocalRespServer

redis = pytest.importorskip("redis")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRespServer]:
    with LocalRespServer(ConnectionConfig(password="sesame")).running() as srv:
        yield srv


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py(server: LocalRespServer, protocol: int) -> None:
    r = redis.Redis(port=server.port, password="sesame", protocol=protocol,
                    client_name=f"py{protocol}")
    assert r.ping()
    assert r.set("a", "1") and r.get("a") == b"1"
    assert r.set("a", "2", nx=True) is None
    assert r.incrby("a", 5) == 6 and r.decr("a") == 5
    assert r.mset({"m1": "x", "m2": "y"}) and r.mget("m1", "m2", "zz") == [b"x", b"y", None]
    assert r.set("t", "v", ex=100) and 99 <= r.ttl("t") <= 100
    assert r.expire("t", 200, gt=True) and r.persist("t") and r.ttl("t") == -1
    assert sorted(r.scan_iter(match="m*", count=1)) == [b"m1", b"m2"]
    assert sorted(r.keys("m?")) == [b"m1", b"m2"]
    assert r.client_getname() == f"py{protocol}".encode() or r.client_getname() == f"py{protocol}"
    pipe = r.pipeline(transaction=True)
    pipe.set("p", "1").incr("p").get("p")
    assert pipe.execute() == [True, 2, b"2"]
    with r.pipeline() as pipe:
        pipe.watch("w")
        r.set("w", "changed")  # another client's write between WATCH and EXEC
        pipe.multi()
        pipe.set("w", "mine")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("GET")
    assert r.dbsize() >= 6 and r.delete("a", "m1", "nope") == 2
    assert "redis_version" in r.info()
    r.close()


def test_redis_py_needs_the_password(server: LocalRespServer) -> None:
    r = redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        r.get("a")
    r.close()


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_redis_cli(server: LocalRespServer) -> None:
    def cli(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(["redis-cli", "-p", str(server.port), "-a", "sesame",
                               "--no-auth-warning", *args], input=stdin, capture_output=True,
                              text=True, timeout=30, check=True).stdout
    assert cli("SET", "cli", "hello") == "OK\n"
    assert cli("GET", "cli") == "hello\n"
    assert cli("-3", "GET", "nope") == "\n"  # nil prints as an empty line when piped
    assert cli("-3", "HELLO", "3").startswith("server keeldb\n")  # a RESP3 map
    assert "ERR unknown command 'NOPE'" in cli("NOPE")
    script = "SET x 1\nINCR x\nMULTI\nINCR x\nEXEC\nCOMMAND COUNT\n"
    out = cli(stdin=script).split("\n")
    assert out[:5] == ["OK", "2", "OK", "QUEUED", "3"]


@pytest.mark.skipif(shutil.which("redis-benchmark") is None,
                    reason="redis-benchmark is not installed")
def test_redis_benchmark_runs(server: LocalRespServer) -> None:
    out = subprocess.run(["redis-benchmark", "-p", str(server.port), "-a", "sesame", "-n", "2000",
                          "-c", "4", "-P", "4", "-t", "set,get,incr,mset", "-q"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for name in ("SET", "GET", "INCR", "MSET"):
        assert f"{name}" in out and "requests per second" in out, out

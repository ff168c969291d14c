"""The one load generator of `keeldb bench cluster`: closed-loop SETs over N connections.

Every system is driven by this same code in the same process, so the generator's CPU cost
(it shares the machine's cores with the servers) is the same for all of them:

- one TCP connection per unit of concurrency, each with exactly one request outstanding:
  the next request is written from `data_received` of the previous reply (no task switch);
- two wire dialects with the same request shape: RESP (`SET key value`, for keeldb, Redis and
  the PySyncObj KV server) and HTTP/1.1 keep-alive JSON (`POST /v3/kv/put` of etcd's v3
  gateway, key and value base64);
- a warm-up, then a measured window of fixed duration: a request counts if it was sent and
  answered inside the window; its latency is send -> complete reply.

Sans-threads and deterministic in what it sends (keys from a seeded generator); uvloop is
used when installed (`run_point(..., use_uvloop=True)`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from keeldb import limits

RESP, HTTP = "resp", "http"
KEY_SPACE = 100_000  # distinct keys written (random, seeded)
REPLY_BYTES_MAX = 64 * 1024  # a reply longer than this is a protocol error of the server


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to send: `dialect` is RESP or HTTP."""

    host: str
    port: int
    dialect: str


@dataclass(frozen=True, slots=True)
class PointResult:
    concurrency: int
    seconds: float
    ops: int
    errors: int
    ops_per_sec: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    first_error: str

    def to_json(self) -> dict[str, object]:
        return {"concurrency": self.concurrency, "seconds": round(self.seconds, 3),
                "ops": self.ops, "errors": self.errors,
                "ops_per_sec": round(self.ops_per_sec, 1),
                "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 3),
                "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
                "max_ms": None if self.max_ms is None else round(self.max_ms, 3),
                "first_error": self.first_error}


def resp_set(key: bytes, value: bytes) -> bytes:
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value)


def http_put(host: str, port: int, key: bytes, value: bytes) -> bytes:
    body = json.dumps({"key": base64.b64encode(key).decode(),
                       "value": base64.b64encode(value).decode()}).encode()
    return (b"POST /v3/kv/put HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port, len(body), body))


def resp_reply_end(buf: bytearray) -> tuple[int, str]:
    """(bytes of the first complete reply in `buf` or 0, error text or ""). SET replies are
    one line: +OK, or -ERR/-TRYAGAIN ..."""
    end = buf.find(b"\r\n")
    if end < 0:
        return 0, ""
    line = bytes(buf[:end])
    return end + 2, "" if line[:1] == b"+" else line.decode(errors="replace")


def http_reply_end(buf: bytearray) -> tuple[int, str]:
    """(bytes of the first complete HTTP response in `buf` or 0, error text or "")."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return 0, ""
    head = bytes(buf[:head_end]).decode("latin-1")
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, val = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(val.strip())
    total = head_end + 4 + length
    if len(buf) < total:
        return 0, ""
    status = head.split(" ", 2)
    ok = len(status) > 1 and status[1] == "200"
    return total, "" if ok else f"HTTP {head.splitlines()[0]}"


class _Meter:
    """Shared by the connections of one point: the window and the samples."""

    def __init__(self) -> None:
        self.measuring = False
        self.stopping = False
        self.ops = 0
        self.errors = 0
        self.first_error = ""
        self.samples: list[int] = []  # latencies in ns of the measured window
        self.outstanding = 0
        self.drained = asyncio.Event()


class _Conn(asyncio.Protocol):
    def __init__(self, meter: _Meter, make: Callable[[], bytes],
                 reply_end: Callable[[bytearray], tuple[int, str]]) -> None:
        self.meter, self.make, self.reply_end = meter, make, reply_end
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_ns = 0
        self.counted = False  # the request in flight was sent inside the window

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(self) -> None:
        assert self.transport is not None
        m = self.meter
        if m.stopping:
            return
        m.outstanding += 1
        self.counted = m.measuring
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(self.make())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        n, err = self.reply_end(buf)
        if not n:
            if len(buf) > REPLY_BYTES_MAX:
                raise AssertionError(f"a reply of over {REPLY_BYTES_MAX} bytes: {bytes(buf[:80])!r}")
            return
        assert n == len(buf), f"more than one reply for one request: {bytes(buf[:200])!r}"
        del buf[:]
        now = time.perf_counter_ns()
        m = self.meter
        m.outstanding -= 1
        if self.counted and m.measuring:
            if err:
                m.errors += 1
                m.first_error = m.first_error or err
            else:
                m.ops += 1
                if len(m.samples) < limits.bench_cluster_samples_max:
                    m.samples.append(now - self.sent_ns)
        if m.stopping:
            if not m.outstanding:
                m.drained.set()
            return
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        m = self.meter
        if not m.stopping:
            m.errors += 1
            m.first_error = m.first_error or f"connection lost ({exc})"


def _percentile(sorted_ns: list[int], q: float) -> float | None:
    if not sorted_ns:
        return None
    i = min(len(sorted_ns) - 1, max(0, int(round(q * len(sorted_ns))) - 1))
    return sorted_ns[i] / 1e6


async def _point(target: Target, concurrency: int, seconds: float, warmup_s: float,
                 value_bytes: int, seed: int) -> PointResult:
    assert 1 <= concurrency <= limits.bench_cluster_concurrency_max, concurrency
    loop = asyncio.get_running_loop()
    rng = random.Random(f"{seed}:keys")
    value = bytes(rng.randrange(97, 123) for _ in range(value_bytes))
    keys = [b"key:%012d" % rng.randrange(KEY_SPACE) for _ in range(4096)]
    counter = [0]

    def next_key() -> bytes:
        counter[0] += 1
        return keys[counter[0] & 4095]

    if target.dialect == RESP:
        def make() -> bytes:
            return resp_set(next_key(), value)
        reply_end = resp_reply_end
    else:
        assert target.dialect == HTTP, target
        host, port = target.host, target.port

        def make() -> bytes:
            return http_put(host, port, next_key(), value)
        reply_end = http_reply_end
    meter = _Meter()
    conns: list[_Conn] = []
    try:
        for _ in range(concurrency):
            _, proto = await loop.create_connection(lambda: _Conn(meter, make, reply_end),
                                                    target.host, target.port)
            conns.append(proto)
        for c in conns:
            c.send()
        await asyncio.sleep(warmup_s)
        meter.measuring = True
        for c in conns:
            c.counted = False  # requests in flight now were sent before the window
        began = time.perf_counter()
        await asyncio.sleep(seconds)
        meter.measuring = False
        elapsed = time.perf_counter() - began
        meter.stopping = True
        if meter.outstanding:
            try:
                await asyncio.wait_for(meter.drained.wait(), limits.bench_cluster_drain_s)
            except TimeoutError:
                meter.first_error = meter.first_error or (
                    f"{meter.outstanding} requests unanswered {limits.bench_cluster_drain_s} s "
                    "after the window")
    finally:
        meter.stopping = True
        for c in conns:
            if c.transport is not None:
                c.transport.close()
    samples = sorted(meter.samples)
    return PointResult(concurrency, elapsed, meter.ops, meter.errors, meter.ops / elapsed,
                       _percentile(samples, 0.50), _percentile(samples, 0.99),
                       samples[-1] / 1e6 if samples else None, meter.first_error)


def run_point(target: Target, concurrency: int, seconds: float, *, warmup_s: float = 1.0,
              value_bytes: int = 100, seed: int = 1, use_uvloop: bool = True) -> PointResult:
    """Drive `target` with `concurrency` connections for `seconds` (after `warmup_s`)."""
    coro = _point(target, concurrency, seconds, warmup_s, value_bytes, seed)
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def uvloop_version() -> str | None:
    try:
        import uvloop
    except ImportError:
        return None
    return str(uvloop.__version__)

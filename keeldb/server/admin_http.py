"""The server's admin port: a tiny HTTP/1.1 endpoint on loopback.

    GET /metrics   Prometheus text format (the `prometheus-client` package's exposition)
    GET /status    JSON: node id, role, data dir, uptime, engine stats

One request per connection (`Connection: close`); the request line and headers are bounded by
`limits.admin_request_bytes_max` and must arrive within `limits.admin_read_timeout_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from keeldb import limits
from keeldb.storage.engine import Stats

ADMIN_HOST = "127.0.0.1"  # the admin port never listens beyond loopback
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5)
_GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
StatsSource = Callable[[], Stats | None]


class _EngineCollector(Collector):
    """Every numeric field of `db.stats()` as a gauge `keeldb_engine_<field>`, read at scrape
    time (fsync counters appear here too once the engine reports them)."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._source()
        if stats is None:
            return
        for f in dataclasses.fields(stats):
            value = getattr(stats, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield GaugeMetricFamily(f"keeldb_engine_{f.name}", f"db.stats().{f.name}",
                                        value=float(value))
        files = GaugeMetricFamily("keeldb_engine_level_files", "tables per LSM level",
                                  labels=["level"])
        size = GaugeMetricFamily("keeldb_engine_level_bytes", "bytes per LSM level",
                                 labels=["level"])
        for level in stats.levels:
            files.add_metric([str(level.level)], level.files)
            size.add_metric([str(level.level)], level.bytes)
        yield files
        yield size


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (several servers may share
    a process in tests). Counters and histograms are thread-safe (the apply thread observes
    fsyncs)."""

    def __init__(self, stats: StatsSource) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=False)
        self.commands = Counter("keeldb_commands", "Commands answered (one reply each)",
                                registry=reg)
        self.errors = Counter("keeldb_command_errors", "Error replies sent", registry=reg)
        self.protocol_errors = Counter("keeldb_protocol_errors",
                                       "Connections closed for bad RESP or a request limit",
                                       registry=reg)
        self.latency = Histogram("keeldb_command_latency_seconds",
                                 "Proposal to result of a command batch: queue, apply, fsync",
                                 ["kind"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.fsyncs = Counter("keeldb_fsyncs", "WAL fsyncs issued by the server (sync=always)",
                              registry=reg)
        self.fsync_latency = Histogram("keeldb_fsync_latency_seconds", "WAL fsync time",
                                       buckets=_LATENCY_BUCKETS, registry=reg)
        self.group_batches = Histogram("keeldb_apply_group_batches",
                                       "Batches applied per group (per fsync with sync=always)",
                                       buckets=_GROUP_BUCKETS, registry=reg)
        self.connections = Gauge("keeldb_connections", "Open client connections", registry=reg)
        self.accepted = Counter("keeldb_connections_accepted", "Client connections accepted",
                                registry=reg)
        self.rejected = Counter("keeldb_connections_rejected",
                                "Connections refused at --max-clients", registry=reg)
        self.dropped = Counter("keeldb_clients_dropped",
                               "Clients dropped over server_reply_backlog_bytes_max",
                               registry=reg)
        self.expired = Counter("keeldb_expired_keys_swept", "Expired keys removed by sweeps",
                               registry=reg)
        self.applied_index = Gauge("keeldb_applied_index", "Last applied batch index",
                                   registry=reg)
        reg.register(_EngineCollector(stats))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class AdminServer:
    """Serves /metrics and /status on ADMIN_HOST:port (0 = any free port)."""

    def __init__(self, port: int, metrics: ServerMetrics,
                 status: Callable[[], dict[str, Any]]) -> None:
        self._port = port
        self._metrics = metrics
        self._status = status
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the admin server is not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, ADMIN_HOST, self._port,
                                                  limit=limits.admin_request_bytes_max)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          limits.admin_read_timeout_ms / 1000)
            status, ctype, body = self._route(head)
        except asyncio.LimitOverrunError:
            status, ctype, body = 431, "text/plain", (
                f"request head over admin_request_bytes_max={limits.admin_request_bytes_max}"
                "\n").encode()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            writer.close()
            return
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _route(self, head: bytes) -> tuple[int, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, "text/plain", b"bad request line\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return 405, "text/plain", b"only GET is served\n"
        if target == b"/metrics":
            return 200, CONTENT_TYPE_LATEST, self._metrics.exposition()
        if target == b"/status":
            body = json.dumps(self._status(), indent=2, sort_keys=True, default=str)
            return 200, "application/json", (body + "\n").encode()
        return 404, "text/plain", b"not found: try /metrics or /status\n"

"""The server's admin port: a tiny HTTP/1.1 endpoint on loopback.

    GET /metrics   Prometheus text format (the `prometheus-client` package's exposition)
    GET /status    JSON: node id, role, data dir, uptime, engine stats
    POST /cluster/add|remove|transfer   Raft mode: membership and leadership, a JSON body in
                   and a JSON reply out (`keeldb.server.raft_admin`; 4xx/5xx with a typed
                   `error` when it did not happen)

One request per connection (`Connection: close`); the request line and headers are bounded by
`limits.admin_request_bytes_max` and must arrive within `limits.admin_read_timeout_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from keeldb import limits
from keeldb.server.plain_metrics import PlainCollector, PlainCounter, PlainGauge, PlainHistogram
from keeldb.storage.engine import Stats

log = logging.getLogger("keeldb.admin_http")
ADMIN_HOST = "127.0.0.1"  # the admin port never listens beyond loopback
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5)
_GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
StatsSource = Callable[[], Stats | None]
# (action, JSON body) -> (HTTP status, JSON reply): the POST /cluster/<action> handler
Actions = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
            421: "Misdirected Request", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout"}


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


class _RaftCollector(Collector):
    """A Raft node's state as gauges `keeldb_raft_*`, read from its status at scrape time."""

    _FIELDS = (("term", "term"), ("commit", "commit_index"), ("applied", "applied_index"),
               ("last_index", "last_index"), ("snapshots_installed", "snapshots_installed"),
               ("snapshots_taken", "snapshots_taken"), ("votes_refused", "votes_refused"))

    def __init__(self, source: Callable[[], dict[str, Any]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        st = self._source()
        if "term" not in st:
            return  # recovering or down
        for key, name in self._FIELDS:
            yield GaugeMetricFamily(f"keeldb_raft_{name}", f"raft status {key}",
                                    value=float(st.get(key) or 0))
        yield GaugeMetricFamily("keeldb_raft_is_leader", "1 on the leader",
                                value=float(st.get("role") == "leader"))
        yield GaugeMetricFamily("keeldb_raft_refuse_votes",
                                "1 on a member found wiped (it neither votes nor campaigns)",
                                value=float(bool(st.get("refuse_votes"))))
        yield GaugeMetricFamily("keeldb_raft_apply_lag", "commit index minus applied index",
                                value=float((st.get("commit") or 0) - (st.get("applied") or 0)))
        voters = GaugeMetricFamily("keeldb_raft_members", "members by kind", labels=["kind"])
        voters.add_metric(["voter"], len(st.get("voters") or ()))
        voters.add_metric(["learner"], len(st.get("learners") or ()))
        yield voters
        match = GaugeMetricFamily("keeldb_raft_peer_match", "leader: a peer's match index",
                                  labels=["peer"])
        inflight = GaugeMetricFamily("keeldb_raft_peer_inflight",
                                     "leader: unacknowledged appends to a peer", labels=["peer"])
        for peer, pr in sorted((st.get("progress") or {}).items()):
            match.add_metric([peer], pr["match"])
            inflight.add_metric([peer], pr["inflight"])
        yield match
        yield inflight


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (several servers may share
    a process in tests). The per-request ones (commands, errors, latency, applied index) are
    plain values written by one thread (see plain_metrics); the rest are prometheus_client's
    thread-safe ones (the apply thread observes fsyncs)."""

    def __init__(self, stats: StatsSource) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=False)
        # Updated per request on the loop: lock-free, published at scrape (plain_metrics).
        plain = PlainCollector(reg)
        self.commands = plain.add(PlainCounter("keeldb_commands",
                                               "Commands answered (one reply each)"))
        self.errors = plain.add(PlainCounter("keeldb_command_errors", "Error replies sent"))
        self.protocol_errors = Counter("keeldb_protocol_errors",
                                       "Connections closed for bad RESP or a request limit",
                                       registry=reg)
        self.latency = plain.add(PlainHistogram(
            "keeldb_command_latency_seconds",
            "Proposal to result of a command batch: queue, apply, fsync", ["kind"],
            _LATENCY_BUCKETS))
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
        self.applied_index = plain.add(PlainGauge("keeldb_applied_index",
                                                  "Last applied batch index"))
        reg.register(_EngineCollector(stats))

    def watch_raft(self, status: Callable[[], dict[str, Any]]) -> None:
        """Export a Raft node's status (`RaftNode.status()`) as `keeldb_raft_*` gauges."""
        self.registry.register(_RaftCollector(status))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class AdminServer:
    """Serves /metrics and /status on ADMIN_HOST:port (0 = any free port)."""

    def __init__(self, port: int, metrics: ServerMetrics,
                 status: Callable[[], dict[str, Any]], actions: Actions | None = None) -> None:
        self._port = port
        self._metrics = metrics
        self._status = status
        self._actions = actions
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
            if head.startswith(b"POST "):
                status, ctype, body = await self._post(head, reader)
            else:
                status, ctype, body = self._route(head)
        except asyncio.LimitOverrunError:
            status, ctype, body = 431, "text/plain", (
                f"request head over admin_request_bytes_max={limits.admin_request_bytes_max}"
                "\n").encode()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            writer.close()
            return
        reason = _REASONS[status]
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
            return 405, "text/plain", b"only GET (and POST /cluster/...) is served\n"
        if target == b"/metrics":
            return 200, CONTENT_TYPE_LATEST, self._metrics.exposition()
        if target == b"/status":
            body = json.dumps(self._status(), indent=2, sort_keys=True, default=str)
            return 200, "application/json", (body + "\n").encode()
        return 404, "text/plain", b"not found: try /metrics or /status\n"

    async def _post(self, head: bytes, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        """POST /cluster/<action> with a JSON object body (bounded by admin_body_bytes_max)."""
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[1].startswith(b"/cluster/"):
            return _json(404, {"ok": False, "error": "not-found",
                               "message": "POST /cluster/add|remove|transfer"})
        if self._actions is None:
            return _json(404, {"ok": False, "error": "not-raft",
                               "message": "membership needs a Raft node (keeldb serve --id "
                                          "--peers or --join)"})
        length = -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
        if length < 0:
            return _json(411, {"ok": False, "error": "bad-request",
                               "message": "send a Content-Length with the JSON body"})
        if length > limits.admin_body_bytes_max:
            return _json(413, {"ok": False, "error": "bad-request",
                               "message": f"body of {length} bytes, limit "
                                          f"admin_body_bytes_max={limits.admin_body_bytes_max}"})
        raw = await asyncio.wait_for(reader.readexactly(length),
                                     limits.admin_read_timeout_ms / 1000)
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            body = exc
        if not isinstance(body, dict):
            return _json(400, {"ok": False, "error": "bad-request",
                               "message": f"the body must be a JSON object, got {raw[:80]!r}"})
        action = parts[1][len(b"/cluster/"):].split(b"?", 1)[0].decode(errors="replace")
        try:
            code, reply = await self._actions(action, body)
        except Exception as exc:  # a bug: answer and log it, keep the admin port up
            log.exception("admin POST /cluster/%s failed", action)
            return _json(500, {"ok": False, "error": "internal", "message": repr(exc)})
        return _json(code, reply)


def _json(code: int, obj: dict[str, Any]) -> tuple[int, str, bytes]:
    return code, "application/json", (json.dumps(obj, sort_keys=True, default=str) + "\n").encode()

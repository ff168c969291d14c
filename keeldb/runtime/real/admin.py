"""The admin port of a real node: JSON lines over TCP on loopback, and its client functions.

One JSON object per line in, one per line out, any number per connection:

    {"op": "status"}
    {"op": "partition", "drop_to": ["n2"], "drop_from": ["n2"],
     "delay_to": ["n3"], "delay_from": [], "delay_ms": 200}
    {"op": "isolate"}          drop everything to and from every peer
    {"op": "heal"}             clear every fault

Answers carry `"ok": true` and the op's data, or `"ok": false, "error": "..."`. A partition
replaces the node's whole fault state (it does not add to it), so a test always knows what is
in force. Traffic to clients is never affected, only node-to-node links.

The client side (`admin_call`, `partition`, `isolate`, `heal`, `status`) is synchronous
(plain sockets) so the CLI and tests can use it without an event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from keeldb import limits
from keeldb.errors import AdminError, KeeldbError
from keeldb.runtime.real.transport import LinkFaults, Transport
from keeldb.types import NodeId

log = logging.getLogger("keeldb.admin")

Address = tuple[str, int]
StatusFn = Callable[[], dict[str, Any]]
OPS = ("status", "partition", "isolate", "heal")


def _peer_list(obj: dict[str, Any], field: str) -> frozenset[NodeId]:
    value = obj.get(field, [])
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise AdminError(f"{field!r} must be a list of node ids, got {value!r}")
    return frozenset(NodeId(p) for p in value)


def faults_from_command(obj: dict[str, Any]) -> LinkFaults:
    """The `LinkFaults` a partition command asks for; `AdminError` if it is malformed."""
    allowed = {"op", "drop_to", "drop_from", "delay_to", "delay_from", "delay_ms"}
    extra = sorted(set(obj) - allowed)
    if extra:
        raise AdminError(f"unknown field(s) {extra} in partition; allowed: {sorted(allowed)}")
    delay_ms = obj.get("delay_ms", 0)
    if (not isinstance(delay_ms, int) or isinstance(delay_ms, bool)
            or not 0 <= delay_ms <= limits.fault_delay_ms_max):
        raise AdminError(f"delay_ms={delay_ms!r} must be an integer in "
                         f"0..{limits.fault_delay_ms_max} (limits.fault_delay_ms_max)")
    faults = LinkFaults(
        drop_to=_peer_list(obj, "drop_to"), drop_from=_peer_list(obj, "drop_from"),
        delay_to=_peer_list(obj, "delay_to"), delay_from=_peer_list(obj, "delay_from"),
        delay_ms=delay_ms)
    if delay_ms and not (faults.delay_to or faults.delay_from):
        raise AdminError("delay_ms given without peers: name them in delay_to/delay_from")
    return faults


class AdminServer:
    """Serves the admin ops for one node: faults go to its transport, status to `status_fn`."""

    def __init__(self, transport: Transport, status_fn: StatusFn) -> None:
        self._transport = transport
        self._status_fn = status_fn
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.requests = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=limits.admin_request_bytes_max, reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None, "admin server not started"
        port = self._server.sockets[0].getsockname()[1]
        assert isinstance(port, int)
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()

    def handle(self, obj: Any) -> dict[str, Any]:
        """Answer one decoded request (also usable without a socket)."""
        self.requests += 1
        try:
            if not isinstance(obj, dict) or obj.get("op") not in OPS:
                op = obj.get("op") if isinstance(obj, dict) else obj
                raise AdminError(f"unknown admin op {op!r}; ops: {', '.join(OPS)}")
            op = obj["op"]
            if op == "partition":
                self._transport.set_faults(faults_from_command(obj))
            elif op == "isolate":
                everyone = frozenset(self._transport.peers)
                self._transport.set_faults(LinkFaults(drop_to=everyone, drop_from=everyone))
            elif op == "heal":
                self._transport.set_faults(LinkFaults())
            if op == "status":
                return {"ok": True, **self._status_fn()}
            log.warning("%s: admin %s -> faults %s", self._transport.node, op,
                        self._transport.faults.to_json())
            return {"ok": True, "faults": self._transport.faults.to_json()}
        except KeeldbError as exc:
            return {"ok": False, "error": exc.message}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= limits.client_connections_max:
            writer.close()
            return
        self._conns.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the StreamReader limit
                    writer.write(_line({"ok": False, "error": "admin request over "
                                        f"{limits.admin_request_bytes_max} bytes"}))
                    return
                if not line:
                    return
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    answer = {"ok": False, "error": f"admin request is not JSON: {exc}"}
                else:
                    answer = self.handle(obj)
                writer.write(_line(answer))
                await writer.drain()
        except (OSError, ConnectionError) as exc:
            log.info("admin connection ended: %s", exc)
        finally:
            self._conns.discard(writer)
            writer.close()


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"


# --- client side ---------------------------------------------------------------------------


def admin_call(addr: Address, request: dict[str, Any], *, timeout_s: float = 5.0
               ) -> dict[str, Any]:
    """Send one admin request and return the answer; `AdminError` if refused or unreachable."""
    try:
        with socket.create_connection(addr, timeout=timeout_s) as sock:
            sock.sendall(_line(request))
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise AdminError(f"admin port {addr[0]}:{addr[1]} closed the connection "
                                     "without an answer")
                buf += chunk
                if len(buf) > limits.frame_bytes_max:
                    raise AdminError(f"admin answer from {addr[0]}:{addr[1]} is over "
                                     f"{limits.frame_bytes_max} bytes")
    except OSError as exc:
        raise AdminError(f"cannot reach the admin port {addr[0]}:{addr[1]}: {exc}; "
                         "is the node running?") from exc
    try:
        answer = json.loads(buf)
    except ValueError as exc:
        raise AdminError(f"admin answer from {addr[0]}:{addr[1]} is not JSON: {exc}") from exc
    if not isinstance(answer, dict):
        raise AdminError(f"admin answer is not an object: {answer!r}")
    if not answer.get("ok"):
        raise AdminError(f"admin {request.get('op')!r} refused by {addr[0]}:{addr[1]}: "
                         f"{answer.get('error')}")
    return answer


def partition(addr: Address, *, drop_to: Iterable[str] = (), drop_from: Iterable[str] = (),
              delay_to: Iterable[str] = (), delay_from: Iterable[str] = (),
              delay_ms: int = 0, timeout_s: float = 5.0) -> dict[str, Any]:
    """Replace the node's link faults; returns the faults now in force."""
    return admin_call(addr, {"op": "partition", "drop_to": sorted(drop_to),
                             "drop_from": sorted(drop_from), "delay_to": sorted(delay_to),
                             "delay_from": sorted(delay_from), "delay_ms": delay_ms},
                      timeout_s=timeout_s)["faults"]


def isolate(addr: Address, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Cut the node off from every peer, both directions."""
    return admin_call(addr, {"op": "isolate"}, timeout_s=timeout_s)["faults"]


def heal(addr: Address, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Clear every link fault of the node."""
    return admin_call(addr, {"op": "heal"}, timeout_s=timeout_s)["faults"]


def status(addr: Address, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """The node's status: id, pid, ports, faults, transport and driver counters."""
    return admin_call(addr, {"op": "status"}, timeout_s=timeout_s)

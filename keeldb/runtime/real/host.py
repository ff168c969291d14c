"""`NodeHost`: one node in one OS process — driver, real world, transport, client and admin ports.

    host = NodeHost(HostConfig(...), factory)
    await host.start()          # listen on all three ports, start the node (recovering its disk)
    code = await host.wait()    # until stop(): SIGTERM, a Halt effect or a crashed callback
    await host.close()

The client port speaks the frames of `keeldb.codec.frame` carrying the requests and replies of
`keeldb.codec.message`; each request becomes a `ClientRequest` with a process-unique id and
its `Reply` is routed back to the connection (and client id) it came from.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from keeldb import limits
from keeldb.codec.frame import FrameDecoder, encode_frame
from keeldb.codec.message import ClientAnswer, parse_call
from keeldb.errors import FrameError
from keeldb.node.effects import ClientRequest, Node, Received, Reply
from keeldb.ports import Disk
from keeldb.runtime.driver import Driver
from keeldb.runtime.real.admin import AdminServer
from keeldb.runtime.real.disk import RealDisk
from keeldb.runtime.real.transport import Address, Transport
from keeldb.runtime.real.world import RealWorld
from keeldb.types import NodeId

log = logging.getLogger("keeldb.host")

EXIT_HALTED = 70  # the node halted itself or a callback crashed (EX_SOFTWARE)
READ_CHUNK_BYTES = 64 * 1024


@dataclass
class HostConfig:
    node: NodeId
    peers: Mapping[NodeId, Address]  # every node of the cluster, this one included
    data_dir: str
    client: Address = ("127.0.0.1", 0)
    admin: Address = ("127.0.0.1", 0)
    system: str = ""
    seed: int | str = 0
    send_queue_frames_max: int = limits.send_queue_frames_max
    io_in_thread: bool = True

    def __post_init__(self) -> None:
        assert self.node in self.peers, f"{self.node!r} missing from its own peer map"


class _ClientConn:
    __slots__ = ("writer", "pending", "closed")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending = 0
        self.closed = False


class NodeHost:
    def __init__(self, config: HostConfig, factory: Callable[[], Node], *,
                 disk: Disk | None = None) -> None:
        self.config = config
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        self._stopped: asyncio.Future[int] = self._loop.create_future()
        self.transport = Transport(config.node, config.peers[config.node], config.peers,
                                   self._on_peer_message, seed=config.seed,
                                   send_queue_frames_max=config.send_queue_frames_max)
        self.world = RealWorld(config.node, disk or RealDisk(config.data_dir), self.transport,
                               self._loop, io_in_thread=config.io_in_thread)
        self.world.reply_route = self._route_reply
        self.world.on_halt = lambda reason: self.stop(EXIT_HALTED, f"halted: {reason}")
        peers = tuple(p for p in sorted(config.peers) if p != config.node)
        self.driver = Driver(config.node, peers, factory, self.world)
        self.admin = AdminServer(self.transport, self.status)
        self._client_server: asyncio.Server | None = None
        self._conns: set[_ClientConn] = set()
        self._routes: dict[int, tuple[_ClientConn, int]] = {}
        self._next_request = 0
        self.client_requests = 0
        self.client_bad_frames = 0
        self.late_replies = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop.set_exception_handler(self._on_loop_error)
        await self.transport.start()
        self._client_server = await asyncio.start_server(
            self._serve_client, *self.config.client, reuse_address=True)
        await self.admin.start(*self.config.admin)
        self.driver.start()
        log.info("%s up: peer port %d, client port %d, admin port %d", self.config.node,
                 self.transport.port, self.client_port, self.admin.port)

    @property
    def client_port(self) -> int:
        assert self._client_server is not None
        port = self._client_server.sockets[0].getsockname()[1]
        assert isinstance(port, int)
        return port

    def stop(self, code: int = 0, why: str = "stop requested") -> None:
        if not self._stopped.done():
            log.warning("%s stopping (exit %d): %s", self.config.node, code, why)
            self._stopped.set_result(code)

    async def wait(self) -> int:
        return await self._stopped

    async def close(self) -> None:
        """Stop taking input, let the disk op in flight finish, then drop the node (like a
        crash: the disk keeps what was synced)."""
        self.world.close()
        self.driver.crash()
        if self._client_server is not None:
            self._client_server.close()
        for conn in list(self._conns):
            conn.writer.close()
        await self.admin.close()
        await self.transport.close()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        exc = ctx.get("exception")
        if isinstance(exc, ConnectionError | OSError):  # a socket died mid-callback
            log.info("%s: %s", ctx.get("message"), exc)
            return
        log.critical("unexpected error in the event loop: %s", ctx.get("message"),
                     exc_info=exc)
        self.stop(EXIT_HALTED, f"crashed: {ctx.get('message')}: {exc!r}")

    # --- peers -------------------------------------------------------------------------------

    def _on_peer_message(self, src: NodeId, msg: Any) -> None:
        try:
            self.driver.deliver(Received(src, msg))
        except Exception as exc:
            self._crashed(exc)
            raise

    def _crashed(self, exc: BaseException) -> None:
        """The node or driver raised: crash loudly (log, stop with EXIT_HALTED)."""
        log.critical("%s crashed", self.config.node, exc_info=exc)
        self.stop(EXIT_HALTED, f"crashed: {exc!r}")

    # --- clients -----------------------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= limits.client_connections_max:
            log.warning("refusing client: %d connections open (limits.client_connections_max)",
                        len(self._conns))
            writer.close()
            return
        conn = _ClientConn(writer)
        self._conns.add(conn)
        decoder = FrameDecoder()
        try:
            while True:
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    return
                for obj in decoder.feed(data):
                    self._on_client_call(conn, obj)
                if decoder.failed is not None:
                    raise decoder.failed
        except FrameError as exc:
            self.client_bad_frames += 1
            log.error("closing client %s: %s", writer.get_extra_info("peername"), exc.message)
        except (OSError, ConnectionError) as exc:
            log.info("client connection ended: %s", exc)
        except Exception as exc:
            self._crashed(exc)
        finally:
            conn.closed = True
            self._conns.discard(conn)
            writer.close()
            # Forget its unanswered requests; a late reply to one is counted and dropped.
            for rid in [r for r, (c, _) in self._routes.items() if c is conn]:
                del self._routes[rid]

    def _on_client_call(self, conn: _ClientConn, obj: Any) -> None:
        call = parse_call(obj)
        if conn.pending >= limits.client_inflight_per_connection_max:
            self._answer(conn, ClientAnswer(call.id, "fail", error=(
                f"{conn.pending} requests in flight on this connection, the limit "
                "limits.client_inflight_per_connection_max; wait for replies")))
            return
        self._next_request += 1
        rid = self._next_request
        self._routes[rid] = (conn, call.id)
        conn.pending += 1
        self.client_requests += 1
        self.driver.deliver(ClientRequest(rid, call.f, call.key, call.value))
        if not self.driver.alive:  # halted: nobody will ever answer
            self._route_reply(Reply(rid, "info", error="node is down"))

    def _route_reply(self, reply: Reply) -> None:
        assert 0 < reply.request_id <= self._next_request, f"reply to unknown {reply!r}"
        route = self._routes.pop(reply.request_id, None)
        if route is None:
            self.late_replies += 1  # its client disconnected before the answer
            return
        conn, client_id = route
        conn.pending -= 1
        self._answer(conn, ClientAnswer(client_id, reply.type, reply.value, reply.error))

    def _answer(self, conn: _ClientConn, answer: ClientAnswer) -> None:
        if conn.closed:
            return  # the client went away; the outcome is its to guess
        conn.writer.write(encode_frame(answer.to_wire()))

    # --- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "node": self.config.node,
            "system": self.config.system,
            "pid": os.getpid(),
            "alive": self.driver.alive,
            "ports": {"peer": self.transport.port, "client": self.client_port,
                      "admin": self.admin.port},
            "transport": self.transport.status(),
            "driver": asdict(self.driver.stats),
            "clients": {"connections": len(self._conns), "requests": self.client_requests,
                        "unanswered": len(self._routes), "bad_frames": self.client_bad_frames,
                        "late_replies": self.late_replies},
            "applied": self.world.applied_count,
        }

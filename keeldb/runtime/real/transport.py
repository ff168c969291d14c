"""asyncio TCP transport between nodes: frames, bounded per-peer queues, reconnects, faults.

Links are one-way. Each node dials every peer it sends to and uses that outbound connection
only for writing; it accepts inbound connections from peers only for reading. The first frame
on a connection is a hello naming the sender, so inbound frames are attributed to a peer id.

- Sending never blocks: `send()` writes the frame to the socket at once when the link is up,
  nothing waits before it and the socket buffer has room (below WRITE_BATCH_BYTES_MAX); else
  it puts it on the peer's queue, bounded by `send_queue_frames_max`; when full, the new
  frame is dropped and counted (`dropped_overflow`).
  Nodes must tolerate loss anyway (networks drop), so dropping beats unbounded memory.
- A per-peer task connects, writes the queue in order and reconnects after any error or EOF,
  with jittered exponential backoff drawn from a seeded `random.Random` and capped at
  `limits.reconnect_backoff_ms_max`. A frame being written when the link breaks is lost
  (`lost_on_disconnect`).
- A malformed, oversized or corrupt inbound frame (any `FrameError`) closes that one
  connection with a logged error and a `bad_frames` count; the node keeps serving.
- `LinkFaults` drops or delays traffic to/from named peers (the admin port sets them) so
  partitions can be made on real processes. Delays keep per-link order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from keeldb import limits
from keeldb.codec.frame import FrameDecoder, encode_frame
from keeldb.errors import ConfigError, FrameError, LimitExceededError
from keeldb.types import NodeId

log = logging.getLogger("keeldb.transport")

HELLO = "keeldb-hello"
READ_CHUNK_BYTES = 64 * 1024
WRITE_BATCH_BYTES_MAX = 256 * 1024  # bytes handed to a socket before awaiting its drain

Address = tuple[str, int]
OnMessage = Callable[[NodeId, Any], None]


@dataclass
class LinkFaults:
    """Fault state of one node's links (set as a whole by the admin port; `heal` clears it).

    `drop_to`/`drop_from`: peers whose outbound/inbound frames are discarded (and counted).
    `delay_to`/`delay_from`: peers whose frames are held `delay_ms` before going out/in.
    """

    drop_to: frozenset[NodeId] = frozenset()
    drop_from: frozenset[NodeId] = frozenset()
    delay_to: frozenset[NodeId] = frozenset()
    delay_from: frozenset[NodeId] = frozenset()
    delay_ms: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.delay_ms <= limits.fault_delay_ms_max, self.delay_ms

    def to_json(self) -> dict[str, Any]:
        return {"drop_to": sorted(self.drop_to), "drop_from": sorted(self.drop_from),
                "delay_to": sorted(self.delay_to), "delay_from": sorted(self.delay_from),
                "delay_ms": self.delay_ms}

    @property
    def healthy(self) -> bool:
        return not (self.drop_to or self.drop_from or
                    (self.delay_ms and (self.delay_to or self.delay_from)))


@dataclass
class TransportStats:
    """Counters; all monotonically increasing except `connected` and `queued`."""

    sent: int = 0  # frames written to a socket
    received: int = 0  # frames delivered to the node
    dropped_overflow: int = 0  # send queue full
    dropped_partition_out: int = 0  # discarded by LinkFaults.drop_to
    dropped_partition_in: int = 0  # discarded by LinkFaults.drop_from
    lost_on_disconnect: int = 0  # in the middle of a write when the link broke
    connects: int = 0  # outbound connections established
    reconnects: int = 0  # ... of which after an earlier one to the same peer was lost
    connect_failures: int = 0
    bad_frames: int = 0  # inbound connections closed for a FrameError
    inbound_refused: int = 0  # over peer_connections_in_max or unknown peer
    per_peer_sent: dict[str, int] = field(default_factory=dict)
    per_peer_received: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["per_peer_sent"] = dict(sorted(self.per_peer_sent.items()))
        out["per_peer_received"] = dict(sorted(self.per_peer_received.items()))
        return out


def backoff_ms(attempt: int, rng: random.Random,
               lo: int = limits.reconnect_backoff_ms_min,
               hi: int = limits.reconnect_backoff_ms_max) -> float:
    """Delay before connection attempt `attempt` (1-based): exponential, capped, jittered into
    [cap/2, cap] so restarted peers are not hit by every node at the same instant."""
    assert attempt >= 1 and 0 < lo <= hi
    cap = min(hi, lo * (2 ** min(attempt - 1, 30)))
    return cap / 2 + rng.random() * cap / 2


class _Peer:
    """The outbound side of one link: a bounded queue and the task that drains it."""

    def __init__(self, peer: NodeId, addr: Address, queue_max: int) -> None:
        self.id = peer
        self.addr = addr
        self.queue: deque[tuple[int, bytes]] = deque()
        self.queue_max = queue_max
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ever_connected = False


class Transport:
    """One node's links to its peers. Create, `await start()`, `send()`, `await close()`."""

    def __init__(
        self,
        node: NodeId,
        listen: Address,
        peers: Mapping[NodeId, Address],
        on_message: OnMessage,
        *,
        seed: int | str = 0,
        send_queue_frames_max: int = limits.send_queue_frames_max,
        frame_bytes_max: int = limits.frame_bytes_max,
        backoff_ms_min: int = limits.reconnect_backoff_ms_min,
        backoff_ms_max: int = limits.reconnect_backoff_ms_max,
    ) -> None:
        if not 1 <= send_queue_frames_max <= limits.send_queue_frames_max:
            raise ConfigError(f"send_queue_frames_max={send_queue_frames_max} must be in "
                              f"1..{limits.send_queue_frames_max}")
        if not 0 < backoff_ms_min <= backoff_ms_max <= limits.reconnect_backoff_ms_max:
            raise ConfigError(f"reconnect backoff {backoff_ms_min}..{backoff_ms_max} ms must "
                              f"lie in 1..{limits.reconnect_backoff_ms_max} ms, min <= max")
        self.node = node
        self._listen = listen
        self._on_message = on_message
        self._frame_bytes_max = frame_bytes_max
        self._backoff = (backoff_ms_min, backoff_ms_max)
        self._rng = random.Random(f"{seed}:transport:{node}")
        if len(peers) > limits.transport_peers_max:
            raise ConfigError(f"{len(peers)} peers, over transport_peers_max="
                              f"{limits.transport_peers_max}")
        self._queue_max = send_queue_frames_max
        self._peers = {p: _Peer(p, a, send_queue_frames_max)
                       for p, a in sorted(peers.items()) if p != node}
        self._server: asyncio.Server | None = None
        self._inbound: set[_Inbound] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.faults = LinkFaults()
        self.stats = TransportStats()
        # Called after each inbound chunk's messages were delivered (outside any node step):
        # the world runs a disk job those steps left for the loop (see RealWorld).
        self.after_deliver: Callable[[], None] | None = None
        self.delivering = False  # inside an inbound chunk's deliveries

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for inbound links (port 0 picks a free port, see `port`)."""
        assert self._server is None, "start() called twice"
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Inbound(self), self._listen[0], self._listen[1], reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None, "transport not started"
        port = self._server.sockets[0].getsockname()[1]
        assert isinstance(port, int)
        return port

    @property
    def peers(self) -> tuple[NodeId, ...]:
        return tuple(self._peers)

    def set_peer_address(self, peer: NodeId, addr: Address) -> None:
        """Point `peer` at a new address (used when ports are learned after start)."""
        self._peers[peer].addr = addr

    def add_peer(self, node: NodeId, address: Address) -> bool:
        """Know `node` at `address` (a member that joined): True if that changed anything.

        A known peer keeps its queue; a new address is dialled on the next (re)connect. At
        most `limits.transport_peers_max` peers (`LimitExceededError` beyond). Call it on the
        event loop; the link's task starts with the first frame sent to it.
        """
        assert not self._closed, "add_peer on a closed transport"
        if node == self.node:
            return False
        known = self._peers.get(node)
        if known is not None:
            if known.addr == address:
                return False
            known.addr = address
            return True
        if len(self._peers) >= limits.transport_peers_max:
            raise LimitExceededError(
                f"{self.node}: cannot add peer {node!r}: {len(self._peers)} peers known, the "
                f"limit transport_peers_max={limits.transport_peers_max}; remove one first")
        self._peers[node] = _Peer(node, address, self._queue_max)
        return True

    def remove_peer(self, node: NodeId) -> bool:
        """Forget `node` (a removed member): its queued frames are dropped, its link task
        stops and its connection closes. True if it was known. Inbound links from it stay
        open until it closes them (its hello is refused on the next connect)."""
        peer = self._peers.pop(node, None)
        if peer is None:
            return False
        self.stats.dropped_overflow += len(peer.queue)
        peer.queue.clear()
        if peer.task is not None:
            peer.task.cancel()
            self._tasks.add(peer.task)  # awaited by close()
            peer.task.add_done_callback(self._tasks.discard)
        if peer.writer is not None:
            peer.writer.close()
        return True

    async def close(self) -> None:
        """Stop every task and close every connection; queued frames are discarded."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for peer in self._peers.values():
            if peer.task is not None:
                peer.task.cancel()
            if peer.writer is not None:
                peer.writer.close()
        for link in list(self._inbound):
            link.close()
        tasks = [p.task for p in self._peers.values() if p.task] + list(self._tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # --- sending -----------------------------------------------------------------------------

    def send(self, to: NodeId, msg: Any) -> bool:
        """Queue `msg` for `to`. False when it was dropped (partition or full queue).

        Raises `FrameTooLargeError` for a message over `frame_bytes_max` (a caller bug).
        """
        assert not self._closed, "send on a closed transport"
        peer = self._peers.get(to)
        assert peer is not None, f"{self.node}: send to unknown peer {to!r}"
        frame = encode_frame(msg, frame_bytes_max=self._frame_bytes_max)
        if to in self.faults.drop_to:
            self.stats.dropped_partition_out += 1
            return False
        w = peer.writer
        if (w is not None and not peer.queue and not w.transport.is_closing()
                and w.transport.get_write_buffer_size() < WRITE_BATCH_BYTES_MAX
                and not (self.faults.delay_ms and to in self.faults.delay_to)):
            # The fast path: connected, nothing queued before it, no delay fault, room in
            # the socket buffer: write now (no task switch before it leaves).
            w.write(frame)
            self.stats.sent += 1
            self.stats.per_peer_sent[to] = self.stats.per_peer_sent.get(to, 0) + 1
            return True
        if len(peer.queue) >= peer.queue_max:
            self.stats.dropped_overflow += 1
            return False
        peer.queue.append((time.monotonic_ns(), frame))
        peer.wakeup.set()
        if peer.task is None:
            peer.task = asyncio.get_running_loop().create_task(
                self._peer_loop(peer), name=f"keeldb-link-{self.node}-{to}")
        return True

    def queued(self, to: NodeId) -> int:
        return len(self._peers[to].queue)

    async def _peer_loop(self, peer: _Peer) -> None:
        attempt = 0
        while not self._closed:
            if attempt:
                await asyncio.sleep(backoff_ms(attempt, self._rng, *self._backoff) / 1000)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(*peer.addr), limits.connect_timeout_ms / 1000)
            except (TimeoutError, OSError) as exc:
                self.stats.connect_failures += 1
                attempt += 1
                log.debug("%s: connect to %s at %s failed: %s", self.node, peer.id,
                          peer.addr, exc)
                continue
            attempt = 1  # after a lost link, wait one short backoff before redialling
            self.stats.connects += 1
            if peer.ever_connected:
                self.stats.reconnects += 1
            peer.ever_connected = True
            peer.writer = writer
            watcher = asyncio.get_running_loop().create_task(self._watch_eof(peer, reader))
            try:
                await self._drain_queue(peer, writer)
            except (OSError, ConnectionError) as exc:
                log.info("%s: link to %s lost: %s", self.node, peer.id, exc)
            finally:
                peer.writer = None
                watcher.cancel()
                writer.close()

    async def _watch_eof(self, peer: _Peer, reader: asyncio.StreamReader) -> None:
        """Peers never write on our outbound link, so any EOF or error means it is gone:
        close it now so the next frame goes to a fresh connection instead of a dead one."""
        try:
            while await reader.read(READ_CHUNK_BYTES):
                pass
        except (OSError, ConnectionError):
            pass
        if peer.writer is not None:
            peer.writer.close()
        peer.wakeup.set()

    async def _drain_queue(self, peer: _Peer, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame({HELLO: self.node}))
        await writer.drain()
        while not self._closed:
            if writer.transport.is_closing():
                raise ConnectionError("connection closed")
            if not peer.queue:
                peer.wakeup.clear()
                await peer.wakeup.wait()
                continue
            queued_at, frame = peer.queue[0]
            faults = self.faults
            if faults.delay_ms and peer.id in faults.delay_to:
                wait_ns = queued_at + faults.delay_ms * 1_000_000 - time.monotonic_ns()
                if wait_ns > 0:
                    # Wake early when faults change (heal) or the link breaks.
                    peer.wakeup.clear()
                    try:
                        await asyncio.wait_for(peer.wakeup.wait(), wait_ns / 1e9)
                    except TimeoutError:
                        pass
                    continue
            if peer.id in faults.drop_to:
                peer.queue.popleft()
                self.stats.dropped_partition_out += 1
                continue
            # Write a run of frames, then wait for the socket once (far fewer wakeups than
            # a drain per frame). Delayed links go one frame at a time (each has a due time).
            batch = 0
            batch_bytes = 0
            while peer.queue and batch_bytes < WRITE_BATCH_BYTES_MAX:
                _, frame = peer.queue.popleft()
                writer.write(frame)
                batch += 1
                batch_bytes += len(frame)
                if faults.delay_ms and peer.id in faults.delay_to:
                    break
            try:
                await writer.drain()
            except (OSError, ConnectionError):
                self.stats.lost_on_disconnect += batch
                raise
            self.stats.sent += batch
            self.stats.per_peer_sent[peer.id] = self.stats.per_peer_sent.get(peer.id, 0) + batch

    # --- receiving ---------------------------------------------------------------------------
    # Inbound links are protocols, not stream tasks: each chunk read is decoded and delivered
    # in the read callback itself (no task wakeup and no coroutine per message).

    def _deliver_now(self, src: NodeId, msg: Any) -> None:
        if self._closed:
            return
        if src in self.faults.drop_from:
            self.stats.dropped_partition_in += 1
            return
        self.stats.received += 1
        self.stats.per_peer_received[src] = self.stats.per_peer_received.get(src, 0) + 1
        self._on_message(src, msg)

    def _hello_sender(self, msg: Any, peername: Any) -> NodeId | None:
        sender = msg.get(HELLO) if isinstance(msg, dict) else None
        if sender not in self._peers:
            self.stats.inbound_refused += 1
            log.error("%s: closing inbound connection from %s: first frame %r is not a hello "
                      "from a known peer (%s)", self.node, peername, repr(msg)[:100],
                      ", ".join(self._peers))
            return None
        return NodeId(sender)
    # --- faults and status -------------------------------------------------------------------

    def set_faults(self, faults: LinkFaults) -> None:
        """Replace the fault state; unknown peer ids are a `ConfigError`."""
        named: Iterable[NodeId] = (faults.drop_to | faults.drop_from | faults.delay_to
                                   | faults.delay_from)
        unknown = sorted(set(named) - set(self._peers))
        if unknown:
            raise ConfigError(f"{self.node}: unknown peer(s) {unknown} in a fault command; "
                              f"known peers: {', '.join(self._peers) or '(none)'}")
        self.faults = faults
        for peer in self._peers.values():
            peer.wakeup.set()  # re-check delays now
        for link in list(self._inbound):
            link.recheck()

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "port": self.port if self._server is not None else None,
            "faults": self.faults.to_json(),
            "stats": self.stats.to_json(),
            "queued": {p: len(peer.queue) for p, peer in self._peers.items()},
            "connected": sorted(p for p, peer in self._peers.items() if peer.writer),
            "inbound": len(self._inbound),
        }


class _Inbound(asyncio.Protocol):
    """One inbound link: frames in, messages delivered from the read callback.

    The first frame must be a hello from a known peer. A `delay_from` fault holds messages
    on a per-link queue (in order) and delivers them when due; while more than
    `send_queue_frames_max` wait, reading pauses (TCP pushes back on the sender).
    """

    def __init__(self, owner: Transport) -> None:
        self.owner = owner
        self.decoder = FrameDecoder(frame_bytes_max=owner._frame_bytes_max)
        self.src: NodeId | None = None
        self.transport: asyncio.Transport | None = None
        self.held: deque[tuple[int, Any]] = deque()  # (arrived_ns, msg) under a delay fault
        self.timer: asyncio.Handle | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport; they have its methods)
        self.transport = cast(asyncio.Transport, transport)
        o = self.owner
        if o._closed or len(o._inbound) >= limits.peer_connections_in_max:
            o.stats.inbound_refused += 1
            log.warning("%s: refusing inbound peer connection from %s (%d open, max %d)",
                        o.node, transport.get_extra_info("peername"), len(o._inbound),
                        limits.peer_connections_in_max)
            self.transport.close()
            return
        o._inbound.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("%s: inbound connection ended: %s", self.owner.node, exc)
        self.owner._inbound.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.held.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        o = self.owner
        assert self.transport is not None
        if o._closed or self.transport.is_closing():
            return
        try:
            msgs = self.decoder.feed(data)
        except FrameError:
            msgs = []  # reported below: `failed` is set
        o.delivering = True
        try:
            self._deliver_all(msgs)
        finally:
            o.delivering = False
        if o.after_deliver is not None and not o._closed:
            o.after_deliver()
        failed = self.decoder.failed
        if failed is not None and not self.transport.is_closing():
            o.stats.bad_frames += 1
            log.error("%s: closing inbound connection from %s: %s", o.node,
                      self.transport.get_extra_info("peername"), failed.message)
            self.transport.close()

    def _deliver_all(self, msgs: list[Any]) -> None:
        o = self.owner
        assert self.transport is not None
        arrived = 0
        for msg in msgs:
            src = self.src
            if src is None:
                self.src = o._hello_sender(msg, self.transport.get_extra_info("peername"))
                if self.src is None:
                    self.transport.close()
                    return
                continue
            faults = o.faults
            if self.held or (faults.delay_ms and src in faults.delay_from):
                arrived = arrived or time.monotonic_ns()
                self._hold(arrived, msg)
            else:
                o._deliver_now(src, msg)
            if self.transport.is_closing():
                return

    def _hold(self, arrived_ns: int, msg: Any) -> None:
        self.held.append((arrived_ns, msg))
        if len(self.held) >= self.owner._queue_max and not self.paused:
            assert self.transport is not None
            self.paused = True
            self.transport.pause_reading()
        if self.timer is None:
            self._release()

    def recheck(self) -> None:
        """The faults changed: deliver what is no longer held (now, on the loop)."""
        if self.held and self.timer is not None:
            self.timer.cancel()
            self.timer = asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        """Deliver the held messages that are due (all of them once the fault is healed)."""
        self.timer = None
        o = self.owner
        while self.held and not o._closed:
            arrived, msg = self.held[0]
            faults = o.faults
            if faults.delay_ms and self.src in faults.delay_from:
                wait_ns = arrived + faults.delay_ms * 1_000_000 - time.monotonic_ns()
                if wait_ns > 0:
                    loop = asyncio.get_running_loop()
                    self.timer = loop.call_later(wait_ns / 1e9, self._release)
                    return
            self.held.popleft()
            assert self.src is not None
            o._deliver_now(self.src, msg)
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

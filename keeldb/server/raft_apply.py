"""`RaftApplyPath`: the server's `ApplyPath` on a Raft node hosted in the server process.

    connection ─► submit(batch) ─► ClientRequest("write"|"read", encoded batch)
                                          │  Driver + RaftNode (keeldb.node.raft_node)
                                          │  RealWorld: raft files, fsync in a worker thread
                                          │  Transport: TCP to the peers (--peers)
    done(Applied | ErrorReply) ◄── Reply ◄┘

Everything runs on the server's event loop: the driver, the Raft node, and the state machine
(`keeldb.node.raft_kv_sm.RaftKvSM` over the server's `KvStateMachine`), which applies committed
entries to the embedded store as they commit. Writes become one log entry per batch (MULTI/EXEC
is one batch); a follower's core forwards them to the leader. Read-only batches use ReadIndex.

Error replies a client may see (both mean "try again"; redis-py raises `ResponseError`):

- `TRYAGAIN ...`: nothing happened (no leader known within the bounded wait, the node is
  recovering, or a read was not confirmed in time). Safe to retry, here or on another node.
- `CLUSTERDOWN ...`: a write was accepted but not committed in time (a leader change); it may
  or may not have happened. Retry only if the write is idempotent, or read to find out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from keeldb import limits
from keeldb.codec.resp import ErrorReply
from keeldb.errors import ConfigError, KeeldbError, LimitExceededError
from keeldb.node import kvstate as kv
from keeldb.node.effects import ClientRequest, Node, Received, Reply, Tick
from keeldb.node.raft_kv_sm import WRITE, RaftKvSM, encode_command, unpack_applied
from keeldb.node.raft_node import FLUSH_TIMER, RaftNode, RaftNodeConfig
from keeldb.runtime.driver import Driver
from keeldb.runtime.real.admin import AdminServer
from keeldb.runtime.real.disk import RealDisk
from keeldb.runtime.real.transport import Address, Transport
from keeldb.runtime.real.world import RealWorld
from keeldb.server.admin_http import ServerMetrics
from keeldb.server.raft_admin import MembershipTransport
from keeldb.types import NodeId

log = logging.getLogger("keeldb.raft_apply")

Result = kv.Applied | ErrorReply
Done = Callable[[Result], None]


def parse_peers(text: str) -> dict[str, Address]:
    """`n1=HOST:PORT,n2=HOST:PORT` -> {"n1": ("HOST", PORT), ...} (ConfigError if malformed)."""
    peers: dict[str, Address] = {}
    for item in text.split(","):
        name, eq, addr = item.strip().partition("=")
        host, colon, port = addr.rpartition(":")
        if not (eq and colon and name and host and port.isdigit()
                and 0 < int(port) <= 65535):
            raise ConfigError(f"--peers item {item!r} is not ID=HOST:PORT; pass e.g. "
                              "n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003")
        if name in peers:
            raise ConfigError(f"--peers names {name!r} twice; give each node once")
        peers[name] = (host, int(port))
    return peers


def inline_disk_job(pending: int, job_bytes: int) -> bool:
    """Whether a Raft server runs its next disk job (`job_bytes` appended, then synced) on
    the event loop, with `pending` client requests waiting on this node: while 1 to
    `limits.server_raft_inline_sync_pending_max` wait (a leader at low load), or with none
    waiting (a follower) when the job is small (`limits.server_raft_inline_io_bytes_max`)."""
    assert pending >= 0 and job_bytes >= 0, (pending, job_bytes)
    if pending:
        return pending <= limits.server_raft_inline_sync_pending_max
    return job_bytes <= limits.server_raft_inline_io_bytes_max


class RaftApplyPath:
    """An `ApplyPath` (see `keeldb.server.resp_server`) that replicates through Raft.

    `await open()` starts the peer transport and the node (recovering its raft files);
    `submit` proposes; `stop` drops the node like a process exit (the disk keeps what was
    synced; the next start recovers from it)."""

    def __init__(self, sm: kv.KvStateMachine, loop: asyncio.AbstractEventLoop,
                 metrics: ServerMetrics, *, node_id: str, peers: Mapping[str, Address],
                 raft_dir: str, on_fatal: Callable[[BaseException], None],
                 config: RaftNodeConfig | None = None, fault_port: int | None = None,
                 join: bool = False, lease_reads: bool = False, redirect: bool = False) -> None:
        if node_id not in peers:
            raise ConfigError(f"--id {node_id!r} is not in --peers/--join ({', '.join(peers)}); "
                              "list every node of the cluster, this one included")
        self.node_id = NodeId(node_id)
        self._sm = RaftKvSM(sm)
        self._sm.on_group_begun = self._group_begun  # one store write per loop turn
        self._loop, self._metrics, self._on_fatal = loop, metrics, on_fatal
        metrics.watch_raft(self.node_status)
        self._redirect = redirect  # a follower answers writes with MOVED (leader's address)
        # join: an empty disk starts with no membership (a learner-to-be, see raft_admin).
        self._cfg = dataclasses.replace(config or RaftNodeConfig(), join=join,
                                        lease_reads=lease_reads, propose_on_flush=True)
        self._flush_due = False  # a FLUSH_TIMER tick is scheduled for the end of this turn
        self._submitting = False  # inside submit(): replies wait for the next loop turn
        self._observe: dict[str, Callable[[float], None]] = {}  # latency histogram per kind
        addrs = {NodeId(k): v for k, v in peers.items()}
        self._book: dict[str, str] = {}  # the replicated address book as last seen
        self.transport: Transport = MembershipTransport(
            self.node_id, addrs[self.node_id], addrs, self._on_peer_message,
            seed=f"raft-apply:{node_id}")
        self.world = RealWorld(self.node_id, RealDisk(raft_dir), self.transport, loop)
        self.world.reply_route = self._on_reply
        self.world.on_halt = lambda why: self._fatal(RuntimeError(f"raft node halted: {why}"))
        self.world.inline_io = self._few_pending
        others = tuple(p for p in sorted(addrs) if p != self.node_id)
        self.driver = Driver(self.node_id, others, self._make_node, self.world)
        self._fault_port = fault_port
        self.faults: AdminServer | None = None  # link faults (partition/heal), when asked
        self._pending: dict[int, tuple[Done, float, str]] = {}
        self._admin: dict[int, asyncio.Future[tuple[str, Any, str | None]]] = {}
        self._next_rid = 0
        self._last_ms = 0
        self._stopped = False
        self.room = asyncio.Event()
        self.room.set()
        self.idle = asyncio.Event()
        self.idle.set()

    def _make_node(self) -> Node:
        node = RaftNode(lambda: self._sm, self._cfg)
        node.on_members = self._on_members
        return node

    # --- membership (keeldb.server.raft_admin drives these) -----------------------------------

    def _on_members(self, book: dict[str, str]) -> None:
        """The replicated address book changed: dial new members where the book says, and
        forget the ones it dropped (only those it listed before: founders from --peers that
        never entered the book stay)."""
        from keeldb.server.raft_admin import AdminActionError, parse_addr
        for peer in sorted(set(self._book) - set(book)):
            if peer != self.node_id and self.transport.remove_peer(NodeId(peer)):
                log.info("%s: peer %s left the cluster", self.node_id, peer)
        self._book = dict(book)
        for peer, text in sorted(book.items()):
            try:
                self.transport_add_peer(NodeId(peer), parse_addr(text))
            except AdminActionError:
                log.error("%s: member %s has a bad address %r in the book", self.node_id,
                          peer, text)
            except LimitExceededError as exc:
                log.error("%s: cannot dial member %s: %s", self.node_id, peer, exc)

    def transport_add_peer(self, peer: NodeId, addr: Address) -> None:
        assert isinstance(self.transport, MembershipTransport)
        if self.transport.add_peer(peer, addr):
            log.info("%s: peer %s at %s:%d", self.node_id, peer, addr[0], addr[1])

    def addresses(self) -> dict[str, str]:
        """Every member's Raft address this node knows (itself included)."""
        assert isinstance(self.transport, MembershipTransport)
        return self.transport.address_book()

    def node_status(self) -> dict[str, Any]:
        node = self.driver.node
        return node.status() if isinstance(node, RaftNode) else {"state": "down"}

    async def admin_request(self, f: str, key: Any, value: Any) -> tuple[str, Any, str | None]:
        """Hand a membership/transfer request to the node; (reply type, value, error)."""
        self._next_rid += 1
        rid = self._next_rid
        fut: asyncio.Future[tuple[str, Any, str | None]] = self._loop.create_future()
        self._admin[rid] = fut
        self._deliver(ClientRequest(rid, f, key, value))
        if not self.driver.alive and rid in self._admin:
            self._admin.pop(rid).set_result(("fail", None, "node is down"))
        return await fut

    def _moved(self) -> ErrorReply | None:
        """--redirect: `MOVED 0 HOST:PORT` naming the leader's client address (Redis
        Cluster's reply: redis-py raises MovedError), or None to forward as usual (this
        node leads, or no leader or no address of it is known)."""
        node = self.driver.node
        if not isinstance(node, RaftNode) or node.raft is None:
            return None
        lead = node.raft.lead
        if not lead or lead == self.node_id:
            return None
        known = node.sessions.clients.get(lead)
        return None if known is None else ErrorReply(f"MOVED 0 {known[0]}")

    def stale_read(self, batch: kv.Batch) -> Result:
        """READONLY: answer a read from this node's own state now (maybe stale, never
        waiting for the leader). The state machine is only changed on this loop."""
        assert batch.read_only, batch
        try:
            return self._sm.kv.read_batch(batch, now_ms=max(self._sm.last_now_ms,
                                                            self.now_ms()))
        except KeeldbError as exc:
            return ErrorReply(f"ERR {exc.message}")

    @property
    def inflight(self) -> int:
        return len(self._pending)

    async def open(self) -> None:
        await self.transport.start()
        if self._fault_port is not None:
            self.faults = AdminServer(self.transport, self.status)
            await self.faults.start("127.0.0.1", self._fault_port)
        self.driver.start()

    def start(self) -> None:
        assert self.driver.alive, "RaftApplyPath.open() must run before start()"

    def now_ms(self) -> int:
        self._last_ms = max(self._last_ms, int(time.time() * 1000))
        return self._last_ms

    # --- the node ----------------------------------------------------------------------------

    def _fatal(self, exc: BaseException) -> None:
        if not self._stopped:
            log.critical("%s: %s", self.node_id, exc)
            self._on_fatal(exc)

    def _on_peer_message(self, src: NodeId, msg: Any) -> None:
        self._deliver(Received(src, msg))

    def _deliver(self, event: Received | ClientRequest | Tick) -> None:
        try:
            self.driver.deliver(event)
        except Exception as exc:  # the node or the state machine failed: stop loudly
            self._fatal(exc)

    def status(self) -> dict[str, Any]:
        node = self.driver.node
        st: dict[str, Any] = node.status() if isinstance(node, RaftNode) else {"state": "down"}
        return {"role": st.get("role", st.get("state")), "term": st.get("term"),
                "commit_index": st.get("commit"), "leader": st.get("lead") or None,
                "raft_applied": st.get("applied"), "raft": st,
                "peer_port": self.transport.port, "replayed_skipped": self._sm.skipped,
                "fault_port": None if self.faults is None else self.faults.port,
                "faults": self.transport.faults.to_json(),
                "voters": st.get("voters"), "learners": st.get("learners"),
                "member_state": st.get("member_state"),
                "snapshots_installed": st.get("snapshots_installed"),
                "read_mode": "lease" if self._cfg.lease_reads else "readindex"}

    def is_leader(self) -> bool:
        node = self.driver.node
        return isinstance(node, RaftNode) and node.status().get("role") == "leader"

    # --- ApplyPath ---------------------------------------------------------------------------

    def submit(self, items: list[tuple[kv.Batch, Done]]) -> None:
        assert not self._stopped, "submit after the apply path stopped"
        now, started = self.now_ms(), time.perf_counter()
        self._submitting = True
        try:
            self._submit(items, now, started)
        finally:
            self._submitting = False
        self._update_events()
        if not self._flush_due and self._pending:
            # Requests of every connection read in this loop turn become one proposal.
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _submit(self, items: list[tuple[kv.Batch, Done]], now: int, started: float) -> None:
        pending = self._pending
        for batch, done in items:
            requests = batch.requests
            sweep = (type(requests[0]) is kv.Sweep if len(requests) == 1
                     else any(isinstance(r, kv.Sweep) for r in requests))
            if sweep and not self.is_leader():
                # Active expiry is the leader's job (reads hide expired keys anyway).
                self._loop.call_soon(done, kv.Applied((0,)))
                continue
            f, data = encode_command(batch, now)
            if self._redirect and f == WRITE:
                moved = self._moved()
                if moved is not None:
                    self._loop.call_soon(done, moved)
                    continue
            self._next_rid += 1
            rid = self._next_rid
            pending[rid] = (done, started, f)  # f is the latency label: "read" | "write"
            self._sm.remember(data, now, batch)
            self._deliver(ClientRequest(rid, f, None, data))
            if not self.driver.alive and rid in self._pending:
                self._on_reply(Reply(rid, "fail", error="node is down"))

    def _group_begun(self) -> None:
        self._loop.call_soon(self._end_group)

    def _end_group(self) -> None:
        """Write the entries applied this loop turn to the store (one engine write)."""
        if self._sm.kv.grouping:
            try:
                self._sm.kv.end_group()
            except Exception as exc:  # the store failed: stop loudly (the log replays it)
                self._fatal(exc)

    def _flush(self) -> None:
        self._flush_due = False
        if not self._stopped:
            self._deliver(Tick(FLUSH_TIMER, self.world.now_ns(self.node_id)))

    def try_inline(self, batch: kv.Batch) -> Result | None:
        return None  # every request goes through the node (ReadIndex or the log)

    def _on_reply(self, reply: Reply) -> None:
        entry = self._pending.pop(reply.request_id, None)
        if entry is None:
            fut = self._admin.pop(reply.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result((reply.type, reply.value, reply.error))
            return
        done, started, kind = entry
        observe = self._observe.get(kind)
        if observe is None:  # labels() takes a lock and a dict lookup: once per kind
            observe = self._observe[kind] = self._metrics.latency.labels(kind).observe
        observe(time.perf_counter() - started)
        result: Result
        if reply.type == "ok":
            result = unpack_applied(reply.value)
        elif reply.type == "fail":
            result = ErrorReply(f"TRYAGAIN {reply.error or reply.value}; nothing was applied")
        else:
            result = ErrorReply(f"CLUSTERDOWN {reply.error or 'outcome unknown'}")
        self._metrics.applied_index.set(self._sm.kv.applied_index)
        self._update_events()
        if self._submitting:  # not re-entrant: the server is inside submit() for a connection
            self._loop.call_soon(done, result)
        else:
            # The reply leaves now, without a loop turn; `done` may submit again (the driver
            # queues a request that arrives while the node steps).
            done(result)

    def _few_pending(self) -> bool:
        """Disk jobs run on the loop while a few requests (at least one) wait on this node
        (see RealWorld.inline_io). With none waiting (a follower), only a small job runs
        inline (one low-load append: cheaper than the disk thread's wakeup and hand-offs);
        a bigger one (a busy leader's batch) goes to the thread, so the loop decodes the
        next append while it syncs."""
        return inline_disk_job(len(self._pending), self.driver.io_job_bytes)

    def _update_events(self) -> None:
        if len(self._pending) >= min(limits.server_apply_queue_max, self._cfg.pending_max):
            self.room.clear()
        else:
            self.room.set()
        if self._pending:
            self.idle.clear()
        else:
            self.idle.set()

    async def stop(self) -> None:
        """Drop the node (pending requests stay unanswered: their clients are closed)."""
        if self._stopped:
            return
        self._stopped = True
        self._end_group()
        for fut in self._admin.values():
            if not fut.done():
                fut.set_result(("fail", None, "the node is stopping"))
        self._admin.clear()
        if self.faults is not None:
            await self.faults.close()
        await asyncio.to_thread(self.world.close)
        self.driver.crash()
        await self.transport.close()
        self._pending.clear()
        self._update_events()


"""`keeldb serve`: one node's Redis-protocol server over the embedded LSM store.

    event loop (asyncio)                                  apply thread
    ───────────────────────────────────────────────       ─────────────────────────────────
    accept ─► Connection.receive(bytes) ─► Execute ─┐
                                                    ├─► ApplyPath.submit(batch, now_ms)
    sweep timer ─► Sweep(n) ───────────────────────┘      in submit order, one group at a time:
                                                            read_batch / apply (ONE engine
    Connection.complete(ticket, result) ◄── deliver ◄──    write for the group), then ONE
    ─► Send replies (in request order)                     fsync for it (sync=always)

The seam for replication is `ApplyPath`: `LocalApplyPath` applies proposals in the order they
were submitted (the "log" is the submit order, its index `applied_index + 1`). A Raft node
replaces it with one that proposes writes, waits for commit and applies in log order, and
answers reads after a ReadIndex; the connections and the state machine do not change.

Durability: with sync=always no reply leaves before the fsync that covers its batch, and a
read that saw a write is answered only after that write's fsync (it is in the same or a later
group). Batches that arrive while one group is being applied and fsynced form the next group,
so concurrent clients share fsyncs (group commit) although the state machine applies one batch
at a time. Time: every batch carries the server's wall clock at proposal (made non-decreasing),
and the state machine decides expiry by it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, cast

from keeldb import limits
from keeldb.codec.resp import ErrorReply
from keeldb.embedded import DB
from keeldb.embedded import open as open_db
from keeldb.errors import ConfigError, KeeldbError
from keeldb.node import kvstate as kv
from keeldb.server.admin_http import AdminServer, ServerMetrics
from keeldb.server.commands import Close, Connection, ConnectionConfig, Execute, Output, Send
from keeldb.storage.engine import Engine
from keeldb.types import SYNC_POLICIES

Result = kv.Applied | ErrorReply
Done = Callable[[Result], None]
ERR_MAX_CLIENTS = b"-ERR max number of clients reached\r\n"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 6380  # 0 = any free port
    data_dir: str = "./keeldb-data"
    sync: str = "always"
    password: str | None = None
    admin_port: int | None = 0  # 0 = any free port, None = no admin port
    max_clients: int = limits.server_clients_max_default
    node_id: str = "n1"
    sweep_interval_ms: int = limits.server_sweep_interval_ms_default
    # Raft mode (keeldb.server.raft_apply): "n1=HOST:PORT,..." peer ports of every node,
    # this one (node_id) included; "" = a single node with LocalApplyPath.
    peers: str = ""
    # Raft mode: a loopback port for link faults (`keeldb node partition --admin`); None = off.
    fault_port: int | None = None
    # Raft mode for a NEW member (instead of peers): "n1=HOST:PORT,...,me=HOST:PORT"; an empty
    # data dir starts with no membership and waits for `keeldb cluster add` (docs/cluster.md).
    join: str = ""
    # Raft mode: "readindex" (linearizable, a heartbeat round per read batch) or "lease"
    # (linearizable while clocks drift less than the lease margin: docs/cluster.md).
    read_mode: str = "readindex"
    # Raft mode: applied entries between two snapshots (0 = limits.server_raft_snapshot_entries)
    snapshot_entries: int = 0
    # Raft mode: a follower answers writes with `MOVED 0 HOST:PORT` (the leader) instead of
    # forwarding them (when it knows the leader's client address).
    redirect: bool = False

    @property
    def raft(self) -> bool:
        return bool(self.peers or self.join)

    def check(self) -> None:
        """Raise ConfigError naming the bad value and what to pass instead."""
        if self.sync not in SYNC_POLICIES:
            raise ConfigError(f"--sync {self.sync!r} is not one of {', '.join(SYNC_POLICIES)}")
        for name, port in (("--port", self.port), ("--admin-port", self.admin_port),
                           ("--fault-port", self.fault_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{name} {port} is not a TCP port; pass 0..65535 (0 = any)")
        if self.max_clients < 1:
            raise ConfigError(f"--max-clients {self.max_clients} must be at least 1")
        if self.password is not None and not self.password:
            raise ConfigError("--password is empty; pass a non-empty password or leave it out")
        if self.sweep_interval_ms < 1:
            raise ConfigError(f"sweep_interval_ms {self.sweep_interval_ms} must be >= 1")
        if self.peers and self.join:
            raise ConfigError("pass --peers (a founding member) or --join (a new member), "
                              "not both")
        if self.snapshot_entries < 0:
            raise ConfigError(f"--snapshot-entries {self.snapshot_entries} must be >= 0")
        if self.read_mode not in ("readindex", "lease"):
            raise ConfigError(f"--read-mode {self.read_mode!r} is not readindex or lease")
        if self.raft:
            from keeldb.server.raft_apply import parse_peers
            flag, text = ("--peers", self.peers) if self.peers else ("--join", self.join)
            if self.node_id not in parse_peers(text):
                raise ConfigError(f"--id {self.node_id!r} is not in {flag} {text!r}; "
                                  "list every node of the cluster, this one included")


class ApplyPath(Protocol):
    """Where the connections send their batches; results come back on the event loop, in
    submit order per connection. `LocalApplyPath` is the single-node one; a replicated node
    implements the same calls (propose, apply when committed, ReadIndex for reads)."""

    room: asyncio.Event  # set while more submissions are welcome (back-pressure)
    idle: asyncio.Event  # set while nothing is in flight (shutdown waits for it)

    @property
    def inflight(self) -> int:
        """Batches submitted but not yet delivered."""
        ...

    def start(self) -> None: ...

    def submit(self, items: list[tuple[kv.Batch, Done]]) -> None:
        """Propose `items` in order; each `Done` is called on the loop with its result."""
        ...

    def try_inline(self, batch: kv.Batch) -> Result | None:
        """The result now, when running `batch` at once keeps every guarantee; else None."""
        ...

    async def stop(self) -> None:
        """Finish what was submitted, then stop."""
        ...


class Syncable(Protocol):
    def sync(self) -> None:
        """Make every write so far durable (the embedded DB's WAL fsync)."""
        ...


class LocalApplyPath:
    """The single-node apply path: one thread applies batches in submit order, in groups,
    fsyncing once per group that wrote when `sync_always`."""

    def __init__(self, db: Syncable, sm: kv.KvStateMachine, loop: asyncio.AbstractEventLoop,
                 metrics: ServerMetrics, *, sync_always: bool,
                 on_fatal: Callable[[BaseException], None]) -> None:
        self._db, self._sm, self._loop, self._metrics = db, sm, loop, metrics
        self._sync_always = sync_always
        self._on_fatal = on_fatal
        self._queue: deque[tuple[kv.Batch, int, Done, float]] = deque()
        self._cv = threading.Condition(threading.Lock())
        self._stop = False
        self._last_ms = 0
        self._inflight = 0  # touched on the loop thread only
        self.room = asyncio.Event()  # set while inflight < server_apply_queue_max
        self.room.set()
        self.idle = asyncio.Event()  # set while nothing is in flight
        self.idle.set()
        self._observe: dict[str, Callable[[float], None]] = {}  # latency histogram per kind
        self._thread = threading.Thread(target=self._run, name="keeldb-apply", daemon=True)

    @property
    def inflight(self) -> int:
        return self._inflight

    def start(self) -> None:
        self._thread.start()

    def now_ms(self) -> int:
        """The proposal time: the wall clock, never going back (expiry must not un-happen)."""
        self._last_ms = max(self._last_ms, int(time.time() * 1000))
        return self._last_ms

    def submit(self, items: list[tuple[kv.Batch, Done]]) -> None:
        assert not self._stop, "submit after the apply path stopped"
        now, started = self.now_ms(), time.perf_counter()
        with self._cv:
            self._queue.extend((batch, now, done, started) for batch, done in items)
            self._cv.notify()
        self._inflight += len(items)
        self.idle.clear()
        if self._inflight >= limits.server_apply_queue_max:
            self.room.clear()

    async def stop(self) -> None:
        """Apply what is queued, then end the thread."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        await asyncio.to_thread(self._thread.join)

    # --- the apply thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._queue and not self._stop:
                        self._cv.wait()
                    if not self._queue:
                        return
                    take = min(len(self._queue), limits.server_apply_group_max)
                    group = [self._queue.popleft() for _ in range(take)]
                results = self._apply_group(group)
                self._loop.call_soon_threadsafe(self._deliver, results)
        except BaseException as exc:  # a programmer error: stop the server loudly
            self._loop.call_soon_threadsafe(self._on_fatal, exc)

    def _apply_group(self, group: list[tuple[kv.Batch, int, Done, float]]
                     ) -> list[tuple[Done, Result, float, str]]:
        """Apply a group's batches in order as ONE engine write (the state machine defers
        them: a WAL append per group, not per batch), then fsync once if any wrote."""
        out: list[tuple[Done, Result, float, str]] = []
        wrote = False
        sm = self._sm
        sm.begin_group()
        try:
            for batch, now, done, started in group:
                read_only = batch.read_only
                out.append((done, self._apply_one(batch, now), started,
                            "read" if read_only else "write"))
                wrote = wrote or not read_only
                if sm.group_lost:
                    break
        finally:
            why = "see the server log"
            try:
                sm.end_group()
            except KeeldbError as exc:
                why = exc.message  # group_lost is set: answered below
        if sm.group_lost:  # a store write failed: memory is back to what the store holds
            err = ErrorReply(f"ERR the store's write failed ({why}); these commands may not "
                             "have applied: check the disk (space, permissions) and retry")
            return [(done, err, started, "read" if batch.read_only else "write")
                    for batch, _, done, started in group]
        if wrote and self._sync_always:
            began = time.perf_counter()
            try:
                self._db.sync()
            except KeeldbError as exc:
                err = ErrorReply(f"ERR fsync failed ({exc.message}); the last writes may or "
                                 "may not be durable: check the disk and restart the server")
                out = [(done, err, started, kind) for done, _, started, kind in out]
            self._metrics.fsyncs.inc()
            self._metrics.fsync_latency.observe(time.perf_counter() - began)
        self._metrics.group_batches.observe(len(group))
        self._metrics.applied_index.set(self._sm.applied_index)
        return out

    def _apply_one(self, batch: kv.Batch, now_ms: int) -> Result:
        sm = self._sm
        try:
            if batch.read_only:
                return sm.read_batch(batch, now_ms=now_ms)
            return sm.apply(batch, index=sm.applied_index + 1, now_ms=now_ms)
        except KeeldbError as exc:  # storage failed or stalled: this batch did not apply
            return ErrorReply(f"ERR {exc.message}")

    def try_inline(self, batch: kv.Batch) -> Result | None:
        """Run `batch` now, on the loop, when that keeps every guarantee: nothing is in
        flight (so the apply thread is idle and everything applied is durable), and the
        batch needs no fsync (a read, or any batch unless sync=always). None = submit it."""
        if self._inflight or self._stop or (self._sync_always and not batch.read_only):
            return None
        started = time.perf_counter()
        result = self._apply_one(batch, self.now_ms())
        self._metrics.latency.labels("read" if batch.read_only else "write").observe(
            time.perf_counter() - started)
        return result

    # --- back on the loop ------------------------------------------------------------------

    def _deliver(self, results: list[tuple[Done, Result, float, str]]) -> None:
        now = time.perf_counter()
        observers = self._observe
        for done, result, started, kind in results:
            observe = observers.get(kind)
            if observe is None:  # labels() takes a lock and a dict lookup: once per kind
                observe = observers[kind] = self._metrics.latency.labels(kind).observe
            observe(now - started)
            done(result)
        self._inflight -= len(results)
        assert self._inflight >= 0, f"apply path delivered more than submitted: {self._inflight}"
        if self._inflight < limits.server_apply_queue_max:
            self.room.set()
        if not self._inflight:
            self.idle.set()


class _Client(asyncio.Protocol):
    """One client socket as an asyncio Protocol: each chunk read is parsed and its requests
    handled in the read callback itself (no reader task to wake, no await per request), and
    replies go straight to the transport. The protocol state lives in `conn`.

    Reading pauses while `conn` wants no input (back-pressure), while the apply path has no
    room, and while more than `limits.server_reply_high_water_bytes` of replies are unsent.
    Closing (QUIT, a protocol error, shutdown, too many clients) lingers: once no execute is
    pending, the written replies are followed by a FIN and the client's further input is
    drained (at most `server_linger_bytes_max` for `server_linger_ms`) so no RST destroys
    the last reply."""

    __slots__ = ("server", "conn", "transport", "closing", "gone", "read_paused",
                 "write_paused", "waiting_room", "lingering", "linger_left")

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.conn: Connection | None = None  # None: refused (max clients or shutting down)
        self.transport: asyncio.Transport | None = None
        self.closing = False  # stop reading requests; close after the replies written
        self.gone = False  # the socket is closed: late results are dropped
        self.read_paused = False
        self.write_paused = False
        self.waiting_room = False  # a task waits for the apply path's room
        self.lingering = False  # FIN sent: input is drained until the timer or the limit
        self.linger_left = limits.server_linger_bytes_max

    # --- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = cast(asyncio.Transport, transport)  # uvloop's are look-alikes
        server = self.server
        if server._closing:
            self.gone = True
            tr.close()
            return
        if len(server._clients) >= server.config.max_clients:
            server.metrics.rejected.inc()
            tr.write(ERR_MAX_CLIENTS)
            self.closing = True
            self.update()
            return
        server._next_id += 1
        peer = tr.get_extra_info("peername") or ("?", 0)
        self.conn = Connection(server._next_id, server._conn_config,
                               peer=f"{peer[0]}:{peer[1]}")
        tr.set_write_buffer_limits(high=limits.server_reply_high_water_bytes)
        server._clients.add(self)
        server.metrics.accepted.inc()
        server.metrics.connections.inc()

    def data_received(self, data: bytes) -> None:
        if self.gone:
            return
        if self.closing or self.conn is None:
            self._drain_input(len(data))
            return
        self.server._handle(self, self.conn.receive(data))
        self.update()

    def eof_received(self) -> bool:
        """The client half-closed: answer what it already sent, then close (lingering)."""
        if self.gone or self.conn is None or not self.conn.pending_executes:
            return False  # nothing left to answer: close now
        self.closing = True
        self.update()
        return True  # keep the write side open until the pending replies are out

    def pause_writing(self) -> None:
        self.write_paused = True
        self.update()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.update()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        server = self.server
        if self in server._clients:
            server._clients.discard(self)
            server.metrics.connections.dec()

    # --- reading state -------------------------------------------------------------------

    def update(self) -> None:
        """Pause or resume reading to match the state; start lingering once closing."""
        tr = self.transport
        if self.gone or tr is None:
            return
        if self.closing:
            if not self.lingering and (self.conn is None or not self.conn.pending_executes):
                self._linger(tr)
            want = self.lingering  # drain input only after the FIN
        else:
            assert self.conn is not None
            apply = self.server._apply
            room = apply is None or apply.room.is_set()
            want = self.conn.wants_input and room and not self.write_paused
            if not room and not self.waiting_room and apply is not None:
                self.waiting_room = True
                asyncio.get_running_loop().create_task(self._wait_room(apply.room))
        if want and self.read_paused:
            self.read_paused = False
            tr.resume_reading()
        elif not want and not self.read_paused:
            self.read_paused = True
            tr.pause_reading()

    async def _wait_room(self, room: asyncio.Event) -> None:
        await room.wait()
        self.waiting_room = False
        self.update()

    def _linger(self, tr: asyncio.Transport) -> None:
        self.lingering = True
        if tr.can_write_eof():
            tr.write_eof()  # after the buffered replies
        asyncio.get_running_loop().call_later(limits.server_linger_ms / 1000, tr.close)

    def _drain_input(self, n: int) -> None:
        self.linger_left -= n
        if self.linger_left <= 0 and self.transport is not None:
            self.transport.close()


class RespServer:
    """The server process's core: `await start()`, then `await serve()` until a stop."""

    def __init__(self, config: ServerConfig) -> None:
        config.check()
        if not __debug__:
            raise ConfigError("the server refuses to run under python -O (its invariants are "
                              "assertions); run it without -O")
        self.config = config
        self.data_dir = os.path.abspath(config.data_dir)
        self.db: DB | None = None
        self.sm: kv.KvStateMachine | None = None
        self.metrics = ServerMetrics(self._engine_stats)
        self.started_at = time.time()
        self._apply: ApplyPath | None = None
        self._server: asyncio.Server | None = None
        self._admin: AdminServer | None = None
        self._cluster_admin: Any = None  # Raft mode: raft_admin.ClusterAdmin (POST /cluster)
        self._clients: set[_Client] = set()
        self._next_id = 0
        self._closing = False
        self._stopped = asyncio.Event()
        self._fatal: BaseException | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_inflight = False
        self._conn_config = ConnectionConfig(
            password=config.password, info=self._info,
            config={"save": "", "appendonly": "no", "maxclients": str(config.max_clients),
                    "bind": config.host, "dir": self.data_dir})

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, then listen; on any failure nothing stays open."""
        loop = asyncio.get_running_loop()
        # sync=always fsyncs once per group here, so the DB itself need not fsync each write.
        db_sync = "never" if self.config.sync == "always" else self.config.sync
        # Raft mode: the raft log (fsynced per batch) makes writes durable; the store under
        # kv/ is replayed from it after a crash, so it need not fsync.
        raft = self.config.raft
        db_dir = os.path.join(self.data_dir, "kv") if raft else self.data_dir
        self.db = open_db(db_dir, sync="never" if raft else db_sync)
        try:
            # DB has the engine calls the state machine makes (get, scan, write).
            self.sm = kv.KvStateMachine(cast(Engine, self.db))
            self.metrics.applied_index.set(self.sm.applied_index)
            if raft:
                from keeldb.server.raft_admin import ClusterAdmin
                from keeldb.server.raft_apply import RaftApplyPath, parse_peers
                path = RaftApplyPath(self.sm, loop, self.metrics, node_id=self.config.node_id,
                                     peers=parse_peers(self.config.peers or self.config.join),
                                     raft_dir=os.path.join(self.data_dir, "raft"),
                                     on_fatal=self._fatal_error,
                                     fault_port=self.config.fault_port,
                                     join=bool(self.config.join),
                                     lease_reads=self.config.read_mode == "lease",
                                     config=raft_node_config(self.config.snapshot_entries),
                                     redirect=self.config.redirect)
                self._apply = path
                await path.open()
                self._cluster_admin = ClusterAdmin(path)
                self._cluster_admin.start()
            else:
                self._apply = LocalApplyPath(self.db, self.sm, loop, self.metrics,
                                             sync_always=self.config.sync == "always",
                                             on_fatal=self._fatal_error)
            self._apply.start()
            try:
                self._server = await loop.create_server(
                    lambda: _Client(self), self.config.host, self.config.port)
                if self._cluster_admin is not None:
                    host = self.config.host if self.config.host not in ("", "0.0.0.0", "::") \
                        else "127.0.0.1"
                    self._cluster_admin.announce(f"{host}:{self.port}")
                if self.config.admin_port is not None:
                    self._admin = AdminServer(
                        self.config.admin_port, self.metrics, self.status,
                        self._cluster_admin.handle if self._cluster_admin else None)
                    await self._admin.start()
            except OSError as exc:
                raise ConfigError(f"cannot listen ({exc.strerror or exc}) on "
                                  f"{self.config.host}:{self.config.port} or admin port "
                                  f"{self.config.admin_port}; pick free ports (0 = any) or "
                                  "stop the server holding them") from None
        except BaseException:
            await self._close_store()
            raise
        self._sweeper = loop.create_task(self._sweep_loop())

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def admin_port(self) -> int | None:
        return None if self._admin is None else self._admin.port

    def ready_line(self) -> str:
        admin = "off" if self._admin is None else f"http://127.0.0.1:{self.admin_port}"
        return (f"keeldb serving redis://{self.config.host}:{self.port} admin={admin} "
                f"data={self.data_dir} sync={self.config.sync} node={self.config.node_id}")

    def request_stop(self) -> None:
        self._stopped.set()

    async def serve(self) -> None:
        """Run until `request_stop` (SIGTERM/SIGINT when installed), then shut down cleanly.
        Re-raises an apply-thread failure after shutdown."""
        await self._stopped.wait()
        await self.shutdown()
        if self._fatal is not None:
            raise self._fatal

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    def _fatal_error(self, exc: BaseException) -> None:
        print(f"keeldb serve: apply thread failed: {exc!r}", file=sys.stderr, flush=True)
        self._fatal = exc
        self._stopped.set()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight batches finish and their replies go out (bounded by
        server_shutdown_drain_ms_max), close connections, then sync and close the store."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._admin is not None:
            await self._admin.close()
        if self._cluster_admin is not None:
            await self._cluster_admin.close()
        for client in list(self._clients):
            client.closing = True  # read no more requests
            client.update()
        if self._apply is not None:
            self._apply.room.set()  # wake readers waiting for room: they see `closing`
        drain_s = limits.server_shutdown_drain_ms_max / 1000
        if self._apply is not None and self._fatal is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._apply.idle.wait(), drain_s)
        for client in list(self._clients):
            if client.transport is not None:
                client.transport.close()
        await asyncio.sleep(0)  # let the transports report connection_lost
        await self._close_store()

    async def _close_store(self) -> None:
        if self._apply is not None:
            await self._apply.stop()
            self._apply = None
        if self.db is not None:
            db, self.db = self.db, None
            with contextlib.suppress(KeeldbError):
                db.sync()  # every policy: a clean stop leaves nothing unsynced
            db.close()

    # --- connections -----------------------------------------------------------------------

    def _handle(self, client: _Client, outputs: list[Output]) -> None:
        """Carry out a Connection's outputs, in order. Executes run inline while the apply
        path allows it (see `try_inline`); once one is proposed, the later ones follow it
        (a connection's batches apply in its request order)."""
        assert self._apply is not None, "outputs after the apply path stopped"
        assert client.conn is not None, "outputs on a refused connection"
        proposals: list[tuple[kv.Batch, Done]] = []
        work = deque(outputs)
        while work and not client.gone:
            out = work.popleft()
            if not isinstance(out, Execute):
                self._emit(client, out)
                continue
            if self._closing:
                continue  # shutting down: requests not yet proposed stay unanswered
            if proposals:
                result = None
            elif client.conn.readonly and self.config.raft and out.batch.read_only:
                result = cast(Any, self._apply).stale_read(out.batch)  # READONLY: local state
            else:
                result = self._apply.try_inline(out.batch)
            if result is None:
                proposals.append((out.batch, functools.partial(self._complete, client,
                                                               out.ticket)))
                continue
            for more in client.conn.complete(out.ticket, result):
                # Replies go out now; new executes are of requests later than those queued.
                if isinstance(more, Execute):
                    work.append(more)
                else:
                    self._emit(client, more)
        if proposals:
            self._apply.submit(proposals)

    def _emit(self, client: _Client, out: Send | Close) -> None:
        if isinstance(out, Send):
            transport = client.transport
            assert transport is not None
            transport.write(out.data)
            self.metrics.commands.inc()
            if out.data[:1] in (b"-", b"!"):
                self.metrics.errors.inc()
            if transport.get_write_buffer_size() > limits.server_reply_backlog_bytes_max:
                self.metrics.dropped.inc()  # a client that does not read its replies
                client.closing = client.gone = True
                transport.abort()
            return
        assert isinstance(out, Close), f"unknown connection output {out!r}"
        if out.protocol_error:
            self.metrics.protocol_errors.inc()
        client.closing = True  # update() (after this output) starts the linger

    def _complete(self, client: _Client, ticket: int, result: Result) -> None:
        if client.gone or self._apply is None:
            return
        assert client.conn is not None
        outputs = client.conn.complete(ticket, result)
        if len(outputs) == 1 and type(outputs[0]) is Send:
            self._emit(client, outputs[0])  # the common case: one reply, nothing to run
        else:
            self._handle(client, outputs)
        client.update()

    # --- expiry ----------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        """Propose Sweep(n) now and then (Redis's active expiry); reads never delete. A sweep
        that removed over a quarter of what it examined is followed at once by another."""
        interval = self.config.sweep_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            sm, apply = self.sm, self._apply
            if sm is None or apply is None or self._sweep_inflight or sm.key_count == 0:
                continue
            self._sweep_inflight = True
            apply.submit([(kv.Batch((kv.Sweep(limits.server_sweep_keys),)), self._swept)])

    def _swept(self, result: Result) -> None:
        self._sweep_inflight = False
        if isinstance(result, kv.Applied) and result.replies:
            removed = result.replies[0]
            assert isinstance(removed, int), f"Sweep replied {removed!r}"
            self.metrics.expired.inc(removed)
            if removed * 4 > limits.server_sweep_keys and self._sweeper is not None \
                    and not self._closing:
                self._sweep_inflight = True
                assert self._apply is not None
                self._apply.submit([(kv.Batch((kv.Sweep(limits.server_sweep_keys),)),
                                     self._swept)])

    # --- introspection ---------------------------------------------------------------------

    def _engine_stats(self) -> Any:
        db = self.db
        if db is None:
            return None
        with contextlib.suppress(KeeldbError):
            return db.stats()
        return None

    def _info(self) -> dict[str, dict[str, object]]:
        keys = self.sm.key_count if self.sm is not None else 0
        return {
            "server": {"tcp_port": self.port, "uptime_in_seconds": int(time.time()
                                                                       - self.started_at),
                       "keeldb_node_id": self.config.node_id,
                       "keeldb_role": (cast(Any, self._apply).status()["role"]
                                       if self.config.raft and self._apply is not None
                                       else "standalone")},
            "clients": {"connected_clients": len(self._clients),
                        "maxclients": self.config.max_clients},
            "persistence": {"keeldb_sync": self.config.sync,
                            "keeldb_data_dir": self.data_dir},
            "keyspace": {"db0": f"keys={keys}"} if keys else {},
        }

    def status(self) -> dict[str, Any]:
        """What GET /status answers."""
        stats = self._engine_stats()
        sm = self.sm
        raft: dict[str, Any] = {}
        if self.config.raft and self._apply is not None:
            raft = cast(Any, self._apply).status()
        return {
            "node_id": self.config.node_id,
            "role": "standalone",
            "data_dir": self.data_dir,
            "address": f"{self.config.host}:{self.port}" if self._server else None,
            "sync": self.config.sync,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "connections": len(self._clients),
            "max_clients": self.config.max_clients,
            "applied_index": sm.applied_index if sm is not None else None,
            "keys": sm.key_count if sm is not None else None,
            "engine": asdict(stats) if stats is not None else None,
            **raft,  # Raft mode: role, term, commit_index, leader, ...
        }


def raft_node_config(snapshot_entries: int) -> Any:
    """The RaftNodeConfig of a server (imported lazily: single nodes never load Raft)."""
    from keeldb.node.raft_node import RaftNodeConfig
    # A server's state machine is the whole store: snapshotting it every
    # raft_node_snapshot_entries (sized for the simulator) would cost more than the writes.
    snapshot_entries = snapshot_entries or limits.server_raft_snapshot_entries
    # Real processes share cores with other work: a heartbeat per 10 ms tick and a 100 ms
    # election timeout (the simulator's pace) cost CPU on every node and let a busy leader
    # lose its lease; a server uses etcd-like ratios (heartbeat 50 ms, election 300-600 ms).
    return RaftNodeConfig(snapshot_entries=snapshot_entries,
                          keep_entries=min(limits.raft_node_keep_entries, snapshot_entries),
                          heartbeat_ticks=limits.server_raft_heartbeat_ticks,
                          election_ticks=limits.server_raft_election_ticks)


async def _main(config: ServerConfig, ready: Callable[[str], None]) -> None:
    # The loop and the apply thread hand work to each other all the time; with the default
    # 5 ms GIL switch interval a woken thread can wait that long for its turn.
    sys.setswitchinterval(limits.server_gil_switch_interval_us / 1e6)
    server = RespServer(config)
    await server.start()
    server.install_signal_handlers()
    ready(server.ready_line())
    await server.serve()


def run(config: ServerConfig, ready: Callable[[str], None]) -> None:
    """Serve until SIGTERM/SIGINT; `ready` gets one line with the addresses once listening.
    Runs on uvloop when it is installed (`pip install 'keeldb[bench]'`; a third less CPU per
    request than asyncio's own loop) unless KEELDB_NO_UVLOOP=1."""
    if not os.environ.get("KEELDB_NO_UVLOOP"):
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(_main(config, ready))
            return
    asyncio.run(_main(config, ready))

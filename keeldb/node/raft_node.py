"""`RaftNode`: the sans-IO Raft core composed into a node (the `keeldb.node.effects` contract).

One object per incarnation. It holds the core (`keeldb.consensus.Raft`), the durable log
(`raft_log.DurableLog`, files `raft.log` and `raft.snap`), a `StateMachine` wrapped in
`Sessions` (exactly-once writes), and the client requests it is answering.

The Ready contract, mapped onto effects (docs/design/raft.md):

1. `rd.messages` -> `Send` at once;
2. snapshot, entries and hard state -> `Persist` records of `raft.log` (and a replace of
   `raft.snap`), then ONE `Sync(op=k)` of the log (group commit: everything proposed since the
   last batch shares it). A batch that only moves the commit index is written without a
   sync and handled at once (a lost commit index is learned again; etcd does the same);
3. `rd.messages_after_persist` -> `Send(..., after=k)`;
4. when `SyncDone(k)` arrives: the storage the core reads is updated, committed entries are
   applied (`Apply`), client replies go out, read states are served, then `advance(rd)`.
   Only one Ready is in flight; steps keep feeding the core meanwhile, so the next batch
   gathers everything that arrived during the fsync.

Snapshots. Every `snapshot_entries` applied entries the node asks for its state machine's
image with `Capture` (built off the node's thread from a state frozen at the applied index)
and compacts the log when `CaptureDone` arrives and no Ready is in flight (`_maybe_compact`).

A failed write or sync halts the node (after a failed fsync nothing is known; recover from
the disk). After a (process) crash the page cache may still hold records that were never
synced (and after a failed directory fsync a rename may not be durable), so a starting node
rewrites its log with the bytes it read (a replace: file and directory synced) before it
runs the core at all.

Clients. Writes are proposed by the node that received them: a follower's core forwards the
proposal to the leader (we forward rather than redirect), and the receiving node replies when
it applies the entry carrying its (session, seq). Every entry carries the node's session id
(unique per incarnation) and a sequence number; `Sessions` applies each (session, seq) once,
so the node may re-propose a write that got lost (new leader, dropped message) with the same
identity. A write waits at most `request_wait_ticks` (a leader election): then it gets `fail`
if it was never accepted by a core, else `info` (outcome unknown). Reads use ReadIndex (a
follower asks the leader) and are answered from the local state machine once it applied up
to the read index; a read with `value == "stale"` is answered from local state at once.

Membership (the member file, the disk's lineage, the address book hook, conf-change and
transfer requests) is the `raft_members.RaftMembership` mixin.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keeldb import limits
from keeldb.consensus import (
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MsgType,
    Raft,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from keeldb.errors import (
    CorruptionError,
    ProposalDroppedError,
    UsageError,
)
from keeldb.node import raft_codec
from keeldb.node.effects import (
    Apply,
    Capture,
    CaptureDone,
    ClientRequest,
    Effect,
    Event,
    Halt,
    Persist,
    PersistDone,
    Received,
    Reply,
    Send,
    SetTimer,
    Start,
    Sync,
    SyncDone,
    Tick,
)
from keeldb.node.raft_codec import encode_record, snapshot_to_plain
from keeldb.node.raft_log import (
    LOG_FILE,
    SNAP_FILE,
    DurableLog,
    Write,
    recover,
    recover_prefix,
)
from keeldb.node.raft_members import (
    ANNOUNCE,
    CONF_CHANGE,
    DAMAGE_CONFIRM_READS,
    SUSPECT_FILE,
    TRANSFER,
    WIPED,
    RaftMembership,
    announce_command,
    suspect_reads,
)
from keeldb.node.raft_members import (
    MEMBER_FILE as MEMBER_FILE,  # re-exported (tests, hosts name it from here)
)
from keeldb.node.raft_sessions import (  # re-exported: hosts and tests name them here
    Sessions as Sessions,
)
from keeldb.node.raft_sessions import (
    StateMachine as StateMachine,
)
from keeldb.types import NodeId

MS = 1_000_000
TICK_TIMER = "raft-tick"
FLUSH_TIMER = "raft-flush"  # a host's "end of this turn" (RaftNodeConfig.propose_on_flush)
STALE_READ = "stale"  # ClientRequest.key (or .value) of a read served from local state
ENTRY_OVERHEAD_BYTES = 1024  # session id, seq and low around a command in an entry


@dataclass(frozen=True, slots=True)
class RaftNodeConfig:
    """Knobs of a RaftNode. Times are in ticks of `tick_ns`."""

    tick_ns: int = limits.raft_node_tick_ms * MS
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_entries: int = limits.raft_node_snapshot_entries
    keep_entries: int = limits.raft_node_keep_entries
    request_wait_ticks: int = limits.raft_node_request_wait_ms // limits.raft_node_tick_ms
    # a request no core accepted (no leader known) fails sooner: the client may try elsewhere
    unaccepted_wait_ticks: int = 20
    retry_ticks: int = 10  # re-propose / re-ask a read not answered after this many ticks
    pending_max: int = limits.raft_node_pending_requests_max
    sessions_max: int = limits.raft_node_sessions_max
    # A new member (`keeldb serve --join`): an empty disk starts with no membership at all
    # (no bootstrap); it learns the cluster from the leader's snapshot, as a learner.
    join: bool = False
    # ReadIndex answered from the leader's lease, without a heartbeat round (clock bound:
    # docs/cluster.md "Read modes"); off = every linearizable read confirms leadership.
    lease_reads: bool = False
    # Client requests wait for a Tick named FLUSH_TIMER (or any other event that hands out
    # a Ready) before the core sees them: a host that sends one flush per event-loop turn
    # makes every request of the turn one proposal, one append and one fsync.
    propose_on_flush: bool = False

    def __post_init__(self) -> None:
        assert self.tick_ns > 0 and self.snapshot_entries > 0 and self.keep_entries >= 0, self
        assert self.request_wait_ticks > 0 and self.retry_ticks > 0 and self.pending_max > 0
        assert 0 < self.unaccepted_wait_ticks <= self.request_wait_ticks, self


@dataclass(slots=True)
class _Write:
    request_id: int
    data: bytes
    born: int  # in ticks
    deadline: int
    proposed: bool = False
    tried_at: int = -1


@dataclass(slots=True)
class _Read:
    request_id: int
    command: bytes
    born: int
    deadline: int
    index: int | None = None  # the read index, once confirmed
    asked: bool = False
    asked_at: int = -1
    # This node's write seq when the read arrived: the read is served only once every write
    # of this node up to it is answered, so a pipelined SET then GET reads its own write.
    after: int = 0


@dataclass(slots=True)
class RaftNodeStats:
    readies: int = 0
    syncs: int = 0
    applied_entries: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
    bad_messages: int = 0
    reproposals: int = 0


class RaftNode(RaftMembership):
    """A Raft-replicated `StateMachine` as a sans-IO node (see the module docstring)."""

    def __init__(self, sm_factory: Callable[[], StateMachine],
                 config: RaftNodeConfig | None = None) -> None:
        self.cfg = config if config is not None else RaftNodeConfig()
        self.sm_factory = sm_factory
        self.stats = RaftNodeStats()
        self.id = NodeId("")
        self.session = ""
        self.state = "new"  # new -> recovering -> running; or halting
        self.op = 0
        self.ticks = 0
        self.seq = 0
        self.raft: Raft | None = None
        self.dlog: DurableLog | None = None
        self.sessions = Sessions(sm_factory(), self.cfg.sessions_max)
        self.applied = 0
        self.start_sync = -1
        self.inflight: tuple[Ready, int] | None = None  # the Ready waiting for its sync
        self.writes: dict[int, _Write] = {}  # seq -> write
        # Writes not yet given to the core: while a Ready waits for its sync, new writes
        # gather here and go to the core as ONE proposal when it is handed out (`_pump`),
        # so a busy node sends one MsgApp per follower per fsync, not one per write.
        self.queued: dict[int, None] = {}  # seqs, in arrival order
        self.reads: dict[bytes, _Read] = {}  # ReadIndex context -> read
        # The state-machine image being built off the loop (op, applied index, conf at it),
        # and a finished one waiting until no Ready is in flight to replace the log files.
        self.capturing: tuple[int, int, ConfState] | None = None
        self.captured: tuple[int, ConfState, bytes, bytes] | None = None
        self._init_membership()  # admin, member_state, lineage, on_members (raft_members)

    # --- the Node contract -----------------------------------------------------------------

    def step(self, event: Event) -> list[Effect]:
        if isinstance(event, Start):
            return self._start(event)
        if isinstance(event, PersistDone | SyncDone):
            return self._disk_done(event)
        if isinstance(event, Tick):
            return self._tick(event)
        if isinstance(event, Received):
            return self._received(event)
        if isinstance(event, ClientRequest):
            return self._request(event)
        if isinstance(event, CaptureDone):
            return self._capture_done(event)
        raise AssertionError(f"RaftNode {self.id!r} cannot handle {event!r}")

    def _next_op(self) -> int:
        self.op += 1
        return self.op

    def _persists(self, writes: list[Write]) -> list[Effect]:
        return [Persist(self._next_op(), w.file, w.data, w.replace) for w in writes]

    # --- start and recovery ----------------------------------------------------------------

    def _start(self, ev: Start) -> list[Effect]:
        assert self.state == "new", f"second Start for {ev.node!r}"
        self.id = ev.node
        rec = recover(ev.files)
        out: list[Effect] = []
        if ev.files.get(SUSPECT_FILE) and not rec.problem:
            out.append(Persist(self._next_op(), SUSPECT_FILE, b"", replace=True))
        if rec.problem:
            seen = suspect_reads(ev.files.get(SUSPECT_FILE, b""), rec.fingerprint)
            if seen + 1 < DAMAGE_CONFIRM_READS:
                # Maybe a transient read error: note what we saw, halt, read again.
                self.state = "halting"
                note = rec.fingerprint + b"#" + str(seen + 1).encode()
                return [Persist(self._next_op(), SUSPECT_FILE, note, replace=True)]
            if rec.problem != "torn":
                raise CorruptionError(
                    f"node {ev.node!r}: {rec.where} is corrupt (the same bytes read "
                    f"{DAMAGE_CONFIRM_READS} times); it may hold acknowledged entries, so the "
                    "node will not start: restore its data directory from a healthy peer",
                    path=rec.where)
            self.dlog = DurableLog(recover_prefix(ev.files, rec.log_valid))
            out.append(Persist(self._next_op(), SUSPECT_FILE, b"", replace=True))
        elif rec.empty:
            if self.cfg.join:
                self.dlog = DurableLog(MemoryStorage())  # no membership: the leader sends it
                writes = self.dlog.rewrite()
            else:
                self.dlog, writes = DurableLog.bootstrap(tuple(sorted((ev.node, *ev.peers))))
            out += self._persists(writes)
        else:
            self.dlog = DurableLog(rec.storage)
        if not rec.empty:
            # Rewrite the log as recovered before acting on it: it cuts a torn tail, drops
            # entries a newer snapshot replaced (a crash between the two replaces), makes
            # records a process crash left unsynced in the page cache durable, and syncs the
            # directory (after a failed op the last rename may not be durable).
            out.append(Persist(self._next_op(), LOG_FILE, self.dlog.log_image(), replace=True))
        st = self.dlog.storage
        # Unique per incarnation: entries of an earlier incarnation never match our seqs.
        self.session = f"{ev.node}@{ev.now_ns}.{st.hard_state.term}.{st.last_index()}"
        if rec.empty:
            log_replace = out.pop()
            assert isinstance(log_replace, Persist), log_replace
            out.append(self._new_member(self.session))
            out.append(Persist(self._next_op(), log_replace.file, log_replace.data,
                               log_replace.replace))
        else:
            halt = self._load_member(ev)
            if halt:
                return halt
        last = out[-1]
        assert isinstance(last, Persist) and last.file == LOG_FILE and last.replace, last
        self.start_sync = last.op  # the core runs once this replace is durable
        self.state = "recovering"
        return out

    def _run(self) -> list[Effect]:
        assert self.dlog is not None
        st = self.dlog.storage
        snap = st.snapshot()
        self.sessions.restore(snap.data)
        self.applied = snap.index
        cfg = Config(id=self.id, election_ticks=self.cfg.election_ticks,
                     heartbeat_ticks=self.cfg.heartbeat_ticks, applied=snap.index,
                     lease_reads=self.cfg.lease_reads,
                     # the lease ends a fifth of an election timeout early: clock-rate drift
                     lease_margin_ticks=max(2, self.cfg.election_ticks // 5))
        self.raft = Raft(cfg, st, random.Random(f"raft:{self.session}"))
        self.raft.refuse_votes = self.member_state == WIPED
        self.state = "running"
        self._members_changed()
        return [SetTimer(TICK_TIMER, self.cfg.tick_ns), *self._pump()]

    # --- events ----------------------------------------------------------------------------

    def _disk_done(self, ev: PersistDone | SyncDone) -> list[Effect]:
        if not ev.ok:
            self.state = "halting"
            return [Halt(f"disk op {ev.op} failed ({ev.error}); recovering from the disk")]
        if self.state == "halting":
            return [Halt("re-reading a suspect raft log")]
        if ev.op == self.start_sync:
            return self._run()
        if self.inflight is not None and ev.op == self.inflight[1]:
            rd, _ = self.inflight
            self.inflight = None
            self.stats.syncs += 1
            return self._finish(rd) + self._pump()
        return []

    def _tick(self, ev: Tick) -> list[Effect]:
        if ev.name == FLUSH_TIMER and self.state == "running":
            return self._pump()
        if ev.name != TICK_TIMER or self.state != "running":
            return []
        assert self.raft is not None
        self.ticks += 1
        self.raft.tick()
        out: list[Effect] = [SetTimer(TICK_TIMER, self.cfg.tick_ns)]
        out += self._retry_or_expire()
        out += self._admin_progress()
        return out + self._pump()

    def _received(self, ev: Received) -> list[Effect]:
        if self.state != "running":
            return []  # recovering: the sender retries
        if not isinstance(ev.msg, bytes | bytearray):
            self.stats.bad_messages += 1
            return []
        assert self.raft is not None
        try:
            m = raft_codec.decode_message(bytes(ev.msg))
        except CorruptionError:
            self.stats.bad_messages += 1
            return []
        if m.to != self.id:
            self.stats.bad_messages += 1
            return []
        self.raft.step(m)
        return self._pump()

    def _request(self, req: ClientRequest) -> list[Effect]:
        if self.state != "running":
            return [Reply(req.request_id, "fail", error="node is recovering; retry")]
        if req.f in (CONF_CHANGE, TRANSFER):
            return self._admin_request(req) + self._pump()
        if len(self.writes) + len(self.reads) >= self.cfg.pending_max:
            return [Reply(req.request_id, "fail",
                          error=f"{self.cfg.pending_max} requests pending on {self.id}, the "
                                "limit raft_node_pending_requests_max; retry later")]
        kind = ""
        try:
            if req.f == ANNOUNCE:
                command = announce_command(str(req.key), str(req.value), self.lineage)
                read_only, kind = False, ANNOUNCE
            else:
                command, read_only = self.sessions.sm.command(req.f, req.key, req.value)
        except (UsageError, ValueError, TypeError) as exc:
            return [Reply(req.request_id, "fail", error=str(exc))]
        deadline = self.ticks + self.cfg.request_wait_ticks
        if read_only:
            if STALE_READ in (req.key, req.value):
                kind, value = self.sessions.sm.read(command)
                return [Reply(req.request_id, "ok" if kind == "ok" else "fail", value)]
            ctx = f"{self.session}#{req.request_id}".encode()
            self.reads[ctx] = _Read(req.request_id, command, self.ticks, deadline,
                                    after=self.seq)
            self._ask_read(ctx)
        else:
            if len(command) > limits.raft_entry_bytes_max - ENTRY_OVERHEAD_BYTES:
                return [Reply(req.request_id, "fail",
                              error=f"command of {len(command)} bytes, over the limit "
                                    f"raft_entry_bytes_max={limits.raft_entry_bytes_max}; "
                                    "store large values outside the log")]
            self.seq += 1
            # The smallest pending seq: `writes` is keyed by increasing seq in insertion
            # order, so it is the first key (O(1), not a scan per request).
            low = next(iter(self.writes), self.seq)
            data = Sessions.encode(self.session, self.seq, low, command, kind)
            self.writes[self.seq] = _Write(req.request_id, data, self.ticks, deadline)
            self.queued[self.seq] = None  # proposed by `_pump` (at once if nothing waits)
        return [] if self.cfg.propose_on_flush else self._pump()

    # --- client requests -------------------------------------------------------------------

    def _propose(self, seq: int) -> None:
        assert self.raft is not None
        w = self.writes[seq]
        if w.proposed:
            self.stats.reproposals += 1
        w.tried_at = self.ticks
        try:
            self.raft.propose(w.data)
            w.proposed = True
        except ProposalDroppedError:
            pass  # no leader known: tried again on the next tick

    def _propose_queued(self) -> None:
        """Give every queued write to the core, in proposal messages of at most
        raft_proposal_entries_max entries (one append, one MsgApp per follower each)."""
        assert self.raft is not None
        # A write that arrived after a pending read stays queued until that read is
        # answered, so the read cannot see it (per-node request order; `reads` is in
        # arrival order, so its first read has the smallest `after`).
        limit = next(iter(self.reads.values())).after if self.reads else self.seq
        seqs = [q for q in self.queued
                if q <= limit and q in self.writes and not self.writes[q].proposed]
        held = [q for q in self.queued if q > limit]
        self.queued.clear()
        for q in held:
            self.queued[q] = None
        step = limits.raft_proposal_entries_max
        for i in range(0, len(seqs), step):
            chunk = [self.writes[q] for q in seqs[i:i + step]]
            try:
                self.raft.step(Message(MsgType.PROP, frm=self.id, entries=tuple(
                    Entry(0, 0, w.data) for w in chunk)))
            except ProposalDroppedError:
                for w in chunk:
                    w.tried_at = self.ticks  # no leader known: tried again on a tick
                continue
            for w in chunk:
                w.proposed = True
                w.tried_at = self.ticks

    def _ask_read(self, ctx: bytes) -> None:
        assert self.raft is not None
        r = self.reads[ctx]
        r.asked_at = self.ticks
        try:
            self.raft.read_index(ctx)
            r.asked = True
        except ProposalDroppedError:
            pass

    def _retry_or_expire(self) -> list[Effect]:
        out: list[Effect] = []
        unaccepted = self.cfg.unaccepted_wait_ticks
        for seq, w in list(self.writes.items()):
            if self.ticks >= w.deadline or (not w.proposed and self.ticks - w.born >= unaccepted):
                del self.writes[seq]
                self.queued.pop(seq, None)
                if w.proposed:
                    out.append(Reply(w.request_id, "info", error="no commit in time; the write "
                                     "may or may not have happened"))
                else:
                    out.append(Reply(w.request_id, "fail", error="no leader; retry"))
            elif seq in self.queued:
                continue  # proposed with the next Ready
            elif not w.proposed or self.ticks - w.tried_at >= self.cfg.retry_ticks:
                self._propose(seq)
        for ctx, r in list(self.reads.items()):
            if self.ticks >= r.deadline or (not r.asked and self.ticks - r.born >= unaccepted):
                del self.reads[ctx]
                out.append(Reply(r.request_id, "fail", error="read not confirmed in time; retry"))
            elif r.index is None and (not r.asked
                                      or self.ticks - r.asked_at >= self.cfg.retry_ticks):
                self._ask_read(ctx)
        # A read held back only by a write that just expired is served now.
        return out + self._serve_reads()

    def _serve_reads(self) -> list[Effect]:
        out: list[Effect] = []
        if not self.reads:
            return out
        # The oldest write of this node still unanswered (`writes` is in increasing seq
        # order): a read that arrived after it waits for it (per-node request order).
        low = next(iter(self.writes), None)
        for ctx, r in list(self.reads.items()):
            if r.index is not None and r.index <= self.applied and (low is None
                                                                     or low > r.after):
                del self.reads[ctx]
                kind, value = self.sessions.sm.read(r.command)
                out.append(Reply(r.request_id, "ok" if kind == "ok" else "fail", value))
        return out

    def _answer_write(self, seq: int, result: list[Any] | None) -> list[Effect]:
        w = self.writes.pop(seq, None)
        if w is None:
            return []
        if result is None:
            return [Reply(w.request_id, "info", error="applied earlier or skipped; unknown")]
        kind, value = result
        return [Reply(w.request_id, "ok" if kind == "ok" else "fail", value)]

    # --- the Ready loop --------------------------------------------------------------------

    def _pump(self) -> list[Effect]:
        """Hand out Readies until one must wait for its sync (one in flight at a time)."""
        assert self.raft is not None and self.dlog is not None
        out: list[Effect] = []
        while self.inflight is None:
            if self.queued:
                self._propose_queued()
            if not self.raft.has_ready():
                break
            rd = self.raft.ready()
            self.stats.readies += 1
            out += [Send(m.to, raft_codec.encode_message(m)) for m in rd.messages]
            if rd.must_sync and not self._commit_only(rd):
                out += self._persists(self.dlog.ready_writes(rd))
                sync = Sync(self._next_op(), LOG_FILE)
                out.append(sync)
                out += [Send(m.to, raft_codec.encode_message(m), after=sync.op)
                        for m in rd.messages_after_persist]
                self.inflight = (rd, sync.op)
                out += self._apply_durable(rd)
            else:
                # Nothing to wait for: at most a new commit index. It is not written at all
                # (a disk job per commit, twice per write at one client): a lost commit index
                # is learned again from the leader, as in etcd, so a stale one on disk is as
                # good; the next append carries the hard state when it changes again, and a
                # compaction writes the current one.
                assert not rd.entries and rd.snapshot is None, "a durable batch not synced"
                out += [Send(m.to, raft_codec.encode_message(m))
                        for m in rd.messages_after_persist]
                out += self._finish(rd)
        return out

    def _apply_durable(self, rd: Ready) -> list[Effect]:
        """Apply the committed entries of `rd` that this node's log already holds durably,
        without waiting for the sync of `rd`'s new entries: committed means durable on a
        quorum, so only this node's own copy could be missing, and it is not. On a leader
        that is every committed entry (it counts itself only for durable entries), so
        replies leave one fsync earlier. Stops at a snapshot or a conf change (those are
        applied with the core's `advance`, in `_finish`)."""
        assert self.dlog is not None
        if rd.snapshot is not None:
            return []
        durable = self.dlog.storage.last_index()
        out: list[Effect] = []
        applied = False
        for e in rd.committed_entries:
            if e.index <= self.applied:
                continue
            if e.index > durable or e.type != EntryType.NORMAL:
                break
            assert e.index == self.applied + 1, f"apply gap: {self.applied} -> {e.index}"
            self.applied = e.index
            self.stats.applied_entries += 1
            applied = True
            if not e.data:
                continue
            session, seq, result = self.sessions.apply(e.index, e.data)
            out.append(Apply(e.index, [session, seq]))
            if session == self.session:
                out += self._answer_write(seq, result)
        return out + self._serve_reads() if applied else out

    def _commit_only(self, rd: Ready) -> bool:
        """True if the batch changes nothing durable but the commit index."""
        assert self.dlog is not None
        if rd.entries or rd.snapshot is not None or rd.hard_state is None:
            return False
        old = self.dlog.storage.hard_state
        return (rd.hard_state.term, rd.hard_state.vote) == (old.term, old.vote)

    def _finish(self, rd: Ready) -> list[Effect]:
        """The Ready is durable: update storage, apply, serve reads, advance, compact."""
        assert self.raft is not None and self.dlog is not None
        self.dlog.apply_ready(rd)
        out: list[Effect] = []
        if rd.snapshot is not None and rd.snapshot.index > self.applied:
            self.sessions.restore(rd.snapshot.data)
            self.applied = rd.snapshot.index
            self.stats.snapshots_installed += 1
            self._members_changed()
            conf = rd.snapshot.meta.conf_state
            ours = self.sessions.clients.get(self.id)
            if self.id in conf.learners or (
                    self.id in conf.voters and (ours is None or ours[1] == self.lineage)):
                # A voter only when the book names no other disk of ours: a snapshot taken
                # before our earlier removal lists us as a voter with that disk's lineage
                # (REMOVE drops our entry, so after a re-add it is absent or ours).
                out += self._joined()
            for seq in list(self.writes):
                known, result = self.sessions.lookup(self.session, seq)
                if known:
                    out += self._answer_write(seq, result)
        for e in rd.committed_entries:
            if e.index <= self.applied:
                continue
            assert e.index == self.applied + 1, f"apply gap: {self.applied} -> {e.index}"
            self.applied = e.index
            self.stats.applied_entries += 1
            if e.type == EntryType.CONF_CHANGE:
                out += self._conf_applied(ConfChange.decode(e.data))
                continue
            if not e.data:
                continue
            session, seq, result = self.sessions.apply(e.index, e.data)
            out.append(Apply(e.index, [session, seq]))
            if session == self.session:
                out += self._answer_write(seq, result)
        for rs in rd.read_states:
            r = self.reads.get(rs.context)
            if r is not None and r.index is None:
                r.index = rs.index
        out += self._serve_reads()
        self.raft.advance(rd)
        return out + self._check_wiped() + self._maybe_compact()

    def _maybe_compact(self) -> list[Effect]:
        """Every `snapshot_entries` applied entries, snapshot the state machine and compact
        the log. The image is built off the node's thread: `Capture` freezes the state at
        `applied` (cheap) and its job serializes it while entries keep applying; the files
        are replaced when `CaptureDone` arrives and no Ready is in flight (`_install_capture`:
        a log rewrite must not race an append waiting for its sync)."""
        assert self.raft is not None and self.dlog is not None
        if self.captured is not None:
            return self._install_capture()
        st = self.dlog.storage
        if self.capturing is not None:
            return []  # one image at a time
        if self.applied - st.snapshot().index < self.cfg.snapshot_entries:
            return []
        if self.applied > st.last_index():
            return []  # applied from a snapshot not yet in storage: wait for the next Ready
        op, index, conf = self._next_op(), self.applied, self.raft.conf
        self.capturing = (op, index, conf)
        meta = SnapshotMeta(index, st.term(index), conf)
        image = self.sessions.capture()

        def job() -> tuple[bytes, bytes]:
            """(image, the `raft.snap` record holding it): both built off the loop."""
            data = image()
            return data, encode_record(snapshot_to_plain(Snapshot(meta, data)))
        return [Capture(op, job)]

    def _capture_done(self, ev: CaptureDone) -> list[Effect]:
        if self.capturing is None or ev.op != self.capturing[0] or self.state != "running":
            return []  # not ours (an earlier incarnation's, or we are halting)
        _, index, conf = self.capturing
        self.capturing = None
        if not ev.ok:
            self.state = "halting"
            return [Halt(f"state-machine snapshot at {index} failed ({ev.error}); "
                         "recovering from the disk")]
        data, record = ev.data
        self.captured = (index, conf, data, record)
        return self._maybe_compact() if self.inflight is None else []

    def _install_capture(self) -> list[Effect]:
        """Replace `raft.snap` and `raft.log` with the captured image (see `_maybe_compact`)."""
        assert self.dlog is not None and self.captured is not None and self.inflight is None
        index, conf, data, record = self.captured
        self.captured = None
        st = self.dlog.storage
        if index <= st.snapshot().index:
            return []  # a newer snapshot (from the leader) was installed meanwhile
        assert index <= min(self.applied, st.last_index()), (index, self.applied)
        self.stats.snapshots_taken += 1
        # DurableLog.compact, with the snapshot record the job encoded already
        st.create_snapshot(index, conf, data)
        st.compact(max(index - self.cfg.keep_entries, st.first_index() - 1))
        return self._persists([Write(SNAP_FILE, record, True),
                               Write(LOG_FILE, self.dlog.log_image(), True)])

    # --- introspection (tests, admin) ------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A summary for tests and admin endpoints."""
        if self.raft is None:
            return {"id": self.id, "state": self.state}
        s = self.raft.status()
        r = self.raft
        progress = {}
        if s.role == Role.LEADER:
            progress = {str(i): {"match": p.match, "next": p.next, "state": p.state.value,
                                 "learner": p.is_learner, "inflight": p.inflights.count()}
                        for i, p in sorted(r.prs.items()) if i != self.id}
        return {"id": self.id, "state": self.state, "role": s.role.value, "term": s.term,
                "lead": s.lead, "commit": s.commit, "applied": self.applied,
                "first_index": s.first_index, "last_index": s.last_index,
                "pending_writes": len(self.writes), "pending_reads": len(self.reads),
                "voters": list(s.conf.voters), "learners": list(s.conf.learners),
                "progress": progress, **self.membership_status(),
                "refuse_votes": r.refuse_votes, "votes_refused": r.votes_refused,
                "refused_for_index": r.refused_for_index, "lease_reads": r.cfg.lease_reads,
                "snapshots_installed": self.stats.snapshots_installed,
                "snapshots_taken": self.stats.snapshots_taken}


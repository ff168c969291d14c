"""The sans-IO Raft core, after etcd-io/raft.

`Raft` is a pure state machine. Inputs: `step(msg)` for messages from peers, `tick()` for the
passage of time (one logical clock tick; the node decides how long that is), and the local
requests `campaign`, `propose`, `propose_conf_change`, `read_index`, `transfer_leader`.
Outputs: `ready()` returns a `Ready` batch (entries, hard state and snapshot to persist,
messages to send before and after persisting, committed entries to apply, read states) and
`advance(ready)` tells the core the batch was handled. See `Ready` for the ordering contract
and docs/design/raft.md for the design.

No I/O, no clock, no module-level randomness: election jitter comes from the seeded
`random.Random` passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from keeldb import limits
from keeldb.consensus import snapshots
from keeldb.consensus.confchange import ConfChange, apply_conf_change, conf_change_refusal
from keeldb.consensus.log import RaftLog
from keeldb.consensus.messages import (
    CAMPAIGN_TRANSFER,
    LOCAL_TYPES,
    NONE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
)
from keeldb.consensus.progress import Progress, ProgressState
from keeldb.consensus.quorum import VoteResult, committed_index, has_quorum, vote_result
from keeldb.consensus.readonly import ReadOnly, ReadRequest, lease_valid
from keeldb.consensus.storage import Storage
from keeldb.errors import (
    ConfChangeRefusedError,
    ConfigError,
    LimitExceededError,
    LogCompactedError,
    ProposalDroppedError,
)
from keeldb.types import NodeId

# Responses that promise durable state: never sent before the Ready is persisted.
_AFTER_PERSIST = frozenset({MsgType.APP_RESP, MsgType.VOTE_RESP})
_VOTE_RESP = {MsgType.VOTE: MsgType.VOTE_RESP, MsgType.PRE_VOTE: MsgType.PRE_VOTE_RESP}
# Context of an APP_RESP reject a follower sends on a heartbeat whose commit index is past
# its last entry: it lost entries it had acknowledged (a wiped disk).
LOST_ENTRIES = b"lost"
# Context of an empty APP that only carries the commit index to a follower known to match
# (see _bcast_commit): accepted, it needs no APP_RESP.
NO_REPLY = b"commit"


@dataclass(frozen=True, slots=True)
class Config:
    """Knobs of one Raft node. Ticks are the unit of time; the node picks the tick length."""

    id: NodeId
    election_ticks: int = 10  # followers campaign after [election, 2*election) silent ticks
    heartbeat_ticks: int = 1
    pre_vote: bool = True  # ask "would you vote?" before bumping the term (no disruption)
    check_quorum: bool = True  # a leader that has not heard from a quorum steps down
    lease_reads: bool = False  # ReadIndex without a heartbeat round (needs bounded clock drift)
    lease_margin_ticks: int = 2  # the lease ends this many ticks early (clock drift allowance)
    applied: int = 0  # the state machine's applied index at start
    max_append_bytes: int = limits.raft_append_bytes_max
    max_inflight_msgs: int = limits.raft_inflight_msgs_max
    max_inflight_bytes: int = limits.raft_inflight_bytes_max
    snapshot_chunk_bytes: int = limits.raft_snapshot_chunk_bytes
    max_committed_bytes_per_ready: int = limits.raft_committed_bytes_per_ready_max
    max_uncommitted_bytes: int = limits.raft_uncommitted_bytes_max
    learner_catchup_entries: int = limits.raft_learner_catchup_entries_max

    def validate(self) -> None:
        if not self.id:
            raise ConfigError("raft Config.id is empty; give every node a distinct id")
        if self.heartbeat_ticks < 1:
            raise ConfigError(f"heartbeat_ticks={self.heartbeat_ticks} must be >= 1")
        if self.election_ticks < max(limits.raft_election_ticks_min, self.heartbeat_ticks + 1):
            raise ConfigError(f"election_ticks={self.election_ticks} must exceed "
                              f"heartbeat_ticks={self.heartbeat_ticks} and be >= "
                              f"raft_election_ticks_min={limits.raft_election_ticks_min}")
        if self.lease_reads and not 0 <= self.lease_margin_ticks < self.election_ticks:
            raise ConfigError(f"lease_margin_ticks={self.lease_margin_ticks} must be in "
                              f"[0, election_ticks={self.election_ticks})")
        if self.lease_reads and not self.check_quorum:
            raise ConfigError("lease_reads=True needs check_quorum=True: the lease is the "
                              "guarantee that a leader cut off from its quorum steps down")
        for name in ("max_append_bytes", "max_inflight_msgs", "max_inflight_bytes",
                     "snapshot_chunk_bytes", "max_committed_bytes_per_ready"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    role: Role
    term: int
    vote: NodeId
    lead: NodeId
    commit: int
    applied: int
    last_index: int
    first_index: int
    conf: ConfState
    progress: tuple[tuple[NodeId, str], ...]  # leader only: per-peer progress summaries


class Raft:
    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        config.validate()
        self.cfg = config
        self.id = config.id
        self.rng = rng
        hs, cs = storage.initial_state()
        self.log = RaftLog(storage)
        self.term = hs.term
        self.vote = hs.vote
        self.log.commit_to(hs.commit)
        self.persisted_hs = hs
        self.conf = cs
        if config.applied:
            self.log.applied_to(config.applied)
            self._replay_conf_changes(self.log.first_index(), config.applied)
        self.role = Role.FOLLOWER
        self.lead: NodeId = NONE
        self.prs: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.readonly = ReadOnly()
        self.pending_reads: list[Message] = []  # reads waiting for a commit in this term
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_ticks
        self.lead_transferee: NodeId = NONE
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.recv_snap = snapshots.Receiver()
        self._ready_out = False
        self.ticks = 0  # local logical clock: lease reads measure their lease in it
        # Set by the node for a member it found wiped (its disk lost the vote and the
        # entries it had acknowledged): it neither votes nor campaigns, it only replicates,
        # until an operator removes it and adds it back (docs/cluster.md).
        self.refuse_votes = False
        self._app_since_heartbeat = False  # see the HEARTBEAT case of _handle_from_leader
        self.votes_refused = 0  # vote requests refused because of `refuse_votes`
        self.refused_for_index = 0  # the longest candidate log among them
        self._become_follower(self.term, NONE)

    # --- public requests ------------------------------------------------------------------

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled)."""
        self.step(Message(MsgType.HUP, frm=self.id))

    def propose(self, data: bytes) -> None:
        """Ask to append `data` (opaque bytes). On a follower it is forwarded to the leader.
        Raises ProposalDroppedError when it cannot be accepted (retry, maybe elsewhere)."""
        self.step(Message(MsgType.PROP, frm=self.id, entries=(Entry(0, 0, data),)))

    def propose_conf_change(self, cc: ConfChange) -> None:
        entry = Entry(0, 0, cc.encode(), EntryType.CONF_CHANGE)
        self.step(Message(MsgType.PROP, frm=self.id, entries=(entry,)))

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; a `ReadState(index, context)` appears in a later
        Ready. Serve the read once the applied index reaches that index."""
        if not context:
            raise ValueError("read_index needs a non-empty context to match its ReadState")
        self.step(Message(MsgType.READ_INDEX, frm=self.id, context=context))

    def transfer_leader(self, target: NodeId) -> None:
        self.step(Message(MsgType.TRANSFER_LEADER, frm=self.id, target=target))

    def report_unreachable(self, peer: NodeId) -> None:
        """The transport could not deliver to `peer`: stop streaming to it and probe again."""
        self.step(Message(MsgType.UNREACHABLE, frm=peer))

    def tick(self) -> None:
        self.ticks += 1
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def status(self) -> Status:
        prog: tuple[tuple[NodeId, str], ...] = ()
        if self.role == Role.LEADER:
            prog = tuple((i, repr(p)) for i, p in sorted(self.prs.items()) if i != self.id)
        return Status(self.id, self.role, self.term, self.vote, self.lead, self.log.committed,
                      self.log.applied, self.log.last_index(), self.log.first_index(),
                      self.conf, prog)

    # --- Ready ----------------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def has_ready(self) -> bool:
        u = self.log.unstable
        phs = self.persisted_hs
        return bool(self.msgs or self.read_states or u.entries or u.snapshot is not None
                    or self.term != phs.term or self.vote != phs.vote
                    or self.log.committed != phs.commit
                    or self.log.has_next_committed_entries())

    def ready(self) -> Ready:
        """The next batch of work. Call `advance` with it before asking for another."""
        assert not self._ready_out, "ready() called again before advance()"
        hs = self._hard_state()
        # A new term or vote in this batch must be durable before anything is sent at it.
        hs_voting_changed = (hs.term, hs.vote) != (self.persisted_hs.term, self.persisted_hs.vote)
        early: list[Message] = []
        late: list[Message] = []
        for m in self.msgs:
            (late if hs_voting_changed or m.type in _AFTER_PERSIST else early).append(m)
        rd = Ready(
            entries=tuple(self.log.unstable.entries),
            hard_state=hs if hs != self.persisted_hs else None,
            snapshot=self.log.unstable.snapshot,
            committed_entries=tuple(self.log.next_committed_entries(
                self.cfg.max_committed_bytes_per_ready)),
            messages=tuple(early),
            messages_after_persist=tuple(late),
            read_states=tuple(self.read_states),
            lead=self.lead,
            role=self.role,
        )
        self.msgs = []
        self.read_states = []
        self._ready_out = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The node persisted, sent and applied `rd` as the Ready contract says."""
        assert self._ready_out, "advance() without a ready()"
        self._ready_out = False
        if rd.hard_state is not None:
            assert rd.hard_state.term >= self.persisted_hs.term, "persisted term regresses"
            self.persisted_hs = rd.hard_state
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.index)
            if rd.snapshot.index > self.log.applied:
                self.log.applied_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        for e in rd.committed_entries:
            if e.index <= self.log.applied:
                continue  # covered by a snapshot installed meanwhile
            self.log.applied_to(e.index)
            if self.role == Role.LEADER:
                self.uncommitted_bytes = max(0, self.uncommitted_bytes - len(e.data))
            if e.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(ConfChange.decode(e.data))
        if self.role == Role.LEADER and self.id in self.prs:
            # The leader counts itself only for entries it has made durable.
            stable = min(self.log.unstable.offset - 1, self.log.last_index())
            if self.prs[self.id].maybe_update(stable) and self._maybe_commit():
                self._bcast_commit()

    # --- sending --------------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        if len(self.msgs) >= limits.raft_outbox_messages_max:
            raise LimitExceededError(
                f"raft outbox holds {len(self.msgs)} messages, limit raft_outbox_messages_max="
                f"{limits.raft_outbox_messages_max}; call ready()/advance() after every step")
        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE, MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP):
            assert m.term > 0, f"{m.type} without a term"
            term = m.term
        elif m.type in (MsgType.PROP, MsgType.READ_INDEX, MsgType.TRANSFER_LEADER):
            term = 0  # forwarded requests carry no term
        else:
            term = self.term
        if m.frm != self.id or m.term != term:
            m = replace(m, frm=self.id, term=term)
        self.msgs.append(m)

    def _send_append(self, to: NodeId, send_if_empty: bool = True,
                     context: bytes = b"") -> bool:
        """Send `to` the entries from its `next` (or an empty append carrying the commit
        index). `context` NO_REPLY marks a commit notice: a follower that accepts it without
        new entries sends no ack (the leader learns nothing from one)."""
        pr = self.prs[to]
        if pr.is_paused():
            return False
        try:
            prev_term = self.log.term(pr.next - 1)
            ents = self.log.entries_from(pr.next, self.cfg.max_append_bytes)
        except LogCompactedError:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        self._send(Message(MsgType.APP, to=to, frm=self.id, term=self.term,
                           index=pr.next - 1, log_term=prev_term,
                           entries=tuple(ents), commit=self.log.committed,
                           context=context if not ents and pr.state == ProgressState.REPLICATE
                           else b""))
        pr.sent_entries(ents[-1].index if ents else None, sum(e.size() for e in ents))
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        snap = self.log.unstable.snapshot or self.log.storage.snapshot()
        assert snap.index > 0, "log compacted but no snapshot to send"
        pr.become_snapshot(snap)
        self._send_snap_chunk(to, pr)
        return True

    def _send_snap_chunk(self, to: NodeId, pr: Progress) -> None:
        assert pr.snapshot is not None
        self._send(snapshots.chunk_message(pr.snapshot, to, pr.snap_acked,
                                           self.cfg.snapshot_chunk_bytes))

    def _bcast_append(self) -> None:
        for i in sorted(self.prs):
            if i != self.id:
                self._send_append(i)

    def _bcast_commit(self) -> None:
        """The commit index advanced: send each follower what it needs now, not an empty
        append each (that is two messages and an ack per follower per commit; at one
        client, half of all traffic). A follower gets entries it has not been sent (they
        carry the commit index), or an empty append when it waits for the commit of an
        entry it forwarded (its client waits for the apply). Any other follower learns the
        commit from the next append or heartbeat: its apply lags by at most one heartbeat
        interval, and a read it serves asks the leader first (the ReadIndex round sends a
        heartbeat carrying the commit)."""
        committed = self.log.committed
        last = self.log.last_index()
        for i in sorted(self.prs):
            if i == self.id:
                continue
            pr = self.prs[i]
            if pr.forwarded_first and pr.forwarded_first <= committed:
                if self._send_append(i, context=NO_REPLY):
                    pr.forwarded_first = committed + 1 if pr.forwarded_last > committed else 0
            elif pr.next <= last:
                self._send_append(i, send_if_empty=False)

    def _bcast_heartbeat(self, context: bytes = b"", beat: bool = False) -> None:
        """Heartbeats to every follower. On the periodic `beat`, a follower that streams
        is skipped: it acknowledged an append since the last beat, so it is alive, its
        election timer was reset, and the next append (or the next beat, once appends stop)
        carries the commit index: its apply lags by at most two beats. Not with lease reads
        (the lease is dated by heartbeat answers) or a read waiting for its round, and never
        for half an election timeout in a row (a bound that needs no other argument)."""
        skip_streaming = beat and not context and not self.cfg.lease_reads
        skip_ticks = max(1, self.cfg.election_ticks // 2)
        for i in sorted(self.prs):
            if i == self.id:
                continue
            pr = self.prs[i]
            if beat:
                acked, pr.acked_since_beat = pr.acked_since_beat, False
                if (skip_streaming and acked and pr.state == ProgressState.REPLICATE
                        and self.ticks - pr.beat_tick < skip_ticks):
                    continue
                pr.beat_tick = self.ticks
            # index: our tick when sent; echoed back, it dates the follower's promise not
            # to vote for anyone else for an election timeout (the lease).
            self._send(Message(MsgType.HEARTBEAT, to=i, frm=self.id, term=self.term,
                               context=context, index=self.ticks,
                               commit=min(pr.match, self.log.committed)))
            if pr.state == ProgressState.SNAPSHOT:
                self._send_snap_chunk(i, pr)  # retransmit the chunk a lost message carried

    # --- roles ----------------------------------------------------------------------------

    def promotable(self) -> bool:
        return self.id in self.conf.voters and not self.refuse_votes

    def _reset(self, term: int) -> None:
        assert term >= self.term, f"term must never decrease: {self.term} -> {term}"
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.cfg.election_ticks + self.rng.randrange(
            self.cfg.election_ticks)
        self.lead_transferee = NONE
        self.votes = {}
        self.readonly.reset()
        self.pending_reads = []
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self._sync_progress(reset=True)

    def _sync_progress(self, reset: bool = False) -> None:
        members = set(self.conf.voters) | set(self.conf.learners)
        if reset:
            self.prs = {}
        for i in list(self.prs):
            if i not in members:
                del self.prs[i]
        for i in sorted(members):
            learner = i in self.conf.learners
            if i not in self.prs:
                pr = Progress(self.log.last_index() + 1, self.cfg.max_inflight_msgs,
                              self.cfg.max_inflight_bytes, learner)
                if i == self.id:
                    pr.match = min(self.log.unstable.offset - 1, self.log.last_index())
                self.prs[i] = pr
            self.prs[i].is_learner = learner

    def _become_follower(self, term: int, lead: NodeId) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        assert self.role != Role.LEADER, "leader cannot become pre-candidate"
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        assert self.role != Role.LEADER, "leader cannot become candidate"
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        assert self.role == Role.CANDIDATE, f"{self.role} cannot become leader"
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self.prs[self.id].become_replicate()
        # No conf change before this leader applied an entry of its own term (etcd's rule).
        self.pending_conf_index = self.log.last_index() + 1
        self._append([Entry(0, 0)])  # commits everything before it once replicated

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self.step(Message(MsgType.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self.step(Message(MsgType.CHECK_QUORUM, frm=self.id))
            if self.role == Role.LEADER and self.lead_transferee:
                self.lead_transferee = NONE  # the transfer did not finish in time: abort
        if self.role != Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self.step(Message(MsgType.BEAT, frm=self.id))

    # --- elections ------------------------------------------------------------------------

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self.promotable():
            return
        if not transfer and self._unapplied_conf_change():
            return  # the membership we would campaign under is about to change
        # (A transfer may go ahead: with one change at a time the old and new majorities
        # overlap, and a leader removing itself hands over right after the change commits.)
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _unapplied_conf_change(self) -> bool:
        lo = max(self.log.applied + 1, self.log.first_index())
        hi = self.log.committed + 1
        while lo < hi:
            ents = self.log.slice(lo, hi, limits.raft_committed_bytes_per_ready_max)
            if any(e.type == EntryType.CONF_CHANGE for e in ents):
                return True
            lo = ents[-1].index + 1
        return False

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            vote_type, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MsgType.VOTE, self.term
        if self._poll(self.id, True) == VoteResult.WON:
            self._won()  # a single-voter cluster
            return
        for v in self.conf.voters:
            if v != self.id:
                self._send(Message(vote_type, to=v, term=term, index=self.log.last_index(),
                                   log_term=self.log.last_term(),
                                   context=CAMPAIGN_TRANSFER if transfer else b""))

    def _poll(self, frm: NodeId, granted: bool) -> VoteResult:
        self.votes.setdefault(frm, granted)
        return vote_result(self.conf.voters, self.votes)

    def _won(self) -> None:
        if self.role == Role.PRE_CANDIDATE:
            self._campaign(pre=False, transfer=False)
        else:
            self._become_leader()
            self._bcast_append()

    # --- step -----------------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Feed one message (from a peer, or a local request built by the helpers above)."""
        if m.type in LOCAL_TYPES or m.term == 0:
            pass
        elif m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                forced = m.context == CAMPAIGN_TRANSFER
                in_lease = (self.cfg.check_quorum and self.lead != NONE
                            and self.election_elapsed < self.cfg.election_ticks)
                if in_lease and not forced:
                    return  # we heard from a live leader recently: do not help depose it
            if m.type == MsgType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # a grant carries the term we will campaign at, not a newer leader's
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (
                    MsgType.HEARTBEAT, MsgType.APP):
                # A stale leader: tell it our term so it steps down (it may be partitioned
                # away and never see a vote request because of pre-vote).
                self._send(Message(MsgType.APP_RESP, to=m.frm))
            elif m.type == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        if m.type == MsgType.HUP:
            self._hup(transfer=False)
        elif m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote(self, m: Message) -> None:
        if self.refuse_votes:
            # A wiped member: voting could elect a leader that lacks entries it had
            # acknowledged before the wipe, or vote twice in one term.
            self.votes_refused += 1
            self.refused_for_index = max(self.refused_for_index, m.index)
            self._send(Message(_VOTE_RESP[m.type], to=m.frm, term=self.term, reject=True))
            return
        can_vote = (self.vote == m.frm
                    or (self.vote == NONE and self.lead == NONE)
                    or (m.type == MsgType.PRE_VOTE and m.term > self.term))
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(_VOTE_RESP[m.type], to=m.frm, term=m.term))
            if m.type == MsgType.VOTE:
                assert self.vote in (NONE, m.frm), f"second vote in term {self.term}"
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(_VOTE_RESP[m.type], to=m.frm, term=self.term, reject=True))

    def _drop(self, m: Message, why: str) -> None:
        """Refuse a request: raise for a local caller, ignore a forwarded one."""
        if m.frm == self.id:
            raise ProposalDroppedError(f"{m.type.value} dropped on {self.id}: {why}")

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (MsgType.PROP, MsgType.READ_INDEX, MsgType.TRANSFER_LEADER):
            if self.lead == NONE:
                self._drop(m, f"no leader known in term {self.term}; retry after an election")
            else:
                self._send(replace(m, to=self.lead))
        elif t in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_from_leader(m)
        elif t == MsgType.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t == MsgType.READ_INDEX_RESP:
            self._push_read_state(ReadState(m.index, m.context))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        mine = MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if t in (MsgType.PROP, MsgType.READ_INDEX, MsgType.TRANSFER_LEADER):
            self._drop(m, f"election in progress in term {self.term}; retry shortly")
        elif t in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            self._become_follower(m.term, m.frm)  # a leader of our term exists
            self._handle_from_leader(m)
        elif t == mine:
            res = self._poll(m.frm, not m.reject)
            if res == VoteResult.WON:
                self._won()
            elif res == VoteResult.LOST:
                self._become_follower(self.term, NONE)

    def _handle_from_leader(self, m: Message) -> None:
        if m.type == MsgType.APP:
            self._handle_append(m)
        elif m.type == MsgType.HEARTBEAT:
            # Clamped: a follower that lost its disk holds less than the leader thinks.
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._send(Message(MsgType.HEARTBEAT_RESP, to=m.frm, frm=self.id, term=self.term,
                               context=m.context, index=m.index))
            if m.commit > self.log.last_index() and not self._app_since_heartbeat:
                # The leader believes we acknowledged entries we do not hold (a wiped disk)
                # and may send nothing but heartbeats (an idle cluster): ask it to probe us.
                # (Not when an append came since the last heartbeat: we answered that.)
                self._send(Message(MsgType.APP_RESP, to=m.frm, index=m.commit, reject=True,
                                   reject_hint=self.log.last_index(),
                                   log_term=self.log.last_term(), context=LOST_ENTRIES))
            self._app_since_heartbeat = False
        else:
            for resp in snapshots.receive_chunk(self, m):
                self._send(resp)

    def _handle_append(self, m: Message) -> None:
        self._app_since_heartbeat = True
        if m.index < self.log.committed:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            if not (m.context == NO_REPLY and not m.entries):
                self._send(Message(MsgType.APP_RESP, to=m.frm, frm=self.id, term=self.term,
                                   index=last))
            return
        hint, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term)
        self._send(Message(MsgType.APP_RESP, to=m.frm, index=m.index, reject=True,
                           reject_hint=hint, log_term=hint_term))

    # --- leader ---------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MsgType.BEAT:
            self._bcast_heartbeat(self.readonly.last_pending_context() or b"", beat=True)
        elif t == MsgType.CHECK_QUORUM:
            active = [i for i, p in self.prs.items() if i == self.id or p.recent_active]
            if not has_quorum(self.conf.voters, active):
                self._become_follower(self.term, NONE)
                return
            for i, p in self.prs.items():
                if i != self.id:
                    p.recent_active = False
        elif t == MsgType.PROP:
            self._leader_propose(m)
        elif t == MsgType.READ_INDEX:
            self._leader_read_index(m)
        elif t == MsgType.TRANSFER_LEADER:
            self._leader_transfer(m)
        elif t == MsgType.UNREACHABLE:
            pr_u = self.prs.get(m.frm)
            if pr_u is not None and pr_u.state == ProgressState.REPLICATE:
                pr_u.become_probe()
        elif m.frm in self.prs and m.frm != self.id:
            pr = self.prs[m.frm]
            pr.recent_active = True
            if t == MsgType.APP_RESP:
                self._handle_append_resp(m, pr)
            elif t == MsgType.HEARTBEAT_RESP:
                self._handle_heartbeat_resp(m, pr)
            elif t == MsgType.SNAP_RESP:
                self._handle_snap_resp(m, pr)

    def _leader_propose(self, m: Message) -> None:
        if self.id not in self.prs:
            return self._drop(m, "this node was removed from the cluster")
        if self.lead_transferee:
            return self._drop(m, f"leadership is moving to {self.lead_transferee}; retry there")
        too_big = ""
        if len(m.entries) > limits.raft_proposal_entries_max:
            too_big = (f"{len(m.entries)} entries in one proposal, limit "
                       f"raft_proposal_entries_max={limits.raft_proposal_entries_max}; split it")
        size = sum(len(e.data) for e in m.entries)
        for e in m.entries:
            if len(e.data) > limits.raft_entry_bytes_max:
                too_big = (f"entry of {len(e.data)} bytes, limit raft_entry_bytes_max="
                           f"{limits.raft_entry_bytes_max}; store large values outside the log")
        if too_big:
            if m.frm == self.id:
                raise LimitExceededError(too_big)
            # A peer's forwarded proposal must never crash the leader: drop it.
            return self._drop(m, too_big)
        if self.uncommitted_bytes and self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes:
            return self._drop(m, f"{self.uncommitted_bytes} uncommitted bytes, limit "
                                 f"max_uncommitted_bytes={self.cfg.max_uncommitted_bytes}")
        for e in m.entries:
            if e.type == EntryType.CONF_CHANGE:
                why = conf_change_refusal(self, ConfChange.decode(e.data))
                if why:
                    if m.frm == self.id:
                        raise ConfChangeRefusedError(f"conf change refused on {self.id}: {why}")
                    return None
                self.pending_conf_index = self.log.last_index() + 1
        self.uncommitted_bytes += size
        first = self.log.last_index() + 1
        self._append(list(m.entries))
        fwd = self.prs.get(m.frm) if m.frm != self.id else None
        if fwd is not None:
            fwd.forwarded_first = fwd.forwarded_first or first
            fwd.forwarded_last = self.log.last_index()
        self._bcast_append()
        return None

    def _append(self, ents: list[Entry]) -> None:
        last = self.log.last_index()
        ents = [Entry(last + 1 + i, self.term, e.data, e.type) for i, e in enumerate(ents)]
        self.log.append(ents)

    def _maybe_commit(self) -> bool:
        """Advance commit to what a quorum of voters holds, but only through an entry of this
        term (§5.4.2: counting replicas of an older term's entry is not enough)."""
        before = self.log.committed
        idx = committed_index(self.conf.voters, {i: p.match for i, p in self.prs.items()})
        if not self.log.maybe_commit(idx, self.term):
            return False
        assert self.log.committed > before, "commit index regressed"
        if self.pending_reads and self._committed_in_term():
            waiting, self.pending_reads = self.pending_reads, []
            for m in waiting:
                self._leader_read_index(m)
        return True

    def _committed_in_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject and m.context == LOST_ENTRIES:
            if pr.state == ProgressState.REPLICATE and m.reject_hint < pr.match:
                pr.become_probe()  # probe at match: the answer lowers match (maybe_decr_to)
                self._send_append(m.frm)
            return
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        pr.acked_since_beat = True
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_commit()
        elif was_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass  # pipelining: fill the in-flight window
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to=m.frm))

    def _handle_heartbeat_resp(self, m: Message, pr: Progress) -> None:
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first()  # a MsgApp may be lost: let one more go out to find out
        if pr.match < self.log.last_index():
            self._send_append(m.frm)
        pr.lease_tick = max(pr.lease_tick, m.index)
        if not m.context:
            return
        acks = self.readonly.recv_ack(m.frm, m.context) | {self.id}
        if has_quorum(self.conf.voters, acks):
            for req in self.readonly.advance(m.context):
                self._answer_read(req)

    def _handle_snap_resp(self, m: Message, pr: Progress) -> None:
        if pr.state != ProgressState.SNAPSHOT or m.reject_hint != pr.pending_snapshot:
            return  # about an older snapshot
        assert pr.snapshot is not None
        if m.reject:
            pr.snap_acked = m.index  # the follower holds this much: resend from there
            self._send_snap_chunk(m.frm, pr)
        elif m.index > pr.snap_acked:
            pr.snap_acked = m.index
            if pr.snap_acked < len(pr.snapshot.data):
                self._send_snap_chunk(m.frm, pr)

    def _leader_read_index(self, m: Message) -> None:
        if self.conf.voters == (self.id,):
            self._answer_read(ReadRequest(self.log.committed, m.frm, m.context))
        elif not self._committed_in_term():
            # Our commit index may lag the true one until an entry of this term commits.
            if len(self.pending_reads) >= limits.raft_read_index_pending_max:
                return self._drop(m, "too many reads waiting for the leader's first commit")
            self.pending_reads.append(m)
        elif self.cfg.lease_reads and lease_valid(self):
            self._answer_read(ReadRequest(self.log.committed, m.frm, m.context))
        elif self.readonly.add_request(self.log.committed, m.frm, m.context):
            self._bcast_heartbeat(m.context)
        return None

    def _push_read_state(self, rs: ReadState) -> None:
        # Bounded like the request queue; a dropped answer makes its client time out and retry.
        if len(self.read_states) < limits.raft_read_index_pending_max:
            self.read_states.append(rs)

    def _answer_read(self, req: ReadRequest) -> None:
        if req.frm in (self.id, NONE):
            self._push_read_state(ReadState(req.index, req.context))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, to=req.frm, index=req.index,
                               context=req.context))

    def _leader_transfer(self, m: Message) -> None:
        target = m.target
        pr = self.prs.get(target)
        if pr is None or pr.is_learner or target == self.id or target == self.lead_transferee:
            return
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        self.lead_transferee = target
        if pr.match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to=target))
        else:
            self._send_append(target)

    # --- membership -----------------------------------------------------------------------

    def _replay_conf_changes(self, lo: int, hi: int) -> None:
        while lo <= hi:
            ents = self.log.slice(lo, hi + 1, limits.raft_committed_bytes_per_ready_max)
            for e in ents:
                if e.type == EntryType.CONF_CHANGE:
                    self.conf = apply_conf_change(self.conf, ConfChange.decode(e.data))
            lo = ents[-1].index + 1

    def _apply_conf_change(self, cc: ConfChange) -> None:
        self.conf = apply_conf_change(self.conf, cc)
        self._sync_progress()
        if self.role != Role.LEADER:
            return
        if self.id not in self.conf.voters:
            self._step_down_removed()
            return
        if self.lead_transferee and self.lead_transferee not in self.conf.voters:
            self.lead_transferee = NONE
        self._maybe_commit()  # the quorum may have shrunk
        self._bcast_append()

    def _step_down_removed(self) -> None:
        """This leader applied its own removal: tell followers the commit index, hand
        leadership to the most caught-up voter, and step down."""
        self._bcast_append()
        best = max(self.conf.voters, key=lambda i: (self.prs[i].match, i), default=None)
        if best is not None and self.prs[best].match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to=best))
        self._become_follower(self.term, NONE)

    def restore_conf(self, cs: ConfState) -> None:
        """Install the membership of a snapshot (called when one is restored)."""
        self.conf = cs
        self._sync_progress()

"""An in-memory network of Raft cores for tests, with Raft's safety properties checked live.

Each node owns a `MemoryStorage` (its durable disk) and a toy state machine (the list of
applied entries). `Network.process(id)` handles one `Ready` exactly as the contract says;
`crash(id)` rebuilds the core from storage (so anything not persisted is lost), optionally
between sending the early messages and persisting. Every delivery, persist and apply runs the
checks: election safety, log matching, leader completeness, state machine safety.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable

import msgpack

from keeldb.consensus.confchange import ConfChange
from keeldb.consensus.messages import (
    Entry,
    EntryType,
    Message,
    MsgType,
    ReadState,
    Role,
    Snapshot,
)
from keeldb.consensus.raft import Config, Raft
from keeldb.consensus.storage import MemoryStorage
from keeldb.types import NodeId


class SafetyViolation(AssertionError):
    pass


def nid(x: str | int) -> NodeId:
    return NodeId(str(x))


class Node:
    def __init__(self, id: NodeId, storage: MemoryStorage, cfg: dict[str, object],
                 seed: int) -> None:
        self.id = id
        self.storage = storage
        self.cfg = cfg
        self.incarnation = 0
        self.seed = seed
        self.sm: dict[int, tuple[int, bytes]] = {}  # applied index -> (term, data)
        self.read_states: list[ReadState] = []
        self.applied = storage.snapshot().index
        self.raft = self._build()

    def _build(self) -> Raft:
        rng = random.Random(f"{self.seed}:{self.id}:{self.incarnation}")
        cfg = dict(self.cfg, applied=self.storage.snapshot().index)  # the state machine's
        return Raft(Config(id=self.id, **cfg), self.storage, rng)  # type: ignore[arg-type]

    def restart(self) -> None:
        """Lose memory: the core and state machine come back from the durable storage."""
        self.incarnation += 1
        snap = self.storage.snapshot()
        self.sm = decode_sm(snap.data) if snap.data else {}
        self.applied = snap.index
        self.read_states = []
        self.raft = self._build()

    def snapshot_data(self) -> bytes:
        return msgpack.packb([[i, t, d] for i, (t, d) in sorted(self.sm.items())])


def decode_sm(data: bytes) -> dict[int, tuple[int, bytes]]:
    return {i: (t, d) for i, t, d in msgpack.unpackb(data)}


class Network:
    def __init__(self, ids: Iterable[str | int], *, seed: int = 0, **cfg: object) -> None:
        self.seed = seed
        self.rng = random.Random(f"{seed}:network")
        self.cfg = cfg
        self.voters = tuple(sorted(nid(i) for i in ids))
        self.nodes: dict[NodeId, Node] = {}
        for i in self.voters:
            self.nodes[i] = Node(i, MemoryStorage.bootstrap(self.voters), cfg, seed)
        self.queue: deque[Message] = deque()
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self.down: set[NodeId] = set()
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.delivered: list[Message] = []
        # safety bookkeeping
        self.leaders: dict[int, NodeId] = {}
        self.seen_leaders: set[tuple[int, NodeId]] = set()
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.entries_seen: dict[tuple[int, int], tuple[bytes, EntryType, int]] = {}

    # --- topology -------------------------------------------------------------------------

    def add_node(self, id: str | int) -> Node:
        """A new, empty node (joins as a learner through a conf change)."""
        n = Node(nid(id), MemoryStorage(), self.cfg, self.seed)
        self.nodes[n.id] = n
        return n

    def partition(self, *groups: Iterable[str | int]) -> None:
        sets = [{nid(i) for i in g} for g in groups]
        self.cut = set()
        for a in self.nodes:
            for b in self.nodes:
                ga = next((k for k, s in enumerate(sets) if a in s), -1)
                gb = next((k for k, s in enumerate(sets) if b in s), -1)
                if a != b and ga != gb:
                    self.cut.add((a, b))

    def isolate(self, id: str | int) -> None:
        x = nid(id)
        self.partition([x], [i for i in self.nodes if i != x])

    def heal(self) -> None:
        self.cut = set()

    def crash(self, id: str | int) -> None:
        self.nodes[nid(id)].restart()
        self.check()

    def wipe(self, id: str | int) -> None:
        """The node loses its whole disk and comes back empty (a replaced machine)."""
        n = self.nodes[nid(id)]
        n.storage = MemoryStorage()
        n.restart()

    # --- driving --------------------------------------------------------------------------

    def raft(self, id: str | int) -> Raft:
        return self.nodes[nid(id)].raft

    def process(self, id: NodeId, crash_before_persist: bool = False) -> bool:
        """Handle one Ready of node `id` per the contract. Returns False if none was ready."""
        n = self.nodes[id]
        r = n.raft
        if not r.has_ready():
            return False
        rd = r.ready()
        self.queue.extend(rd.messages)
        if crash_before_persist:
            n.restart()
            self.check()
            return True
        if rd.snapshot is not None:
            n.storage.apply_snapshot(rd.snapshot)
            n.sm = decode_sm(rd.snapshot.data) if rd.snapshot.data else {}
            n.applied = rd.snapshot.index
        if rd.entries:
            n.storage.append(rd.entries)
            self._check_log_matching(n, rd.entries)
        if rd.hard_state is not None:
            n.storage.set_hard_state(rd.hard_state)
        self.queue.extend(rd.messages_after_persist)
        for e in rd.committed_entries:
            self._apply(n, e)
        n.read_states.extend(rd.read_states)
        r.advance(rd)
        self.check()
        return True

    def process_all(self) -> bool:
        any_ready = False
        for i in sorted(self.nodes):
            while self.process(i):
                any_ready = True
        return any_ready

    def _blocked(self, m: Message) -> bool:
        return (m.frm, m.to) in self.cut or m.to in self.down or m.frm in self.down

    def deliver_one(self, m: Message) -> None:
        if m.to not in self.nodes or self._blocked(m):
            return
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return
        self.delivered.append(m)
        self.nodes[m.to].raft.step(m)
        self.check()

    def deliver_round(self) -> list[Message]:
        """Deliver every queued message once (what they cause is queued for the next round)."""
        self.delivered = []
        batch, self.queue = list(self.queue), deque()
        for m in batch:
            self.deliver_one(m)
        self.process_all()
        return self.delivered

    def stabilize(self, max_rounds: int = 1000) -> list[Message]:
        """Process and deliver until nothing moves. Returns every message delivered."""
        out: list[Message] = []
        self.process_all()
        for _ in range(max_rounds):
            if not self.queue:
                return out
            out += self.deliver_round()
        raise AssertionError(f"network did not stabilize in {max_rounds} rounds")

    def tick(self, id: str | int, times: int = 1) -> None:
        for _ in range(times):
            self.raft(id).tick()
            self.check()
            self.process(nid(id))

    def tick_all(self, times: int = 1) -> None:
        for _ in range(times):
            for i in sorted(self.nodes):
                if i not in self.down:
                    self.tick(i)

    def elect(self, id: str | int) -> None:
        """Make `id` the leader and let everything settle."""
        self.raft(id).campaign()
        self.stabilize()
        assert self.raft(id).role == Role.LEADER, f"{id} not elected: {self.raft(id).status()}"

    def propose(self, id: str | int, data: bytes) -> None:
        self.raft(id).propose(data)
        self.process(nid(id))

    def propose_conf(self, id: str | int, cc: ConfChange) -> None:
        self.raft(id).propose_conf_change(cc)
        self.process(nid(id))

    def compact(self, id: str | int, keep: int = 0) -> int:
        """Snapshot node `id` at its applied index and drop the log up to applied-keep."""
        n = self.nodes[nid(id)]
        applied = n.raft.log.applied
        if applied <= n.storage.snapshot().index:
            return n.storage.snapshot().index
        n.storage.create_snapshot(applied, n.raft.conf, n.snapshot_data())
        n.storage.compact(max(applied - keep, n.storage.first_index() - 1))
        return applied

    def heartbeat(self) -> list[Message]:
        """One heartbeat round of the leader, settled: followers learn its commit index
        (a commit alone sends nothing to a caught-up follower, see Raft._bcast_commit)."""
        lead = self.leader()
        assert lead is not None, "no leader to send heartbeats"
        self.tick(lead)
        return self.stabilize()

    def leader(self) -> NodeId | None:
        best: tuple[int, NodeId] | None = None
        for i, n in self.nodes.items():
            if n.raft.role == Role.LEADER and (best is None or n.raft.term > best[0]):
                best = (n.raft.term, i)
        return best[1] if best else None

    # --- safety ---------------------------------------------------------------------------

    def _apply(self, n: Node, e: Entry) -> None:
        assert e.index == n.applied + 1, f"{n.id} applies {e.index} after {n.applied}"
        n.applied = e.index
        n.sm[e.index] = (e.term, e.data)
        prev = self.committed.get(e.index)
        if prev is not None and prev != (e.term, e.data):
            raise SafetyViolation(f"state machine safety: {n.id} applied {e.index}="
                                  f"{(e.term, e.data)} but another node applied {prev}")
        if prev is None:
            self.committed[e.index] = (e.term, e.data)

    def _check_log_matching(self, n: Node, ents: tuple[Entry, ...]) -> None:
        for e in ents:
            if e.index < n.storage.first_index():
                continue
            key = (e.index, e.term)
            val = (e.data, e.type, n.storage.term(e.index - 1))
            old = self.entries_seen.setdefault(key, val)
            if old != val:
                raise SafetyViolation(f"log matching: {n.id} holds {key} as {val}, "
                                      f"another node as {old}")

    def check(self) -> None:
        for i, n in self.nodes.items():
            r = n.raft
            if r.role != Role.LEADER:
                continue
            other = self.leaders.setdefault(r.term, i)
            if other != i:
                raise SafetyViolation(f"election safety: {other} and {i} lead term {r.term}")
            if (r.term, i) not in self.seen_leaders:
                self.seen_leaders.add((r.term, i))
                for idx, (t, _d) in self.committed.items():
                    if idx < r.log.first_index():
                        continue
                    if r.log.term_or_zero(idx) != t:
                        raise SafetyViolation(
                            f"leader completeness: leader {i} of term {r.term} lacks committed "
                            f"entry {idx} (term {t}); has term {r.log.term_or_zero(idx)}")


def fmt_msg(m: Message) -> str:
    s = f"{m.frm}->{m.to} {m.type.value} t{m.term}"
    t = m.type
    if t in (MsgType.VOTE, MsgType.PRE_VOTE):
        s += f" last={m.index}/{m.log_term}"
    elif t == MsgType.APP:
        ents = " ".join(f"{e.index}/{e.term}" + (f":{e.data.decode(errors='replace')}"
                                                  if e.data else "") for e in m.entries)
        s += f" prev={m.index}/{m.log_term} commit={m.commit}" + (f" [{ents}]" if ents else "")
    elif t == MsgType.APP_RESP:
        s += f" index={m.index}"
        if m.reject:
            s += f" reject hint={m.reject_hint}/{m.log_term}"
    elif t == MsgType.SNAP:
        assert m.snapshot_meta is not None
        s += (f" snap={m.snapshot_meta.index}/{m.snapshot_meta.term} "
              f"bytes[{m.snap_offset}:{m.snap_offset + len(m.snap_data)}]/{m.snap_total}")
    elif t == MsgType.SNAP_RESP:
        s += f" snap={m.reject_hint} held={m.index}" + (" reject" if m.reject else "")
    elif t in (MsgType.HEARTBEAT, MsgType.HEARTBEAT_RESP):
        s += f" commit={m.commit}" if t == MsgType.HEARTBEAT else ""
    elif t == MsgType.READ_INDEX_RESP:
        s += f" index={m.index}"
    if t in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP):
        s += " reject" if m.reject else " granted"
    if m.context:
        s += f" ctx={m.context.decode(errors='replace')}"
    return s


def fmt_status(r: Raft) -> str:
    st = r.status()
    lead = st.lead or "-"
    return (f"{st.id}: {st.role.value} term={st.term} lead={lead} commit={st.commit} "
            f"applied={st.applied} last={st.last_index} first={st.first_index} "
            f"voters={','.join(st.conf.voters)}"
            + (f" learners={','.join(st.conf.learners)}" if st.conf.learners else ""))


def snapshot_of(n: Node) -> Snapshot:
    return n.storage.snapshot()

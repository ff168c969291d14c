"""The Raft core's vocabulary: entries, hard state, snapshots, messages and `Ready`.

Everything here is a small immutable dataclass of plain values (ints, strings, bytes,
tuples), so a node can encode it with msgpack without knowing the core, and the simulator can
pass the objects as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from keeldb.types import NodeId

NONE = NodeId("")
"""No node: no leader known, no vote cast."""


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryType(StrEnum):
    NORMAL = "normal"
    CONF_CHANGE = "conf-change"  # data is an encoded ConfChange (see confchange.py)


class MsgType(StrEnum):
    """Message kinds. HUP, BEAT and CHECK_QUORUM are local: they never cross the network."""

    HUP = "hup"  # local: start an election
    BEAT = "beat"  # local: leader sends heartbeats
    CHECK_QUORUM = "check-quorum"  # local: leader checks it heard from a quorum
    PROP = "prop"  # a proposal (forwarded from a follower to the leader)
    APP = "app"  # AppendEntries
    APP_RESP = "app-resp"
    VOTE = "vote"
    VOTE_RESP = "vote-resp"
    PRE_VOTE = "pre-vote"
    PRE_VOTE_RESP = "pre-vote-resp"
    SNAP = "snap"  # one chunk of an InstallSnapshot
    SNAP_RESP = "snap-resp"  # acknowledges the chunk bytes received so far
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat-resp"
    TRANSFER_LEADER = "transfer-leader"
    TIMEOUT_NOW = "timeout-now"  # leadership transfer: campaign now, skipping pre-vote
    READ_INDEX = "read-index"
    READ_INDEX_RESP = "read-index-resp"
    UNREACHABLE = "unreachable"  # local: the transport could not reach `frm`


LOCAL_TYPES = frozenset({MsgType.HUP, MsgType.BEAT, MsgType.CHECK_QUORUM, MsgType.UNREACHABLE})

CAMPAIGN_TRANSFER = b"transfer"
"""Context of a VOTE sent because of a leadership transfer: it overrides the leader lease."""


# Per-request value types (Entry, HardState, Message, Ready) are treated as immutable but
# not `frozen`: a frozen dataclass's __init__ sets each field through object.__setattr__,
# 5-7x slower (a 16-field Message: ~5 us vs ~0.8 us), and several are built per request on
# every node. They stay hashable and compare by value (`unsafe_hash`); nothing mutates them
# (tests/unit/consensus/test_messages_values.py checks that a step leaves its input as it was).


@dataclass(slots=True, unsafe_hash=True)  # a value: see above
class Entry:
    """One log entry. `data` is opaque bytes: the state machine decides what it means
    (client id + sequence number for exactly-once, a command, ...). An empty NORMAL entry is
    what a new leader appends to commit an entry of its own term."""

    index: int
    term: int
    data: bytes = b""
    type: EntryType = EntryType.NORMAL

    def size(self) -> int:
        """Bytes counted against batching limits (data plus a fixed overhead)."""
        return len(self.data) + 16


@dataclass(slots=True, unsafe_hash=True)  # a value: see above
class HardState:
    """What must be durable before the node answers a vote or acknowledges an append."""

    term: int = 0
    vote: NodeId = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership: voters vote and count for commit; learners only replicate."""

    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()

    def __post_init__(self) -> None:
        assert not set(self.voters) & set(self.learners), f"voter and learner: {self}"
        assert list(self.voters) == sorted(self.voters), f"voters not sorted: {self.voters}"
        assert list(self.learners) == sorted(self.learners), f"learners not sorted: {self}"


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine image at `meta.index`; `data` is opaque to the core."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    @property
    def index(self) -> int:
        return self.meta.index

    @property
    def term(self) -> int:
        return self.meta.term


@dataclass(slots=True, unsafe_hash=True)  # a value: see above
class Message:
    """One Raft message. Fields not used by a type keep their defaults.

    - APP: `index`/`log_term` name the entry before `entries`; `commit` the leader's commit.
    - APP_RESP: `index` is the last index now matching (or the rejected `index`), and on a
      reject `reject_hint`/`log_term` name where the follower's log may match (fast backtrack).
    - VOTE/PRE_VOTE: `index`/`log_term` describe the candidate's last entry.
    - SNAP: `snapshot_meta`, `snap_offset` into the data, `snap_data` (one bounded chunk),
      `snap_total` bytes in all; SNAP_RESP: `index` = bytes the follower holds, `reject` if
      it wants the leader to restart at that offset.
    - HEARTBEAT(_RESP), READ_INDEX(_RESP): `context` carries the read request id.
    """

    type: MsgType
    to: NodeId = NONE
    frm: NodeId = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot_meta: SnapshotMeta | None = None
    snap_offset: int = 0
    snap_data: bytes = b""
    snap_total: int = 0
    target: NodeId = NONE  # TRANSFER_LEADER: the node to hand leadership to


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read request `context` may be served once `applied >= index`."""

    index: int
    context: bytes


@dataclass(slots=True, unsafe_hash=True)  # a value: see above
class Ready:
    """One batch of work for the node, handled in this order (the ordering contract):

    1. send `messages` (allowed before persisting: they depend on nothing in this batch);
    2. persist `snapshot` (if any), then `entries` (appending, truncating a conflicting
       suffix), then `hard_state` (if any), and fsync them;
    3. only then send `messages_after_persist` (vote grants and append acknowledgements
       promise that the state above is durable);
    4. apply `committed_entries` to the state machine, in index order; serve `read_states`
       once the applied index reaches their index;
    5. call `advance(ready)`.
    """

    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    messages_after_persist: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    lead: NodeId = NONE
    role: Role = Role.FOLLOWER

    @property
    def must_sync(self) -> bool:
        """True when something in this batch must reach the disk before step 3."""
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None

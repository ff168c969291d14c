"""The node contract: what a node hears (events), what it asks for (effects), and `Node`.

A node is a sans-IO state machine: `Node.step(event) -> list[Effect]`. It never touches a
disk, a socket or a clock; `keeldb.runtime.driver.Driver` executes its effects in both worlds
(the simulator and the real asyncio runtime) with one set of ordering rules.

Lifecycle. A world builds a fresh node object (the factory takes no arguments) and the driver
gives it `Start` first, carrying the node's id, its peers, its local clock and the contents of
every file on its disk (empty on first boot; what survived on a restart). A crash simply drops
the object: memory is lost, the disk keeps what the world's crash semantics keep.

Ordering contract (the etcd `Ready` rule). Within one batch the driver executes effects in the
phase order disk (persist and sync, in the node's order) -> send -> apply -> reply -> timers ->
halt, keeping the node's order inside a phase. Disk operations of one node run one at a time, in submission order. `Send`,
`Apply` and `Reply` may name `after=op`: they are held until disk operation `op` has completed
successfully, and dropped (never executed) if it fails or the node crashes first. So "send only
after this write is durable" is `Persist(op=7, ...), Sync(op=8, ...), Send(..., after=8)`.

`Capture(op, job)` is not a disk op: the world runs `job` in a background lane (another
thread, or later in the simulator), never in order with the node's disk ops, and answers with
`CaptureDone(op, ...)`; a crash drops it.

Messages are plain data (None, bool, int, float, str, bytes, list, tuple, dict with str keys):
the real world encodes them with msgpack (tuples come back as lists, so accept both), the
simulator passes the objects as they are (so never mutate a message after sending it).

Events and effects are slotted dataclasses, deliberately not frozen (a frozen one's __init__
costs ~1 us, and a node makes ~10 per request): once handed over, nobody mutates one; the
node never changes an effect it returned, the driver never changes an event it delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from keeldb.types import NodeId

Message = Any
"""A message between nodes: plain msgpack-able data (see the module docstring)."""

ReplyType = Literal["ok", "fail", "info"]
REPLY_TYPES: tuple[str, ...] = ("ok", "fail", "info")


# --- events: inputs of Node.step -------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Start:
    """The first event of every incarnation.

    `files` maps each file name on the node's disk to its bytes as read at start (a flipped
    bit or a torn tail is possible in the simulator: check your checksums). `restart` is
    False on the first boot of a node with an empty disk.
    """

    node: NodeId
    peers: tuple[NodeId, ...]
    now_ns: int
    files: Mapping[str, bytes] = field(default_factory=dict)
    restart: bool = False


@dataclass(slots=True, unsafe_hash=True)
class Tick:
    """A timer set by `SetTimer(name, ...)` fired; `now_ns` is the node's local clock."""

    name: str
    now_ns: int


@dataclass(slots=True, unsafe_hash=True)
class Received:
    """A message from peer `src` arrived."""

    src: NodeId
    msg: Message


@dataclass(slots=True, unsafe_hash=True)
class ClientRequest:
    """A client asks for operation `f` (the history vocabulary: read, write, cas, append,
    txn, transfer, ...). The node must answer with exactly one `Reply(request_id, ...)` unless
    it crashes first; `request_id` is unique per world run."""

    request_id: int
    f: str
    key: Any = None
    value: Any = None


@dataclass(slots=True, unsafe_hash=True)
class PersistDone:
    """Disk operation `op` of a `Persist` finished; `ok` False names the error (ENOSPC, EIO)."""

    op: int
    ok: bool = True
    error: str = ""


@dataclass(slots=True, unsafe_hash=True)
class SyncDone:
    """Disk operation `op` of a `Sync` finished. `ok` True means every byte appended to that
    file before it is durable. `ok` False: durability is unknown (treat as lost; fsyncgate)."""

    op: int
    ok: bool = True
    error: str = ""


@dataclass(slots=True, unsafe_hash=True)
class CaptureDone:
    """The job of `Capture(op, ...)` finished: `data` is what it returned (never sent or
    stored as is: the node unpacks it); `ok` False names the error (the image could not be
    read or is over its limit)."""

    op: int
    ok: bool = True
    data: Any = None
    error: str = ""


Event = Start | Tick | Received | ClientRequest | PersistDone | SyncDone | CaptureDone


# --- effects: outputs of Node.step -----------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Persist:
    """Write `data` to file `file`: append (default), or `replace` the whole file atomically.

    An append is not durable until a later `Sync` of the same file completes. A replace is
    done as write-temp, sync, rename, sync-dir, so it is durable when `PersistDone` arrives.
    `op` is chosen by the node and unique within an incarnation.
    """

    op: int
    file: str
    data: bytes
    replace: bool = False


@dataclass(slots=True, unsafe_hash=True)
class Sync:
    """fsync `file`: makes every append submitted before it durable. Answered by `SyncDone`."""

    op: int
    file: str


@dataclass(slots=True, unsafe_hash=True)
class Send:
    """Send `msg` to peer `to`, once disk operation `after` (if any) succeeded. Delivery is
    not guaranteed: networks drop, duplicate, delay and reorder."""

    to: NodeId
    msg: Message
    after: int | None = None


@dataclass(slots=True, unsafe_hash=True)
class Apply:
    """Announce that command `index` took effect in the node's state machine (observers,
    replica-convergence checkers and metrics use it; it changes no node state)."""

    index: int
    command: Any
    after: int | None = None


@dataclass(slots=True, unsafe_hash=True)
class Reply:
    """Answer client request `request_id`: `ok` (it happened), `fail` (it certainly did not)
    or `info` (unknown). `value` is the result (the read value, the txn's completed micro-ops)."""

    request_id: int
    type: ReplyType
    value: Any = None
    error: str = ""
    after: int | None = None

    def __post_init__(self) -> None:
        assert self.type in REPLY_TYPES, f"reply type {self.type!r} not in {REPLY_TYPES}"


@dataclass(slots=True, unsafe_hash=True)
class SetTimer:
    """Deliver `Tick(name, ...)` after `delay_ns` of the node's local time; setting a timer
    of the same name again replaces it."""

    name: str
    delay_ns: int

    def __post_init__(self) -> None:
        assert self.delay_ns >= 0, f"timer {self.name!r} delay {self.delay_ns} < 0"


@dataclass(slots=True, unsafe_hash=True)
class CancelTimer:
    """Forget timer `name` (no-op if it is not set)."""

    name: str


@dataclass(slots=True, unsafe_hash=True)
class Halt:
    """The node stops itself (e.g. after a failed fsync): the driver drops it like a crash.
    The world decides whether and when it restarts."""

    reason: str


@dataclass(slots=True, unsafe_hash=True)
class Capture:
    """Run `job` away from the node's own thread and answer with `CaptureDone(op, ...)`.

    For work that is long but reads only what the node froze when it built `job` (a state
    machine image from a consistent engine snapshot, see `RaftNode._maybe_compact`): the
    node keeps stepping meanwhile. It is not a disk op: it is not ordered with `Persist`/
    `Sync` and holds none of them up. The job must not touch the node's live state; it may
    raise `KeeldbError` (answered as `ok=False`). Dropped, never answered, after a crash.
    """

    op: int
    job: Callable[[], Any]


Effect = Persist | Sync | Send | Apply | Reply | SetTimer | CancelTimer | Halt | Capture

# The one execution order of a batch (stable within a phase).
PHASES: dict[type, int] = {
    Persist: 0, Sync: 0,  # disk ops share a phase so the node's write/sync order is kept
    Send: 1, Apply: 2, Reply: 3, SetTimer: 4, CancelTimer: 4, Capture: 4, Halt: 5,
}


@runtime_checkable
class Node(Protocol):
    """A sans-IO state machine. `step` must be deterministic given the events it has seen."""

    def step(self, event: Event) -> list[Effect]: ...

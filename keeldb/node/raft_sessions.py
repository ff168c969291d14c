"""`Sessions`: exactly-once application of a Raft node's commands, and the `StateMachine`
protocol it wraps (moved out of `raft_node`, which re-exports both).

An entry's data is msgpack `[session, seq, low, command]` (plus a kind for ANNOUNCE entries);
the table of sessions, the replicated address book and the state machine's image together
are the node's snapshot (`snapshot()`, or `capture()` to build it off the node's thread).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from keeldb import limits
from keeldb.node.raft_members import ANNOUNCE


class StateMachine(Protocol):
    """What a RaftNode replicates. Deterministic: equal command sequences, equal states."""

    def command(self, f: str, key: Any, value: Any) -> tuple[bytes, bool]:
        """Encode a client request as (command bytes, read_only). Raise UsageError (or
        ValueError/TypeError) for a request that can never succeed."""

    def apply(self, index: int, command: bytes) -> tuple[str, Any]:
        """Apply a committed command; return (reply type "ok" or "fail", reply value)."""

    def read(self, command: bytes) -> tuple[str, Any]:
        """Answer a read-only command from the current state (no change)."""

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot image (b"" is the initial state)."""

    # Optional: `capture() -> Callable[[], bytes]` freezes the current state cheaply (an
    # engine snapshot) and returns a job that builds `snapshot()`'s bytes from it later, on
    # another thread, while `apply` goes on. Without it the image is built at once.


def _capture_of(sm: StateMachine) -> Callable[[], bytes]:
    capture = getattr(sm, "capture", None)
    if capture is not None:
        job: Callable[[], bytes] = capture()
        return job
    data = sm.snapshot()
    return lambda: data


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass(slots=True)
class _Session:
    low: int  # every seq below it was answered: a copy of it arriving now is skipped
    last_index: int  # the log index this session last applied at (for eviction)
    done: dict[int, list[Any]]  # seq -> [reply type, value] for seqs >= low
    top: int = 0  # the highest seq applied: a lower new seq now would apply out of order


class Sessions:
    """Exactly-once application of (session, seq)-stamped commands; part of the snapshot.

    An entry's data is msgpack `[session, seq, low, command]`, where `low` is the smallest seq
    its proxy still waits for. A seq below the session's `low` was answered already, so a late
    copy is skipped; a seq in `done` is a retry and gets the first result back.
    """

    def __init__(self, sm: StateMachine, sessions_max: int = limits.raft_node_sessions_max,
                 done_max: int = limits.raft_node_session_done_max) -> None:
        self.sm = sm
        self.sessions_max = sessions_max
        self.done_max = done_max
        self.table: dict[str, _Session] = {}
        # Replicated beside the table: member id -> its Raft address "HOST:PORT", learned
        # from the context of applied conf changes (so a node fed a snapshot knows them too).
        self.members: dict[str, str] = {}
        # member id -> [its client (RESP) address, its disk's lineage], from ANNOUNCE
        # entries: redirect errors name the address, wipe detection compares the lineage
        self.clients: dict[str, list[str]] = {}

    @staticmethod
    def encode(session: str, seq: int, low: int, command: bytes, kind: str = "") -> bytes:
        """`kind` "" is a state-machine command; ANNOUNCE is [node, address] for `clients`."""
        assert 0 < low <= seq, (low, seq)
        if kind:
            return _pack([session, seq, low, command, kind])
        return _pack([session, seq, low, command])

    def apply(self, index: int, data: bytes) -> tuple[str, int, list[Any] | None]:
        """Apply one entry. Returns (session, seq, [type, value]) or None as the result when
        the entry was a late copy of an answered command (not applied)."""
        session, seq, low, command, *kind = _unpack(data)
        s = self.table.get(session)
        if s is None:
            if len(self.table) >= self.sessions_max:
                oldest = min(self.table, key=lambda k: (self.table[k].last_index, k))
                del self.table[oldest]
            s = self.table[session] = _Session(0, index, {})
        s.last_index = index
        if low > s.low:  # checked here: most entries do not raise it (no call then)
            self._raise_low(s, low)
        if seq < s.low:
            return session, seq, None
        if seq in s.done:
            return session, seq, s.done[seq]
        if seq < s.top and kind != [ANNOUNCE]:
            # A re-proposed write whose first proposal was lost, arriving after later writes
            # of the same node applied: applying it now would reorder that node's requests
            # (a pipelined SET k 1; SET k 2 would end as 1). It is refused, deterministically
            # on every replica, and the client is told nothing was applied.
            result: list[Any] = ["fail", f"write seq {seq} of {session} arrived after seq "
                                         f"{s.top} applied; not applied to keep request order"]
            s.done[seq] = result
            return session, seq, result
        if seq > s.top:
            s.top = seq
        if kind == [ANNOUNCE]:
            node, addr, lineage = (str(x) for x in _unpack(command))
            known = self.clients.get(node)
            if known is None or known[1] == lineage:  # the first lineage stays
                self.clients[node] = [addr, lineage]
            result = ["ok", None]
        else:
            result = list(self.sm.apply(index, bytes(command)))
        s.done[seq] = result
        if len(s.done) > self.done_max:
            first_seq = min(s.done)
            self._raise_low(s, first_seq + 1)
            if first_seq in s.done:  # even when it is not at the front (see _raise_low)
                del s.done[first_seq]
            assert len(s.done) <= self.done_max, (len(s.done), self.done_max)
        return session, seq, result

    @staticmethod
    def _raise_low(s: _Session, low: int) -> None:
        if low > s.low:
            s.low = low
            # Seqs mostly apply in order, so `done` is (nearly) sorted by insertion: drop
            # from the front (O(1) per apply, not a scan of `done`). A re-proposed seq that
            # applied after later ones may stay below `low` until the size bound evicts it;
            # `lookup` checks `low` first, so such a leftover is never served.
            done = s.done
            while done:
                q = next(iter(done))
                if q >= low:
                    break
                del done[q]

    def lookup(self, session: str, seq: int) -> tuple[bool, list[Any] | None]:
        """(known, result): whether (session, seq) was decided, and its result if kept."""
        s = self.table.get(session)
        if s is None:
            return False, None
        if seq < s.low:
            return True, None
        if seq in s.done:
            return True, s.done[seq]
        return False, None

    def snapshot(self) -> bytes:
        table = [[k, s.low, s.last_index, [[q, *r] for q, r in s.done.items()]]
                 for k, s in self.table.items()]
        return _pack([table, self.sm.snapshot(), dict(sorted(self.members.items())),
                      dict(sorted(self.clients.items()))])

    def capture(self) -> Callable[[], bytes]:
        """`snapshot()` as a job (see `StateMachine`): the bounded session table and books
        are copied now, the state machine is frozen by its own `capture`, and the job packs
        them later without reading anything live."""
        table = [[k, s.low, s.last_index, [[q, *r] for q, r in s.done.items()]]
                 for k, s in self.table.items()]
        members = dict(sorted(self.members.items()))
        clients = {k: list(v) for k, v in sorted(self.clients.items())}
        inner = _capture_of(self.sm)
        return lambda: _pack([table, inner(), members, clients])

    def restore(self, data: bytes) -> None:
        if not data:
            self.table = {}
            self.members = {}
            self.clients = {}
            self.sm.restore(b"")
            return
        table, inner, *rest = _unpack(data)
        self.members = {str(k): str(v) for k, v in (rest[0] if rest else {}).items()}
        self.clients = {str(k): [str(v[0]), str(v[1])]
                        for k, v in (rest[1] if len(rest) > 1 else {}).items()}
        self.table = {}
        for k, low, last, done in table:
            kept = {int(q): [t, v] for q, t, v in done}
            # `top` is not in the image: every seq above `low` that applied is in `done`.
            self.table[str(k)] = _Session(int(low), int(last), kept,
                                          max(kept, default=int(low) - 1))
        self.sm.restore(bytes(inner))

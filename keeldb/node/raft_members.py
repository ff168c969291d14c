"""Membership of a `RaftNode`: the member file, the disk's lineage, the replicated address
book, and the conf-change / transfer requests (docs/design/raft-node.md, "Membership").

`RaftMembership` is a mixin of `RaftNode` (sans-IO like it): it owns the node's membership
state (`member_state`, `lineage`, `admin`, `on_members`) and the methods that change it; the
node calls them at fixed points of its life:

- `_load_member(ev)` / `_new_member()` at `Start` (read or create `raft.member`);
- `_admin_request(req)` for a `ClientRequest` whose `f` is CONF_CHANGE or TRANSFER,
  `_admin_progress()` on every tick;
- `_conf_applied(cc)` for every applied conf-change entry, `_joined()` when a snapshot lists
  this node as a learner, `_members_changed()` when the address book may have changed,
  `_check_wiped()` after every Ready.

What it uses of the node is declared below (`raft`, `sessions`, `id`, `ticks`, `stats`,
`cfg`, `_next_op`); nothing else crosses the seam.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import crc32c
import msgpack

from keeldb import limits
from keeldb.consensus import ConfChange, ConfChangeType, Raft
from keeldb.errors import (
    ConfChangeRefusedError,
    CorruptionError,
    LimitExceededError,
    ProposalDroppedError,
)
from keeldb.node import raft_codec
from keeldb.node.effects import ClientRequest, Effect, Persist, Reply, Start
from keeldb.types import NodeId

if TYPE_CHECKING:
    from keeldb.node.raft_node import RaftNodeConfig, RaftNodeStats, Sessions

# Wiped-member detection (docs/cluster.md). MEMBER_FILE holds one checksummed record
# [state, lineage]: the state ("" or WIPED or JOINING) and the disk's lineage, a name made at
# its empty start. Every node ANNOUNCEs its lineage through the log; the replicated book keeps
# the first lineage seen per member until the member is removed. A node whose book entry names
# another lineage was known to the cluster before its empty start: its disk was wiped. It then
# neither votes nor campaigns (`Raft.refuse_votes`) and only replicates, until an operator
# removes and re-adds it. A `--join` start is JOINING until its own ADD_LEARNER applies: a
# snapshot it is fed may predate its earlier removal, so the book is not trusted before that.
MEMBER_FILE = "raft.member"
SUSPECT_FILE = "raft.suspect"
WIPED, JOINING = b"wiped", b"joining"
# ClientRequest.f of the membership and leadership requests (docs/design/raft-node.md)
CONF_CHANGE, TRANSFER = "conf-change", "transfer"
# ClientRequest.f: replicate "this node's client (RESP) address is value" (for redirects)
ANNOUNCE = "announce"
# Damage must be read this many times with identical bytes before the node acts on it (cuts
# a torn tail or refuses to start): one read may be a transient bit flip, and on a small file
# two reads flipping the same bit are not rare enough in a swarm (seed 243).
DAMAGE_CONFIRM_READS = 3


def suspect_reads(note: bytes, fp: bytes) -> int:
    """How many earlier reads saw exactly the bytes fingerprinted `fp` (0 if others)."""
    seen, _, count = note.rpartition(b"#")
    return int(count) if seen == fp and count.isdigit() else 0


def _member_ok(rec: Any) -> bool:
    return (isinstance(rec, list) and len(rec) == 2 and all(isinstance(x, str) for x in rec)
            and rec[0] in ("", WIPED.decode(), JOINING.decode()))


def announce_command(node: str, address: str, lineage: str) -> bytes:
    """The command of an ANNOUNCE entry (applied by `Sessions.apply`)."""
    return msgpack.packb([node, address, lineage], use_bin_type=True)  # type: ignore[no-any-return]


@dataclass(slots=True)
class _Admin:
    """A membership or leadership request waiting for its outcome."""

    request_id: int
    deadline: int
    change: ConfChange | None = None  # answered when an equal change applies here
    target: str = ""  # TRANSFER: answered when this node sees `target` lead


class RaftMembership:
    """Mixin: the membership half of `RaftNode` (see the module docstring)."""

    # --- what the node provides ------------------------------------------------------------
    raft: Raft | None
    sessions: Sessions
    id: NodeId
    ticks: int
    stats: RaftNodeStats
    cfg: RaftNodeConfig
    state: str
    _next_op: Callable[[], int]

    def _init_membership(self) -> None:
        self.admin: dict[int, _Admin] = {}  # request id -> membership/transfer request
        self.member_state = b""  # MEMBER_FILE's state as last persisted
        self.lineage = ""  # MEMBER_FILE's lineage: this disk's name (see MEMBER_FILE)
        # Called (by the host, outside the core) with the address book when it changes.
        self.on_members: Callable[[dict[str, str]], None] | None = None

    # --- the member file -------------------------------------------------------------------

    def _new_member(self, lineage: str) -> Persist:
        """An empty disk: it is named `lineage` (joining when started with `join`)."""
        self.lineage = lineage
        self.member_state = JOINING if self.cfg.join else b""
        return self._member_persist()

    def _load_member(self, ev: Start) -> list[Effect]:
        """Read MEMBER_FILE of a non-empty disk. [] when read; else the effects of a halt
        (a damaged file is read again, like the log)."""
        data = ev.files.get(MEMBER_FILE, b"")
        recs, _, problem = raft_codec.decode_records(data, MEMBER_FILE)
        if problem or len(recs) > 1 or (recs and not _member_ok(recs[0])):
            # Replaced atomically, so any damage is a bad read or a bad disk: read again,
            # refuse to start once the same bytes were read DAMAGE_CONFIRM_READS times.
            fp = b"member:" + str(crc32c.crc32c(data)).encode()
            seen = suspect_reads(ev.files.get(SUSPECT_FILE, b""), fp)
            if seen + 1 >= DAMAGE_CONFIRM_READS:
                raise CorruptionError(
                    f"node {ev.node!r}: {MEMBER_FILE} is corrupt (read {seen + 1} times); "
                    "remove the member (`keeldb cluster remove`), wipe its data dir and "
                    "add it again", path=MEMBER_FILE)
            self.state = "halting"
            note = fp + b"#" + str(seen + 1).encode()
            return [Persist(self._next_op(), SUSPECT_FILE, note, replace=True)]
        # No file: a disk older than MEMBER_FILE, one fixed lineage per node
        state, self.lineage = recs[0] if recs else ("", f"legacy:{ev.node}")
        self.member_state = state.encode()
        return []

    def _member_persist(self) -> Persist:
        record = raft_codec.encode_record([self.member_state.decode(), self.lineage])
        return Persist(self._next_op(), MEMBER_FILE, record, replace=True)

    # --- membership and leadership requests ------------------------------------------------

    def _admin_request(self, req: ClientRequest) -> list[Effect]:
        """CONF_CHANGE (key = [type, node id], value = context bytes): propose it, answer
        when it applied here. TRANSFER (key = target): answer when the target leads."""
        assert self.raft is not None
        if len(self.admin) >= limits.raft_node_admin_pending_max:
            return [Reply(req.request_id, "fail",
                          error=f"{len(self.admin)} membership requests pending, limit "
                                "raft_node_admin_pending_max; retry when they finished")]
        deadline = self.ticks + limits.raft_node_admin_wait_ms // limits.raft_node_tick_ms
        try:
            if req.f == TRANSFER:
                target = str(req.key)
                if target not in self.raft.conf.voters:
                    return [Reply(req.request_id, "fail",
                                  error=f"{target!r} is not a voter (voters: "
                                        f"{', '.join(self.raft.conf.voters)}); add it first")]
                if self.raft.lead == target:
                    return [Reply(req.request_id, "ok", {"leader": target})]
                self.raft.transfer_leader(NodeId(target))
                self.admin[req.request_id] = _Admin(req.request_id, deadline, target=target)
            else:
                kind, node = req.key
                cc = ConfChange(ConfChangeType(kind), NodeId(str(node)), bytes(req.value or b""))
                self.raft.propose_conf_change(cc)
                self.admin[req.request_id] = _Admin(req.request_id, deadline, change=cc)
        except (ConfChangeRefusedError, ProposalDroppedError, LimitExceededError,
                ValueError, TypeError) as exc:
            return [Reply(req.request_id, "fail", error=str(exc))]
        return []

    def _admin_progress(self) -> list[Effect]:
        """Answer transfers that finished and requests that ran out of time."""
        assert self.raft is not None
        out: list[Effect] = []
        for rid, a in list(self.admin.items()):
            if a.target and self.raft.lead == a.target:
                del self.admin[rid]
                out.append(Reply(rid, "ok", {"leader": a.target}))
            elif self.ticks >= a.deadline:
                del self.admin[rid]
                what = f"transfer to {a.target}" if a.target else f"change {a.change}"
                out.append(Reply(rid, "info", error=f"{what} not done within "
                                 f"{limits.raft_node_admin_wait_ms} ms; check /status"))
        return out

    # --- applied changes and the address book ----------------------------------------------

    def _conf_applied(self, cc: ConfChange) -> list[Effect]:
        if cc.context:
            try:
                book = msgpack.unpackb(cc.context, raw=False, strict_map_key=False)
                self.sessions.members.update({str(k): str(v) for k, v in book.items()})
            except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
                self.stats.bad_messages += 1  # an address book we cannot read: keep ours
        out: list[Effect] = []
        if cc.node == self.id and cc.type != ConfChangeType.REMOVE:
            out += self._joined()
        if cc.type == ConfChangeType.REMOVE:
            self.sessions.members.pop(cc.node, None)
            self.sessions.clients.pop(cc.node, None)  # re-added later, it announces anew
        self._members_changed()
        for rid, a in list(self.admin.items()):
            if a.change is not None and (a.change.type, a.change.node) == (cc.type, cc.node):
                del self.admin[rid]
                out.append(Reply(rid, "ok", {"change": cc.type.value, "node": cc.node}))
        return out

    def _joined(self) -> list[Effect]:
        """This node is a member: a JOINING disk now trusts the book (see MEMBER_FILE)."""
        if self.member_state != JOINING:
            return []
        self.member_state = b""
        return [self._member_persist()]

    def _members_changed(self) -> None:
        if self.on_members is not None:
            self.on_members(dict(self.sessions.members))

    def _check_wiped(self) -> list[Effect]:
        """Has the replicated book another lineage for our id? Then our disk was wiped."""
        assert self.raft is not None
        known = self.sessions.clients.get(self.id)
        if known is None or known[1] == self.lineage or self.member_state in (WIPED, JOINING):
            return []
        self.member_state = WIPED
        self.raft.refuse_votes = True
        # Unsynced: a lost write re-runs this check after a restart, with the same result.
        return [self._member_persist()]

    def membership_status(self) -> dict[str, Any]:
        """The membership fields of `RaftNode.status()`."""
        return {"members": dict(self.sessions.members),
                "clients": {k: v[0] for k, v in self.sessions.clients.items()},
                "member_state": self.member_state.decode() or "ok", "lineage": self.lineage}

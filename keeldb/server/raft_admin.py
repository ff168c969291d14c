"""Membership and leadership of a running Raft node: the admin port's POST endpoints.

    POST /cluster/add       {"id": "n4", "addr": "HOST:PORT"}   learner, catch up, voter
    POST /cluster/remove    {"id": "n3"}                        the leader itself included
    POST /cluster/transfer  {"id": "n2"}                        hand leadership to a voter

Every reply is JSON: `{"ok": true, ...}` or `{"ok": false, "error": KIND, "message": ...,
"leader": ID}` with an HTTP status by kind (`ERRORS`). Changes are made on the leader: a
follower answers `not-leader` naming the leader (the CLI then asks that node).

`cluster add` is two conf changes, one at a time (docs/design/raft-node.md): ADD_LEARNER with
the members' Raft addresses in its context (every replica learns where the new node listens,
and the new node learns the others from the same entry or a snapshot), then, once the
learner's match index is within `limits.cluster_learner_close_entries` of the leader's last
index, ADD_VOTER. The wait is bounded (`limits.cluster_learner_catchup_ms_max`); a learner
that never catches up stays a learner (harmless: it does not vote or count) and the reply
says what to check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgpack

from keeldb import limits
from keeldb.consensus import ConfChangeType
from keeldb.node.raft_node import ANNOUNCE, CONF_CHANGE, TRANSFER
from keeldb.runtime.real.transport import Address, OnMessage, Transport
from keeldb.types import NodeId

if TYPE_CHECKING:
    from keeldb.server.raft_apply import RaftApplyPath

log = logging.getLogger("keeldb.raft_admin")

ERRORS = {"bad-request": 400, "not-leader": 421, "refused": 409, "timeout": 504,
          "no-leader": 503, "not-raft": 404}
POLL_S = 0.05


class AdminActionError(Exception):
    """A POST that did not succeed: `kind` picks the HTTP status, `extra` joins the reply."""

    def __init__(self, kind: str, message: str, **extra: Any) -> None:
        assert kind in ERRORS, kind
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.extra = extra


class MembershipTransport(Transport):
    """A `Transport` whose peer set grows as members join (their address comes from the
    replicated address book), and that drops, rather than asserts on, a frame to a member
    whose address is not known yet (the core retries; the book arrives with the change).
    Only the transport's public API is used (`add_peer`, `peers`, `port`)."""

    def __init__(self, node: NodeId, listen: Address, peers: Mapping[NodeId, Address],
                 on_message: OnMessage, **kw: Any) -> None:
        super().__init__(node, listen, peers, on_message, **kw)
        self._listen_host = listen[0]
        # id -> address, as given: the book this node hands to a member it adds
        self._addresses: dict[NodeId, Address] = {p: a for p, a in peers.items() if p != node}

    def add_peer(self, node: NodeId, address: Address) -> bool:
        """Know `node` at `address` (True if that is new). Called on the event loop."""
        changed = super().add_peer(node, address)
        if changed:
            self._addresses[node] = address
        return changed

    def remove_peer(self, node: NodeId) -> bool:
        self._addresses.pop(node, None)
        return super().remove_peer(node)

    def address_book(self) -> dict[str, str]:
        """id -> "HOST:PORT" of every peer and of this node's own listening port."""
        book = {str(p): f"{a[0]}:{a[1]}" for p, a in sorted(self._addresses.items())}
        book[str(self.node)] = f"{self._listen_host}:{self.port}"
        return book

    def send(self, to: NodeId, msg: Any) -> bool:
        if to not in self._addresses:
            self.stats.dropped_overflow += 1
            return False
        return super().send(to, msg)


def parse_addr(text: str) -> Address:
    host, colon, port = str(text).rpartition(":")
    if not (colon and host and port.isdigit() and 0 < int(port) <= 65535):
        raise AdminActionError("bad-request", f"address {text!r} is not HOST:PORT (the new "
                                              "node's Raft port, as in its --join list)")
    return host, int(port)


def _node_id(body: dict[str, Any]) -> str:
    node = body.get("id")
    if not isinstance(node, str) or not node or len(node) > 64:
        raise AdminActionError("bad-request", f"'id' must be a node id like \"n4\", got "
                                              f"{node!r}")
    return node


class ClusterAdmin:
    """The POST actions of one server's admin port, over its `RaftApplyPath`."""

    def __init__(self, path: RaftApplyPath) -> None:
        self.path = path
        self._warned_votes = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch()))

    def announce(self, addr: str) -> None:
        """Replicate this node's client address (for --redirect) once it is listening."""
        self._tasks.append(asyncio.get_running_loop().create_task(self._announce(addr)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _announce(self, addr: str) -> None:
        """Propose ANNOUNCE until this node sees its own address in the replicated book
        (a retry after a lost proposal is harmless: the entry only sets a value)."""
        me = str(self.path.node_id)
        while True:
            st = self.path.node_status()
            if st.get("clients", {}).get(me) == addr or st.get("member_state") == "wiped":
                return
            members = [*(st.get("voters") or ()), *(st.get("learners") or ())]
            if st.get("lead") and me in members:
                await self.path.admin_request(ANNOUNCE, me, addr)
            await asyncio.sleep(0.5)

    async def _watch(self) -> None:
        """Say in the log what to do about a wiped member: when found, and once per new
        vote refused."""
        while True:
            await asyncio.sleep(1.0)
            st = self.path.node_status()
            refused = int(st.get("votes_refused") or 0)
            if st.get("refuse_votes") and (refused > self._warned_votes
                                           or not self._warned_votes):
                self._warned_votes = max(1, refused)
                me = self.path.node_id
                log.warning(
                    "%s was started on an empty data dir, but the cluster knew it before (its "
                    "disk was wiped): it replicates but neither votes nor campaigns (refused a "
                    "candidate with a log to index %s). Replace it safely: `keeldb cluster "
                    "remove %s`, wipe its data dir, start it with `keeldb serve --id %s --join "
                    "...` and `keeldb cluster add %s HOST:PORT` (it recovers by snapshot)", me,
                    st.get("refused_for_index"), me, me, me)

    # --- dispatch ------------------------------------------------------------------------------

    async def handle(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Run one POST action; (HTTP status, JSON reply)."""
        try:
            if action == "add":
                result = await self.add(_node_id(body), parse_addr(body.get("addr", "")))
            elif action == "remove":
                result = await self.remove(_node_id(body))
            elif action == "transfer":
                result = await self.transfer(_node_id(body))
            else:
                raise AdminActionError("bad-request", f"unknown action {action!r}; POST "
                                                      "/cluster/add|remove|transfer")
        except AdminActionError as exc:
            return ERRORS[exc.kind], {"ok": False, "error": exc.kind, "message": exc.message,
                                      **exc.extra}
        return 200, {"ok": True, **result}

    def _leader_status(self) -> dict[str, Any]:
        st = self.path.node_status()
        if st.get("role") != "leader":
            lead = st.get("lead") or None
            if lead is None:
                raise AdminActionError("no-leader", "no leader known right now (an election "
                                                    "is under way?); retry in a moment")
            raise AdminActionError("not-leader", f"{self.path.node_id} is not the leader; "
                                                 f"send this to {lead}", leader=lead)
        return st

    async def _request(self, f: str, key: Any, value: Any = None) -> Any:
        rtype, value, error = await self.path.admin_request(f, key, value)
        if rtype == "ok":
            return value
        if rtype == "fail":
            raise AdminActionError("refused", error or "refused")
        raise AdminActionError("timeout", error or "outcome unknown; check `cluster status`")

    async def add(self, node: str, addr: Address) -> dict[str, Any]:
        st = self._leader_status()
        if node in st["voters"]:
            return {"node": node, "voter": True, "changed": False}
        if node not in st["learners"]:
            self.path.transport_add_peer(NodeId(node), addr)
            book = {**self.path.addresses(), node: f"{addr[0]}:{addr[1]}"}
            ctx = msgpack.packb(book)
            await self._request(CONF_CHANGE, [ConfChangeType.ADD_LEARNER.value, node], ctx)
        match = await self._wait_caught_up(node)
        await self._request(CONF_CHANGE, [ConfChangeType.ADD_VOTER.value, node], b"")
        return {"node": node, "voter": True, "changed": True, "match": match}

    async def _wait_caught_up(self, node: str) -> int:
        wait_s = limits.cluster_learner_catchup_ms_max / 1000
        deadline = time.monotonic() + wait_s
        match = last = 0
        while time.monotonic() < deadline:
            st = self._leader_status()
            pr = st["progress"].get(node)
            match, last = (pr["match"], st["last_index"]) if pr else (0, st["last_index"])
            if pr and last - match <= limits.cluster_learner_close_entries:
                return int(match)
            await asyncio.sleep(POLL_S)
        raise AdminActionError(
            "timeout", f"learner {node} did not catch up within {wait_s:.0f} s (match {match}, "
                       f"leader's last index {last}); check that it runs (`keeldb serve --id "
                       f"{node} --join ...`) and reaches the leader, then run `keeldb cluster "
                       f"add` again, or `keeldb cluster remove {node}`", match=match, last=last)

    async def remove(self, node: str) -> dict[str, Any]:
        st = self._leader_status()
        if node not in st["voters"] and node not in st["learners"]:
            return {"node": node, "changed": False}
        await self._request(CONF_CHANGE, [ConfChangeType.REMOVE.value, node], b"")
        return {"node": node, "changed": True, "was_leader": node == self.path.node_id}

    async def transfer(self, node: str) -> dict[str, Any]:
        self._leader_status()
        value = await self._request(TRANSFER, node)
        return {"leader": value["leader"]}

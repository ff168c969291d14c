"""RaftNode membership, leadership transfer and the wiped-member vote guard, on a tiny
in-test network (every disk op succeeds at once, every message arrives in order)."""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any

import msgpack

from keeldb.consensus import (
    ConfChange,
    ConfChangeType,
    MemoryStorage,
    Message,
    MsgType,
    Raft,
    Role,
)
from keeldb.consensus.messages import CAMPAIGN_TRANSFER
from keeldb.consensus.raft import Config
from keeldb.node import raft_codec
from keeldb.node.effects import (
    ClientRequest,
    Effect,
    Event,
    Halt,
    Persist,
    PersistDone,
    Received,
    Reply,
    Send,
    Start,
    Sync,
    SyncDone,
    Tick,
)
from keeldb.node.raft_node import (
    ANNOUNCE,
    CONF_CHANGE,
    MEMBER_FILE,
    TICK_TIMER,
    TRANSFER,
    WIPED,
    RaftNode,
    RaftNodeConfig,
    Sessions,
)
from keeldb.types import NodeId


class DictSM:
    """A deterministic key-value state machine: command = msgpack [key, value]."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def command(self, f: str, key: Any, value: Any) -> tuple[bytes, bool]:
        return msgpack.packb([key, value]), f == "read"

    def apply(self, index: int, command: bytes) -> tuple[str, Any]:
        key, value = msgpack.unpackb(command)
        self.state[key] = value
        return "ok", value

    def read(self, command: bytes) -> tuple[str, Any]:
        key, _ = msgpack.unpackb(command)
        return "ok", self.state.get(key)

    def snapshot(self) -> bytes:
        return msgpack.packb(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgpack.unpackb(data) if data else {}


class Net:
    """RaftNodes wired together; `run` delivers until nothing is left to deliver."""

    def __init__(self, founders: tuple[str, ...], cfg: RaftNodeConfig | None = None) -> None:
        self.cfg = cfg or RaftNodeConfig(snapshot_entries=20, keep_entries=5)
        self.founders = founders
        self.nodes: dict[str, RaftNode] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.books: dict[str, dict[str, str]] = {}
        self.replies: dict[int, Reply] = {}
        self.queue: deque[tuple[str, Event]] = deque()
        self.rid = 0
        for n in founders:
            self.start(n)

    def start(self, name: str, join: bool = False) -> RaftNode:
        node = RaftNode(DictSM, replace(self.cfg, join=join))
        node.on_members = lambda book, name=name: self.books.__setitem__(name, book)
        self.nodes[name] = node
        files = self.files.setdefault(name, {})
        peers = tuple(NodeId(p) for p in self.founders if p != name)
        self.starts = getattr(self, "starts", 0) + 1  # a new clock reading per incarnation
        self.queue.append((name, Start(NodeId(name), peers, self.starts * 10**9, dict(files),
                                       bool(files))))
        self.run()
        return node

    def _effects(self, name: str, effects: list[Effect]) -> None:
        files = self.files[name]
        for e in effects:
            if isinstance(e, Persist):
                files[e.file] = e.data if e.replace else files.get(e.file, b"") + e.data
                self.queue.append((name, PersistDone(e.op)))
            elif isinstance(e, Sync):
                self.queue.append((name, SyncDone(e.op)))
            elif isinstance(e, Send):
                if e.to in self.nodes:
                    self.queue.append((e.to, Received(NodeId(name), e.msg)))
            elif isinstance(e, Reply):
                self.replies[e.request_id] = e
            elif isinstance(e, Halt):
                raise AssertionError(f"{name} halted: {e.reason}")

    def run(self, steps_max: int = 100_000) -> None:
        for _ in range(steps_max):
            if not self.queue:
                return
            name, ev = self.queue.popleft()
            self._effects(name, self.nodes[name].step(ev))
        raise AssertionError("the network never went quiet")

    def tick(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            for name in list(self.nodes):
                self.queue.append((name, Tick(TICK_TIMER, 0)))
            self.run()

    def leader(self) -> str:
        for _ in range(100):
            leads = [n for n, node in self.nodes.items()
                     if node.raft is not None and node.raft.role == Role.LEADER]
            if leads:
                return leads[0]
            self.tick()
        raise AssertionError("no leader elected")

    def request(self, name: str, f: str, key: Any = None, value: Any = None,
                ticks: int = 50) -> Reply:
        self.rid += 1
        rid = self.rid
        self.queue.append((name, ClientRequest(rid, f, key, value)))
        self.run()
        for _ in range(ticks):
            if rid in self.replies:
                return self.replies.pop(rid)
            self.tick()
        raise AssertionError(f"no reply to {f} {key} on {name}")


def conf(kind: ConfChangeType, node: str) -> list[str]:
    return [kind.value, node]


def test_a_joiner_learns_by_snapshot_is_promoted_and_takes_over() -> None:
    net = Net(("n1", "n2", "n3"))
    lead = net.leader()
    for i in range(30):  # past snapshot_entries: the joiner must be fed a snapshot
        assert net.request(lead, "write", f"k{i}", i).type == "ok"
    n4 = net.start("n4", join=True)
    assert n4.status()["voters"] == [] and n4.raft is not None and not n4.raft.promotable()
    book = msgpack.packb({"n1": "h:1", "n2": "h:2", "n3": "h:3", "n4": "h:4"})
    # A voter cannot be added before it is a learner.
    refused = net.request(lead, CONF_CHANGE, conf(ConfChangeType.ADD_VOTER, "n4"))
    assert refused.type == "fail" and "not a learner" in refused.error
    assert net.request(lead, CONF_CHANGE, conf(ConfChangeType.ADD_LEARNER, "n4"),
                       book).type == "ok"
    net.tick(20)
    st = n4.status()
    assert st["learners"] == ["n4"] and st["snapshots_installed"] == 1
    assert st["member_state"] == "ok" and st["refuse_votes"] is False
    assert net.books["n4"] == net.books["n1"] == {"n1": "h:1", "n2": "h:2", "n3": "h:3",
                                                  "n4": "h:4"}
    assert n4.sessions.sm.state == net.nodes[lead].sessions.sm.state  # type: ignore[attr-defined]
    assert net.request(lead, CONF_CHANGE, conf(ConfChangeType.ADD_VOTER, "n4")).type == "ok"
    net.tick(5)
    assert all(n.status()["voters"] == ["n1", "n2", "n3", "n4"] for n in net.nodes.values())
    moved = net.request(lead, TRANSFER, "n4")
    assert moved.type == "ok" and moved.value == {"leader": "n4"}
    assert n4.raft is not None and n4.raft.role == Role.LEADER
    assert net.request("n4", CONF_CHANGE, conf(ConfChangeType.REMOVE, lead)).type == "ok"
    net.tick(5)
    assert net.nodes["n4"].status()["voters"] == sorted({"n1", "n2", "n3", "n4"} - {lead})
    assert lead not in net.books["n4"]
    assert net.request("n4", "write", "after", 1).type == "ok"


def test_the_leader_removes_itself_and_steps_down() -> None:
    net = Net(("n1", "n2", "n3"))
    lead = net.leader()
    assert net.request(lead, CONF_CHANGE, conf(ConfChangeType.REMOVE, lead)).type == "ok"
    net.tick(40)
    old = net.nodes.pop(lead)
    assert old.raft is not None and old.raft.role == Role.FOLLOWER
    new = net.leader()
    assert new != lead
    assert net.nodes[new].status()["voters"] == sorted({"n1", "n2", "n3"} - {lead})
    assert net.request(new, "write", "k", 1).type == "ok"


def test_transfer_to_a_non_voter_and_bad_changes_are_refused() -> None:
    net = Net(("n1", "n2", "n3"))
    lead = net.leader()
    bad = net.request(lead, TRANSFER, "n9")
    assert bad.type == "fail" and "not a voter" in bad.error
    again = net.request(lead, CONF_CHANGE, conf(ConfChangeType.REMOVE, "n9"))
    assert again.type == "fail" and "not a member" in again.error
    junk = net.request(lead, CONF_CHANGE, ["no-such-kind", "n4"])
    assert junk.type == "fail"


def test_a_wiped_founder_is_detected_and_neither_votes_nor_campaigns() -> None:
    net = Net(("n1", "n2", "n3"))
    lead = net.leader()
    for n in ("n1", "n2", "n3"):  # what every server does once it listens
        assert net.request(n, ANNOUNCE, n, f"h:{n}").type == "ok"
    for i in range(25):  # past a snapshot: the wiped node is fed one
        net.request(lead, "write", f"k{i}", i)
    victim = next(n for n in ("n1", "n2", "n3") if n != lead)
    net.nodes.pop(victim)
    net.files[victim] = {}  # wiped: it starts again as a founder on an empty disk
    node = net.start(victim)
    assert node.status()["member_state"] == "ok"  # it cannot know yet
    net.tick(10)  # the leader feeds it the book, where its id has another lineage
    st = node.status()
    assert st["member_state"] == "wiped" and st["refuse_votes"] is True
    recs, _, _ = raft_codec.decode_records(net.files[victim][MEMBER_FILE], MEMBER_FILE)
    assert recs[0][0] == WIPED.decode()
    assert node.raft is not None and not node.raft.promotable()
    other = next(n for n in ("n1", "n2", "n3") if n not in (lead, victim))
    last = net.nodes[other].raft.log.last_index()  # type: ignore[union-attr]
    vote = Message(MsgType.VOTE, to=NodeId(victim), frm=NodeId(other),
                   term=node.raft.term + 1, index=last + 1, log_term=node.raft.term + 1,
                   context=CAMPAIGN_TRANSFER)  # past the leader lease
    net._effects(victim, node.step(Received(NodeId(other), _encode(vote))))
    assert node.status()["votes_refused"] == 1 and node.raft.vote == ""
    # A restart keeps it refusing; the procedure (remove, wipe, join, add) clears it.
    net.nodes.pop(victim)
    assert net.start(victim).status()["refuse_votes"] is True
    lead = net.leader()
    assert net.request(lead, CONF_CHANGE, conf(ConfChangeType.REMOVE, victim)).type == "ok"
    net.nodes.pop(victim)
    net.files[victim] = {}
    fresh = net.start(victim, join=True)
    assert net.request(lead, CONF_CHANGE, conf(ConfChangeType.ADD_LEARNER, victim)).type == "ok"
    net.tick(10)
    assert net.request(lead, CONF_CHANGE, conf(ConfChangeType.ADD_VOTER, victim)).type == "ok"
    assert net.request(victim, ANNOUNCE, victim, "h:new").type == "ok"
    net.tick(5)
    st = fresh.status()
    assert st["member_state"] == "ok" and st["refuse_votes"] is False
    assert st["clients"][victim] == "h:new" and st["snapshots_installed"] == 1


def _encode(m: Message) -> bytes:
    return raft_codec.encode_message(m)


def test_core_refuse_votes_refuses_and_never_campaigns() -> None:
    import random

    def raft() -> Raft:
        return Raft(Config(id=NodeId("b")), MemoryStorage.bootstrap([NodeId("a"), NodeId("b")]),
                    random.Random(1))

    vote = Message(MsgType.VOTE, to=NodeId("b"), frm=NodeId("a"), term=2, index=1, log_term=1)
    r = raft()
    r.step(vote)
    assert r.vote == "a" and r.votes_refused == 0
    r2 = raft()
    r2.refuse_votes = True
    r2.step(vote)
    assert r2.vote == "" and r2.votes_refused == 1 and r2.refused_for_index == 1
    for _ in range(100):
        r2.tick()
    assert r2.role == Role.FOLLOWER and r2.term == 2  # never campaigned


def test_sessions_snapshot_keeps_the_address_book_and_reads_the_old_format() -> None:
    s = Sessions(DictSM())
    s.members = {"n4": "h:4"}
    s.apply(3, Sessions.encode("c", 1, 1, msgpack.packb(["k", 1])))
    t = Sessions(DictSM())
    t.restore(s.snapshot())
    assert t.members == {"n4": "h:4"} and t.lookup("c", 1) == (True, ["ok", 1])
    old = msgpack.packb([[], DictSM().snapshot()])  # [table, inner]: before the book
    t.restore(old)
    assert t.members == {}
    cc = ConfChange(ConfChangeType.ADD_LEARNER, NodeId("n4"), b"ctx")
    assert ConfChange.decode(cc.encode()) == cc
    plain = ConfChange(ConfChangeType.REMOVE, NodeId("n2"))
    assert msgpack.unpackb(plain.encode()) == ["remove", "n2"]  # the original encoding

"""Transactions over the KV state machine: dry-run steps, validation of the commit entry."""

from __future__ import annotations

from typing import Any

import pytest

from keeldb import limits
from keeldb.codec.resp import OK, ErrorReply
from keeldb.node import kvstate as kv
from keeldb.node import kvtxn
from keeldb.node.kvtxn import READ_COMMITTED, SERIALIZABLE, SNAPSHOT, TxnSession
from keeldb.storage.memory import MemoryEngine

T0 = 1_700_000_000_000


class Node:
    """A state machine fed through the encode/decode path, as a log entry would be."""

    def __init__(self) -> None:
        self.sm = kv.KvStateMachine(MemoryEngine())
        self.index = 0

    def write(self, *requests: kv.Request, now: int = T0) -> tuple[Any, ...]:
        self.index += 1
        batch = kv.decode_batch(kv.encode_batch(kv.Batch(tuple(requests))))
        return self.sm.apply(batch, index=self.index, now_ms=now).replies

    def read(self, request: kv.Request, now: int = T0) -> Any:
        batch = kv.decode_batch(kv.encode_batch(kv.Batch((request,))))
        return self.sm.read_batch(batch, now_ms=now).replies[0]


class Tx:
    """A TxnSession driven against a Node."""

    def __init__(self, node: Node, isolation: str = SERIALIZABLE, now: int = T0) -> None:
        self.node, self.s = node, TxnSession(isolation)
        self.s.started(node.read(self.s.start_request(), now))

    def do(self, request: kv.Request, now: int = T0) -> Any:
        return self.s.absorb(self.node.read(self.s.step_request(request), now))

    def commit(self, now: int = T0) -> Any:
        req = self.s.commit_request()
        return OK if req is None else self.node.write(req, now=now)[0]


def conflict(reply: Any) -> bool:
    return isinstance(reply, ErrorReply) and reply.text.startswith(kvtxn.CONFLICT)


@pytest.fixture
def node() -> Node:
    n = Node()
    n.write(kv.MSet((b"x", b"1", b"y", b"2")))
    return n


def test_read_your_writes_and_nothing_written_before_commit(node: Node) -> None:
    tx = Tx(node)
    assert tx.do(kv.Set(b"x", b"10")) == OK
    assert tx.do(kv.IncrBy(b"x", 5)) == 15
    assert tx.do(kv.Del((b"y",))) == 1
    assert tx.do(kv.MGet((b"x", b"y", b"z"))) == [b"15", None, None]
    assert tx.do(kv.Keys(b"*")) == [b"x"]
    assert node.read(kv.MGet((b"x", b"y"))) == [b"1", b"2"]  # nothing written yet
    assert tx.commit() == OK
    assert node.read(kv.MGet((b"x", b"y"))) == [b"15", None]


def test_snapshot_write_write_first_committer_wins(node: Node) -> None:
    t1, t2 = Tx(node, SNAPSHOT), Tx(node, SNAPSHOT)
    t1.do(kv.Set(b"x", b"11"))
    t2.do(kv.Set(b"x", b"12"))
    assert t1.commit() == OK
    assert conflict(t2.commit())
    assert node.read(kv.Get(b"x")) == b"11"


def test_snapshot_step_reading_a_newer_version_aborts(node: Node) -> None:
    t1 = Tx(node, SNAPSHOT)
    node.write(kv.Set(b"x", b"9"))
    assert conflict(t1.do(kv.Get(b"x")))
    assert t1.s.state == "failed"


def test_read_committed_sees_latest_and_checks_nothing(node: Node) -> None:
    t1, t2 = Tx(node, READ_COMMITTED), Tx(node, READ_COMMITTED)
    assert t1.do(kv.Get(b"x")) == b"1"
    t2.do(kv.Set(b"x", b"2"))
    assert t2.commit() == OK
    assert t1.do(kv.Get(b"x")) == b"2"
    t1.do(kv.Set(b"x", b"3"))
    assert t1.commit() == OK  # a lost update is allowed at read committed


def test_write_skew_allowed_at_snapshot_prevented_at_serializable(node: Node) -> None:
    for level, skew in ((SNAPSHOT, True), (SERIALIZABLE, False)):
        node.write(kv.MSet((b"x", b"1", b"y", b"1")))
        t1, t2 = Tx(node, level), Tx(node, level)
        for t in (t1, t2):
            assert t.do(kv.MGet((b"x", b"y"))) == [b"1", b"1"]
        t1.do(kv.Set(b"x", b"0"))
        t2.do(kv.Set(b"y", b"0"))
        assert t1.commit() == OK
        assert (t2.commit() == OK) is skew


def test_serializable_read_write_conflict_on_a_key_read_only_once(node: Node) -> None:
    t1 = Tx(node)
    t1.do(kv.Get(b"y"))
    t1.do(kv.Set(b"x", b"5"))
    node.write(kv.Set(b"y", b"20"))
    reply = t1.commit()
    assert conflict(reply) and "read key 'y'" in reply.text


def test_serializable_phantom_insert_into_a_scanned_range(node: Node) -> None:
    t1 = Tx(node)
    assert t1.do(kv.Scan(b"", b"a*", 100)) == [b"0", []]
    t1.do(kv.Set(b"total", b"0"))
    node.write(kv.Set(b"apple", b"1"))  # not matched by any read key: only the range sees it
    assert conflict(t1.commit())
    t2 = Tx(node, SNAPSHOT)
    t2.do(kv.Scan(b"", None, 100))
    t2.do(kv.Set(b"total", b"1"))
    node.write(kv.Set(b"banana", b"1"))
    assert t2.commit() == OK  # snapshot does not check ranges


def test_serializable_phantom_delete_seen_through_the_tombstone(node: Node) -> None:
    t1 = Tx(node)
    t1.do(kv.Keys(b"*"))
    t1.do(kv.Set(b"z", b"1"))
    node.write(kv.Del((b"y",)))
    reply = t1.commit()
    assert conflict(reply) and "deleted" in reply.text


def test_delete_and_recreate_after_snapshot_conflicts(node: Node) -> None:
    t1 = Tx(node, SNAPSHOT)
    node.write(kv.Del((b"x",)))
    assert conflict(t1.do(kv.Get(b"x")))  # the tombstone is newer than the snapshot
    t2 = Tx(node, SNAPSHOT)
    t2.do(kv.Set(b"x", b"mine"))
    node.write(kv.Set(b"x", b"again"))
    node.write(kv.Del((b"x",)))
    assert conflict(t2.commit())


def test_floor_over_the_snapshot_conflicts(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "kv_tombstones_max", 1)
    t1 = Tx(node)
    t1.do(kv.Scan(b"", None, 10))
    t1.do(kv.Set(b"q", b"1"))
    node.write(kv.Set(b"a", b"1"))
    node.write(kv.Del((b"a",)))
    node.write(kv.Set(b"b", b"1"))
    node.write(kv.Del((b"b",)))  # evicts a's tombstone: floor rises past t1's snapshot
    assert node.sm.floor > t1.s.start
    reply = t1.commit()
    assert conflict(reply)
    t2 = Tx(node, SNAPSHOT)
    for key in (b"c", b"d"):
        node.write(kv.Set(key, b"1"))
        node.write(kv.Del((key,)))  # d's evicts c's tombstone: floor passes t2's snapshot
    assert node.sm.floor > t2.s.start
    assert conflict(t2.do(kv.Get(b"never-written")))


def test_read_only_transaction_needs_no_log_entry(node: Node) -> None:
    t1 = Tx(node)
    assert t1.do(kv.Get(b"x")) == b"1"
    before = node.sm.version
    assert t1.s.commit_request() is None
    assert node.sm.version == before


def test_commit_with_expiring_writes_and_ttl_inside(node: Node) -> None:
    t1 = Tx(node)
    t1.do(kv.Set(b"e", b"v", expire_mode=kv.EXPIRE_IN_MS, expire_ms=1000))
    assert t1.do(kv.Ttl(b"e", ms=True)) == 1000
    assert t1.commit(now=T0 + 10) == OK
    assert node.read(kv.Ttl(b"e", ms=True), now=T0 + 10) == 990
    assert node.read(kv.Get(b"e"), now=T0 + 1001) is None


def test_not_allowed_and_bad_level_and_batch_rules(node: Node) -> None:
    tx = Tx(node)
    reply = tx.do(kv.DbSize())
    assert isinstance(reply, ErrorReply) and "not allowed inside TXN" in reply.text
    bad = kv.TxnStep(tx.s.start, T0, "chaos", (), kv.Get(b"x"))
    assert "is not one of" in node.read(bad).text
    tx.do(kv.Set(b"x", b"2"))
    commit = tx.s.commit_request()
    assert commit is not None
    replies = node.write(kv.Set(b"w", b"1"), commit)
    assert "only request" in replies[1].text


def test_age_and_commits_behind_limits(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    tx = Tx(node)
    reply = tx.do(kv.Get(b"x"), now=T0 + limits.txn_server_age_ms_max + 1)
    assert isinstance(reply, ErrorReply) and reply.text.startswith(kvtxn.TOO_OLD)
    assert tx.s.state == "failed"
    monkeypatch.setattr(limits, "txn_commits_behind_max", 2)
    tx = Tx(node)
    tx.do(kv.Set(b"x", b"3"))
    for _ in range(3):
        node.write(kv.Set(b"other", b"1"))
    assert node.write(tx.s.commit_request())[0].text.startswith(kvtxn.TOO_OLD)


def test_size_limit_fails_the_transaction(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "txn_server_writes_max", 2)
    tx = Tx(node)
    tx.do(kv.MSet((b"a", b"1", b"b", b"2")))
    reply = tx.do(kv.Set(b"c", b"3"))
    assert isinstance(reply, ErrorReply) and reply.text.startswith(kvtxn.TOO_LARGE)
    assert "txn_server_writes_max=2" in reply.text and tx.s.state == "failed"


def test_overlay_sent_is_only_what_the_request_touches(node: Node) -> None:
    tx = Tx(node)
    tx.do(kv.MSet((b"a", b"1", b"b", b"2")))
    assert [w[0] for w in tx.s.step_request(kv.Get(b"a")).overlay] == [b"a"]
    assert len(tx.s.step_request(kv.Scan(b"", None, 10)).overlay) == 2


def test_commit_is_deterministic_across_replicas() -> None:
    a, b = Node(), Node()
    for n in (a, b):
        n.write(kv.MSet((b"x", b"1", b"y", b"2")))
    tx = Tx(a)
    tx.do(kv.IncrBy(b"x", 1))
    tx.do(kv.Del((b"y",)))
    commit = tx.s.commit_request()
    assert commit is not None
    assert a.write(commit) == b.write(commit) == (OK,)
    assert a.sm.snapshot() == b.sm.snapshot()

"""TXN BEGIN/COMMIT/ROLLBACK in the sans-IO connection: states, errors, limits, nesting."""

from __future__ import annotations

import pytest

from keeldb import limits
from keeldb.codec.resp import ErrorReply, SimpleString
from keeldb.node import kvstate as kv
from keeldb.server.commands import Close, Connection, Execute, Send
from tests.unit.server.resp_harness import LocalServer

OK = SimpleString("OK")


def test_begin_steps_commit_and_read_your_writes() -> None:
    server = LocalServer()
    a, b = server.connect(), server.connect()
    a.call("SET", "x", "1")
    assert a.call("TXN", "BEGIN") == OK
    assert a.conn.in_txn
    assert a.call("INCR", "x") == 2
    assert a.call("GET", "x") == b"2"
    assert a.call("SET", "y", "v", "NX", "GET") is None
    assert a.call("SCAN", "0") == [b"0", [b"x", b"y"]]
    assert b.call("GET", "x") == b"1"  # not visible before the commit
    assert a.call("PING") == SimpleString("PONG")  # connection commands still work
    assert a.call("TXN", "COMMIT") == OK
    assert not a.conn.in_txn
    assert b.call("MGET", "x", "y") == [b"2", b"v"]


def test_conflict_at_commit_is_txnconflict_and_ends_the_transaction() -> None:
    server = LocalServer()
    a, b = server.connect(), server.connect()
    a.call("TXN", "BEGIN", "ISOLATION", "snapshot")
    a.call("SET", "k", "a")
    b.call("SET", "k", "b")
    reply = a.call("TXN", "COMMIT")
    assert isinstance(reply, ErrorReply) and reply.text.startswith("TXNCONFLICT")
    assert not a.conn.in_txn
    assert a.call("GET", "k") == b"b"


def test_a_failed_step_fails_the_transaction_until_rollback_or_commit() -> None:
    server = LocalServer()
    a, b = server.connect(), server.connect()
    b.call("SET", "k", "0")
    a.call("TXN", "BEGIN")
    b.call("SET", "k", "1")
    first = a.call("GET", "k")
    assert isinstance(first, ErrorReply) and first.text.startswith("TXNCONFLICT")
    assert a.call("SET", "z", "1") == first  # every later command repeats the error
    assert a.call("TXN", "COMMIT") == first
    assert a.call("GET", "z") is None
    a.call("TXN", "BEGIN")
    b.call("SET", "k", "2")
    assert a.call("GET", "k").text.startswith("TXNCONFLICT")
    assert a.call("TXN", "ROLLBACK") == OK


def test_rollback_discards_and_errors_name_the_fix() -> None:
    c = LocalServer().connect()
    assert c.call("TXN", "COMMIT") == ErrorReply("ERR TXN COMMIT without TXN BEGIN")
    assert c.call("TXN", "ROLLBACK") == ErrorReply("ERR TXN ROLLBACK without TXN BEGIN")
    assert c.call("TXN", "BEGIN", "ISOLATION", "chaos").text.startswith("ERR isolation 'chaos'")
    assert c.call("TXN", "BEGIN", "LEVEL").text.startswith("ERR syntax error")
    assert c.call("TXN", "FROB").text.startswith("ERR unknown TXN subcommand")
    assert c.call("TXN").text.startswith("ERR wrong number")
    c.call("TXN", "BEGIN", "ISOLATION", "READ_COMMITTED")
    assert c.call("TXN", "BEGIN").text.startswith("ERR TXN BEGIN inside a transaction")
    c.call("SET", "k", "v")
    assert c.call("DBSIZE").text.startswith("ERR DBSIZE is not allowed inside TXN")
    assert c.call("TXN", "ROLLBACK") == OK
    assert c.call("GET", "k") is None


def test_multi_and_txn_do_not_nest() -> None:
    c = LocalServer().connect()
    c.call("TXN", "BEGIN")
    for cmd in (("MULTI",), ("WATCH", "k"), ("EXEC",)):
        assert c.call(*cmd).text.startswith(f"ERR {cmd[0]} is not allowed inside TXN")
    assert c.call("TXN", "ROLLBACK") == OK
    c.call("MULTI")
    assert c.call("TXN", "BEGIN") == ErrorReply(
        "ERR TXN is not allowed inside MULTI; EXEC or DISCARD first")
    assert c.call("EXEC").text.startswith("EXECABORT")


def test_quit_inside_txn_closes_and_writes_nothing() -> None:
    server = LocalServer()
    c = server.connect()
    c.call("TXN", "BEGIN")
    c.call("SET", "k", "v")
    assert c.replies(b"QUIT\r\n") == [OK]
    assert c.closed == Close("QUIT")
    assert server.connect().call("GET", "k") is None


def test_steps_wait_for_the_snapshot_then_one_at_a_time() -> None:
    conn = Connection(1)
    outs = conn.receive(b"TXN BEGIN\r\nSET a 1\r\nGET a\r\nTXN COMMIT\r\n")
    assert len(outs) == 1 and isinstance(outs[0], Execute)
    assert outs[0].batch.requests == (kv.TxnStart(),)
    outs = conn.complete(outs[0].ticket, kv.Applied(([7, 1000],)))
    assert outs[0] == Send(b"+OK\r\n")
    step = outs[1]
    assert isinstance(step, Execute) and len(outs) == 2
    (req,) = step.batch.requests
    assert isinstance(req, kv.TxnStep) and req.start == 7 and req.request == kv.Set(b"a", b"1")
    # A step the node could not run (TRYAGAIN) is answered; the transaction stays usable.
    outs = conn.complete(step.ticket, ErrorReply("TRYAGAIN no leader"))
    assert outs[0] == Send(b"-TRYAGAIN no leader\r\n") and conn.in_txn


def test_unknown_commit_outcome_is_txnunknown() -> None:
    conn = Connection(1)
    (start,) = conn.receive(b"TXN BEGIN\r\n")
    assert isinstance(start, Execute)
    conn.complete(start.ticket, kv.Applied(([1, 1000],)))
    (step,) = conn.receive(b"SET a 1\r\n")
    assert isinstance(step, Execute)
    conn.complete(step.ticket, kv.Applied(([OK, [[b"a", b"1", 0]], [], []],)))
    (commit,) = conn.receive(b"TXN COMMIT\r\n")
    assert isinstance(commit, Execute) and not commit.batch.read_only
    (out,) = conn.complete(commit.ticket, ErrorReply("CLUSTERDOWN leader lost"))
    assert isinstance(out, Send) and out.data.startswith(b"-TXNUNKNOWN ")


def test_read_only_transaction_commits_without_an_entry() -> None:
    server = LocalServer()
    c = server.connect()
    c.call("SET", "k", "v")
    index = server.index
    c.call("TXN", "BEGIN")
    assert c.call("GET", "k") == b"v"
    assert c.call("TXN", "COMMIT") == OK
    assert server.index == index


def test_size_limit_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "txn_server_bytes_max", 10)
    c = LocalServer().connect()
    c.call("TXN", "BEGIN")
    reply = c.call("SET", "k", "0123456789")
    assert reply.text.startswith("TXNTOOLARGE") and "txn_server_bytes_max=10" in reply.text
    assert c.call("TXN", "COMMIT") == reply


def test_reset_ends_the_transaction() -> None:
    c = LocalServer().connect()
    c.call("TXN", "BEGIN")
    c.call("SET", "k", "v")
    assert c.call("RESET") == SimpleString("RESET")
    assert not c.conn.in_txn and c.call("GET", "k") is None


def test_readonly_connections_run_no_transactions() -> None:
    c = LocalServer().connect()
    c.call("TXN", "BEGIN")
    assert c.call("READONLY").text.startswith("ERR READONLY is not allowed inside TXN")
    c.call("TXN", "ROLLBACK")
    assert c.call("READONLY") == OK
    assert c.call("TXN", "BEGIN").text.startswith("ERR TXN on a READONLY connection")
    assert c.call("READWRITE") == OK and c.call("TXN", "BEGIN") == OK

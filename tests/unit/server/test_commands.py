"""The command layer: Redis parsing and errors, and the sans-IO connection state."""

from __future__ import annotations

import pytest

from keeldb import limits
from keeldb.codec.resp import (
    ErrorReply,
    MapReply,
    RequestParser,
    SimpleString,
    encode_request,
)
from keeldb.errors import CommandError
from keeldb.node import kvstate as kv
from keeldb.server.commands import (
    SPECS,
    Close,
    Connection,
    ConnectionConfig,
    Execute,
    Send,
    parse_command,
)
from tests.unit.server.resp_harness import LocalServer


def err(*args: bytes) -> str:
    with pytest.raises(CommandError) as info:
        parse_command(list(args))
    return info.value.message


def test_parse_data_commands() -> None:
    assert parse_command([b"get", b"k"]) == kv.Get(b"k")
    assert parse_command([b"SeT", b"k", b"v", b"ex", b"10", b"nx", b"get"]) == kv.Set(
        b"k", b"v", nx=True, get=True, expire_mode=kv.EXPIRE_IN_MS, expire_ms=10_000)
    assert parse_command([b"set", b"k", b"v", b"PXAT", b"5", b"XX"]) == kv.Set(
        b"k", b"v", xx=True, expire_mode=kv.EXPIRE_AT_MS, expire_ms=5)
    assert parse_command([b"setex", b"k", b"2", b"v"]) == kv.Set(
        b"k", b"v", expire_mode=kv.EXPIRE_IN_MS, expire_ms=2000)
    assert parse_command([b"decrby", b"k", b"-3"]) == kv.IncrBy(b"k", 3)
    assert parse_command([b"expireat", b"k", b"2", b"GT"]) == kv.Expire(
        b"k", kv.EXPIRE_AT_MS, 2000, gt=True, command="expireat")
    assert parse_command([b"scan", b"0", b"MATCH", b"a*", b"COUNT", b"5"]) == kv.Scan(
        b"", b"a*", 5)
    assert parse_command([b"pttl", b"k"]) == kv.Ttl(b"k", ms=True)


def test_parse_errors_have_redis_text() -> None:
    assert err(b"get") == "ERR wrong number of arguments for 'get' command"
    assert err(b"mset", b"a", b"b", b"c") == "ERR wrong number of arguments for 'mset' command"
    assert err(b"set", b"k", b"v", b"nx", b"xx") == "ERR syntax error"
    assert err(b"set", b"k", b"v", b"keepttl", b"ex", b"1") == "ERR syntax error"
    assert err(b"set", b"k", b"v", b"ex", b"0") == "ERR invalid expire time in 'set' command"
    assert err(b"set", b"k", b"v", b"ex", b"9223372036854776") == (
        "ERR invalid expire time in 'set' command")
    assert err(b"incrby", b"k", b"1.5") == kv.ERR_NOT_INTEGER
    assert err(b"decrby", b"k", b"-9223372036854775808") == "ERR decrement would overflow"
    assert err(b"expire", b"k", b"1", b"nx", b"gt") == (
        "ERR NX and XX, GT or LT options at the same time are not compatible")
    assert err(b"expire", b"k", b"1", b"zz") == "ERR Unsupported option zz"
    assert err(b"scan", b"x") == "ERR invalid cursor"
    assert err(b"scan", b"0", b"count", b"0") == "ERR syntax error"
    assert err(b"nope", b"a", b"b") == (
        "ERR unknown command 'nope', with args beginning with: 'a' 'b' ")
    long = err(b"nope", *[b"x" * 100] * 3)
    assert len(long) < 128 + 80 and long.count("'") == 6
    assert err(b"ping") == "ERR 'ping' is a connection command, not a data command"


def test_every_spec_has_a_handler_or_a_parser() -> None:
    for name, spec in SPECS.items():
        assert spec.parse is not None or hasattr(Connection, "_c_" + name), name


def test_replies_leave_in_request_order() -> None:
    conn = Connection(1)
    outs = conn.receive(encode_request([b"GET", b"a"]) + encode_request([b"PING"])
                        + encode_request([b"GET", b"b"]) + b"ECHO hi\r\n")
    executes = [o for o in outs if isinstance(o, Execute)]
    assert len(executes) == 2 and not any(isinstance(o, Send) for o in outs)
    assert conn.complete(executes[1].ticket, kv.Applied((b"B",))) == []
    sends = conn.complete(executes[0].ticket, kv.Applied((b"A",)))
    assert b"".join(s.data for s in sends if isinstance(s, Send)) == (
        b"$1\r\nA\r\n+PONG\r\n$1\r\nB\r\n$2\r\nhi\r\n")


def test_ready_replies_are_sent_before_a_later_execute() -> None:
    conn = Connection(1)
    outs = conn.receive(b"MULTI\r\nINCR a\r\nEXEC\r\n")
    assert outs[:2] == [Send(b"+OK\r\n"), Send(b"+QUEUED\r\n")]
    assert isinstance(outs[2], Execute) and len(outs) == 3


def test_pending_executes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "resp_pending_executes_max", 2)
    conn = Connection(1)
    outs = conn.receive(b"".join(encode_request([b"GET", b"%d" % i]) for i in range(5)))
    assert [o.ticket for o in outs if isinstance(o, Execute)] == [1, 2]
    assert conn.parser.buffered_bytes > 0 and not conn.wants_input
    outs = conn.complete(1, kv.Applied((None,)))
    assert [type(o).__name__ for o in outs] == ["Send", "Execute"]
    for ticket in (2, 3, 4, 5):
        conn.complete(ticket, kv.Applied((None,)))
    assert conn.wants_input and conn.pending_executes == 0 and conn.parser.buffered_bytes == 0


def test_immediate_replies_never_stall_behind_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "resp_pending_executes_max", 2)
    conn = Connection(1)
    outs = conn.receive(b"PING\r\n" * 10)
    assert outs == [Send(b"+PONG\r\n")] * 10
    outs = conn.receive(b"GET a\r\n" + b"PING\r\n" * 3)
    assert [type(o).__name__ for o in outs] == ["Execute"] and not conn.wants_input
    outs = conn.complete(outs[0].ticket, kv.Applied((None,)))  # type: ignore[union-attr]
    assert outs == [Send(b"$-1\r\n")] + [Send(b"+PONG\r\n")] * 3


def test_protocol_error_replies_then_closes_after_earlier_replies() -> None:
    conn = Connection(1)
    outs = conn.receive(encode_request([b"GET", b"a"]) + b"*1\r\n+x\r\n")
    assert [type(o).__name__ for o in outs] == ["Execute"]
    assert isinstance(outs[0], Execute)
    outs = conn.complete(outs[0].ticket, kv.Applied((b"v",)))
    assert outs[0] == Send(b"$1\r\nv\r\n")
    assert outs[1] == Send(b"-ERR Protocol error: expected '$', got '+'\r\n")
    assert isinstance(outs[2], Close) and outs[2].protocol_error
    assert conn.closed and not conn.wants_input and conn.receive(b"PING\r\n") == []


def test_oversized_request_is_refused_at_the_limit() -> None:
    small = RequestParser(bulk_bytes_max=10, request_bytes_max=100, inline_bytes_max=50)
    conn = Connection(1, parser=small)
    outs = conn.receive(encode_request([b"SET", b"k", b"v" * 11]))
    assert isinstance(outs[0], Send)
    assert outs[0].data.startswith(b"-ERR Protocol error: invalid bulk length 11 (over ")
    assert isinstance(outs[1], Close) and outs[1].protocol_error


def test_wrong_arity_and_unknown_commands_keep_the_connection() -> None:
    client = LocalServer().connect()
    assert client.call("GET") == ErrorReply("ERR wrong number of arguments for 'get' command")
    assert client.call("LPUSH", "x", "y").text.startswith("ERR unknown command 'LPUSH'")
    assert client.call("SET", "k", "v") == SimpleString("OK")
    assert client.closed is None


def test_auth_and_hello() -> None:
    server = LocalServer(config=ConnectionConfig(password="pw"))
    c = server.connect()
    assert c.call("GET", "k") == ErrorReply("NOAUTH Authentication required.")
    assert c.call("HELLO", "3").text.startswith("NOAUTH HELLO must be called")
    assert c.call("AUTH", "bad").text.startswith("WRONGPASS")
    assert c.call("AUTH", "pw") == SimpleString("OK")
    assert c.call("GET", "k") is None
    d = server.connect()
    hello = d.call("HELLO", "3", "AUTH", "default", "pw", "SETNAME", "me")
    assert isinstance(hello, MapReply)
    fields = {k: v for k, v in hello.pairs}
    assert fields[b"proto"] == 3 and fields[b"id"] == d.conn.client_id
    assert d.send(encode_request([b"GET", b"k"])) == b"_\r\n"  # RESP3 null
    assert d.call("CLIENT", "GETNAME") == b"me"
    assert d.call("RESET") == SimpleString("RESET")
    assert d.call("GET", "k") == ErrorReply("NOAUTH Authentication required.")
    assert d.call("HELLO", "2", "AUTH", "default", "pw")[5] == 2


def test_quit_replies_then_closes() -> None:
    client = LocalServer().connect()
    assert client.replies(b"PING\r\nQUIT\r\nPING\r\n") == [SimpleString("PONG"),
                                                           SimpleString("OK")]
    assert client.closed == Close("QUIT")


def test_multi_exec_queues_and_aborts_like_redis() -> None:
    c = LocalServer().connect()
    assert c.call("MULTI") == SimpleString("OK")
    assert c.call("SET", "a", "1") == SimpleString("QUEUED")
    assert c.call("PING") == SimpleString("QUEUED")
    assert c.call("INCR", "a") == SimpleString("QUEUED")
    assert c.call("SET", "a", "1", "BAD") == SimpleString("QUEUED")
    assert c.call("MULTI") == ErrorReply("ERR MULTI calls can not be nested")
    assert c.call("WATCH", "a") == ErrorReply("ERR WATCH inside MULTI is not allowed")
    assert c.call("EXEC") == [SimpleString("OK"), SimpleString("PONG"), 2,
                              ErrorReply("ERR syntax error")]
    c.call("MULTI")
    c.call("SET", "a", "5")
    assert c.call("GET").text.startswith("ERR wrong number")
    assert c.call("CLIENT", "ID") == ErrorReply("ERR Command not allowed inside a transaction")
    assert c.call("EXEC").text.startswith("EXECABORT")
    assert c.call("GET", "a") == b"2"


def test_unwatch_inside_multi_is_queued_and_the_watch_still_holds() -> None:
    server = LocalServer()
    a, b = server.connect(), server.connect()
    a.call("WATCH", "k")
    a.call("MULTI")
    assert a.call("UNWATCH") == SimpleString("QUEUED")
    b.call("SET", "k", "1")
    a.call("SET", "k", "2")
    assert a.call("EXEC") is None  # aborted (RESP2 null array reads as None)
    assert a.call("GET", "k") == b"1"


def test_watch_waits_for_its_tokens_and_a_failed_watch_aborts_exec() -> None:
    conn = Connection(1)
    outs = conn.receive(b"WATCH k\r\nMULTI\r\nGET k\r\nEXEC\r\n")
    assert len(outs) == 1 and isinstance(outs[0], Execute)  # later requests wait
    outs = conn.complete(outs[0].ticket, ErrorReply("TRYAGAIN no leader; retry"))  # type: ignore[union-attr]
    assert outs[0] == Send(b"-TRYAGAIN no leader; retry\r\n")
    assert outs[-1] == Send(b"*-1\r\n")  # EXEC refused: the watch was never established
    assert not conn.in_multi


def test_node_errors_are_passed_to_the_client() -> None:
    conn = Connection(1)
    (out,) = conn.receive(b"SET k v\r\n")
    assert isinstance(out, Execute)
    assert conn.complete(out.ticket, ErrorReply("TRYAGAIN no leader")) == [
        Send(b"-TRYAGAIN no leader\r\n")]


def test_connection_commands() -> None:
    c = LocalServer(config=ConnectionConfig(info=lambda: {"keyspace": {"db0": "keys=1"}})).connect()
    assert c.call("SELECT", "0") == SimpleString("OK")
    assert c.call("SELECT", "1") == ErrorReply("ERR DB index is out of range")
    assert c.call("CLIENT", "ID") == c.conn.client_id
    assert c.call("CLIENT", "SETINFO", "LIB-NAME", "redis-py") == SimpleString("OK")
    assert c.call("CLIENT", "SETNAME", "a b").text.startswith("ERR Client names cannot")
    assert c.call("CLIENT", "SETNAME", "n1") == SimpleString("OK")
    assert b"name=n1" in c.call("CLIENT", "INFO")
    assert c.call("COMMAND", "COUNT") == len(SPECS)
    info = c.call("COMMAND", "INFO", "get", "nope")
    assert info[0][:2] == [b"get", 2] and info[1] is None
    assert isinstance(c.call("COMMAND", "DOCS", "get"), list)  # a flat map in RESP2
    assert len(c.call("COMMAND")) == len(SPECS)
    text = c.call("INFO")
    assert b"# Server" in text and b"db0:keys=1" in text
    assert b"# Server" not in c.call("INFO", "keyspace")
    assert c.call("CONFIG", "GET", "save") == [b"save", b""]
    assert c.call("CONFIG", "SET", "x", "y").text.startswith("ERR unknown subcommand")
    assert c.call("EXEC") == ErrorReply("ERR EXEC without MULTI")
    assert c.call("MULTI") == SimpleString("OK") and c.call("EXEC") == []


def test_resp3_exec_abort_is_null() -> None:
    server = LocalServer()
    a, b = server.connect(), server.connect()
    a.call("HELLO", "3")
    a.call("WATCH", "k")
    b.call("SET", "k", "1")
    a.call("MULTI")
    a.call("GET", "k")
    assert a.send(encode_request([b"EXEC"])) == b"_\r\n"

"""RESP codec: reply round trips in both versions, request parsing, limits, fuzzed garbage."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keeldb.codec.resp import (
    NULL_ARRAY,
    BigNumber,
    ErrorReply,
    MapReply,
    Push,
    ReplyReader,
    RequestParser,
    SetReply,
    SimpleString,
    Verbatim,
    encode_reply,
    encode_request,
    parse_int64,
    split_inline,
)
from keeldb.errors import RespProtocolError

line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]),
                    max_size=20)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=40),
    st.floats(allow_nan=False), line_text.map(SimpleString),
    line_text.map(lambda t: ErrorReply("ERR " + t)),
    st.builds(Verbatim, st.sampled_from(["txt", "mkd"]), st.binary(max_size=20)),
    st.integers(-(10**40), 10**40).map(BigNumber),
)
replies = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.lists(st.tuples(inner, inner), max_size=3).map(lambda p: MapReply(tuple(p))),
    st.lists(inner, max_size=4).map(lambda i: SetReply(tuple(i))),
    st.lists(inner, max_size=4).map(lambda i: Push(tuple(i))),
), max_leaves=12)


def read_all(data: bytes, chunk: int = 0) -> list[object]:
    reader = ReplyReader()
    out = []
    pieces = [data] if not chunk else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        reader.feed(piece)
        while True:
            done, value = reader.next_reply()
            if not done:
                break
            out.append(value)
    return out


def as_resp2(value: object) -> object:
    """What a RESP2 reader sees for a reply: RESP3 types in their RESP2 forms."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(value).removesuffix(".0").encode() if math.isfinite(value) else (
            b"inf" if value > 0 else b"-inf")
    if isinstance(value, Verbatim):
        return value.text
    if isinstance(value, BigNumber):
        return b"%d" % value.value
    if isinstance(value, MapReply):
        return [as_resp2(x) for pair in value.pairs for x in pair]
    if isinstance(value, (SetReply, Push)):
        return [as_resp2(x) for x in value.items]
    if isinstance(value, list):
        return [as_resp2(x) for x in value]
    return value


@settings(max_examples=300, deadline=None)
@given(replies, st.integers(0, 7))
def test_resp3_round_trip(value: object, chunk: int) -> None:
    assert read_all(encode_reply(value, 3), chunk) == [value]


@settings(max_examples=300, deadline=None)
@given(replies)
def test_resp2_round_trip_degrades_resp3_types(value: object) -> None:
    assert read_all(encode_reply(value, 2)) == [as_resp2(value)]


def test_exact_encodings() -> None:
    assert encode_reply(SimpleString("OK")) == b"+OK\r\n"
    assert encode_reply(ErrorReply("ERR a\r\nb")) == b"-ERR a  b\r\n"
    assert encode_reply(None, 2) == b"$-1\r\n" and encode_reply(None, 3) == b"_\r\n"
    assert encode_reply(NULL_ARRAY, 2) == b"*-1\r\n" and encode_reply(NULL_ARRAY, 3) == b"_\r\n"
    assert encode_reply(True, 3) == b"#t\r\n" and encode_reply(True, 2) == b":1\r\n"
    assert encode_reply(1.5, 3) == b",1.5\r\n" and encode_reply(1.5, 2) == b"$3\r\n1.5\r\n"
    assert encode_reply(float("inf"), 3) == b",inf\r\n"
    assert encode_reply({"a": 1}, 3) == b"%1\r\n$1\r\na\r\n:1\r\n"
    assert encode_reply({"a": 1}, 2) == b"*2\r\n$1\r\na\r\n:1\r\n"
    assert encode_reply(Verbatim("txt", b"hi"), 3) == b"=6\r\ntxt:hi\r\n"
    assert encode_reply(Push((b"x",)), 3) == b">1\r\n$1\r\nx\r\n"
    assert encode_reply(SetReply((1,)), 3) == b"~1\r\n:1\r\n"
    assert encode_reply(BigNumber(-12), 3) == b"(-12\r\n"
    assert read_all(b"|1\r\n+key\r\n+val\r\n:5\r\n!5\r\nERR x\r\n") == [5, ErrorReply("ERR x")]


# --- requests ------------------------------------------------------------------------------------

args_lists = st.lists(st.binary(max_size=50), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(args_lists, min_size=1, max_size=5), st.integers(1, 13))
def test_requests_survive_any_chunking(requests: list[list[bytes]], chunk: int) -> None:
    stream = b"".join(encode_request(r) for r in requests)
    parser = RequestParser()
    got = []
    for i in range(0, len(stream), chunk):
        parser.feed(stream[i:i + chunk])
        while (req := parser.next_request()) is not None:
            got.append(req)
    assert got == requests
    assert parser.buffered_bytes == 0


def parse_all(data: bytes, **kw: int) -> list[list[bytes]]:
    parser = RequestParser(**kw)
    parser.feed(data)
    out = []
    while (req := parser.next_request()) is not None:
        out.append(req)
    return out


def test_inline_commands_split_like_redis() -> None:
    assert parse_all(b"SET k v\r\nGET k\n\r\n   \r\n") == [[b"SET", b"k", b"v"], [b"GET", b"k"]]
    assert split_inline(b'set "a b" \'c d\' "\\x41\\n\\"" \'it\\\'s\'') == [
        b"set", b"a b", b"c d", b"A\n\"", b"it's"]
    assert split_inline(b'a"b c"') == [b"ab c"]
    for bad in (b'set "abc', b"set 'abc", b'set "a"b', b"set 'a'b"):
        with pytest.raises(RespProtocolError, match="unbalanced quotes"):
            split_inline(bad)


def test_empty_multibulk_is_skipped() -> None:
    assert parse_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n") == [[b"PING"]]


@pytest.mark.parametrize("data, message", [
    (b"*abc\r\n", "invalid multibulk length"),
    (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
    (b"*1\r\n$-3\r\n", "invalid bulk length"),
    (b"*1\r\n$x\r\n", "invalid bulk length"),
    (b"*1\r\n$2\r\nabcd\r\n", "expected CRLF"),
    (b"*3000000\r\n", "invalid multibulk length 3000000"),
    (b"*1\r\n$999999999999\r\n", "invalid bulk length 999999999999"),
])
def test_protocol_errors_have_redis_text(data: bytes, message: str) -> None:
    with pytest.raises(RespProtocolError) as info:
        parse_all(data)
    assert info.value.message.startswith("Protocol error: ")
    assert message in info.value.message


def test_limits_are_enforced() -> None:
    small = {"inline_bytes_max": 100, "request_bytes_max": 1000, "bulk_bytes_max": 100}
    with pytest.raises(RespProtocolError, match="too big inline request"):
        parse_all(b"x" * 200, **small)
    with pytest.raises(RespProtocolError, match="too big mbulk count string"):
        parse_all(b"*" + b"1" * 200, **small)
    with pytest.raises(RespProtocolError, match="invalid bulk length 101"):
        parse_all(encode_request([b"a" * 101]), **small)
    with pytest.raises(RespProtocolError, match="resp_request_bytes_max=1000"):
        parse_all(encode_request([b"a" * 90] * 20), **small)
    with pytest.raises(RespProtocolError, match="resp_args_max=3"):
        parse_all(encode_request([b"a"] * 4), args_max=3)
    assert parse_all(encode_request([b"a"] * 3), args_max=3) == [[b"a"] * 3]
    assert parse_all(encode_request([b"a" * 100] * 9), **small) == [[b"a" * 100] * 9]


def test_a_failed_parser_stays_failed() -> None:
    parser = RequestParser()
    parser.feed(b"*1\r\n:1\r\n")
    with pytest.raises(RespProtocolError):
        parser.next_request()
    assert parser.failed
    with pytest.raises(RespProtocolError):
        parser.feed(b"*1\r\n$4\r\nPING\r\n")


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(
    [b"*", b"$", b"\r\n", b"*2\r\n", b"$3\r\n", b"-1", b"\"", b"'", b"\\x", b"%1\r\n", b"|",
     b"=3\r\n", b"_", b"#", b",", b"(", b"~", b">", b"!", b"99999999999999999999"])), max_size=20))
def test_garbage_raises_only_the_protocol_error(pieces: list[bytes]) -> None:
    parser = RequestParser(args_max=64, bulk_bytes_max=256, request_bytes_max=4096,
                           inline_bytes_max=128)
    reader = ReplyReader(bulk_bytes_max=256, aggregate_max=64)
    for target in (parser, reader):
        try:
            for piece in pieces:
                target.feed(piece)
                if isinstance(target, RequestParser):
                    while target.next_request() is not None:
                        pass
                else:
                    while target.next_reply()[0]:
                        pass
        except RespProtocolError as exc:
            assert exc.message.startswith("Protocol error: ")


def test_parse_int64_is_strict() -> None:
    assert [parse_int64(x) for x in (b"0", b"-5", b"9223372036854775807")] == [
        0, -5, 2**63 - 1]
    for bad in (b"", b"-0", b"01", b"+1", b" 1", b"1 ", b"9223372036854775808", b"1e3", b"\xd9\xa1"):
        assert parse_int64(bad) is None

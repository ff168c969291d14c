"""RESP2 and RESP3, the Redis protocol, sans-IO: a request parser, a reply encoder and reader.

Requests arrive as a byte stream and leave `RequestParser` as lists of bytes arguments. Two
request forms exist, as in Redis: multibulk (`*<n>\\r\\n` then n times `$<len>\\r\\n<bytes>\\r\\n`,
what every client library sends) and inline (one line of words, what redis-cli's and telnet's
users type; quotes and escapes follow Redis's `sdssplitargs`). The parser keeps its position
between `feed` calls, so a large value arriving in many chunks is scanned once.

Every defect or limit crossing raises `RespProtocolError` whose message is the Redis error text
("Protocol error: ..."), followed by the value and the limit. After one, the parser stays
failed: the server sends the error reply and closes the connection, as Redis does.

Replies are plain Python values (see `encode_reply`) encoded for the connection's protocol
version: RESP3 types degrade to their RESP2 forms (map -> flat array, double -> bulk string,
boolean -> integer, ...). `ReplyReader` parses every RESP2/RESP3 reply type; clients and tests
use it, and it bounds nesting (`limits.resp_reply_depth_max`) and sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from keeldb import limits
from keeldb.errors import RespProtocolError

CRLF = b"\r\n"
_NEED_MORE = object()


# --- reply values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimpleString:
    """`+OK`: a short status text (no CR or LF)."""

    text: str


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """`-ERR ...`: the full error text, starting with its code (ERR, WRONGTYPE, NOAUTH, ...)."""

    text: str

    @property
    def code(self) -> str:
        return self.text.split(" ", 1)[0]


@dataclass(frozen=True, slots=True)
class Verbatim:
    """RESP3 verbatim string (`=`): a 3-letter format ("txt", "mkd") and the text."""

    fmt: str
    text: bytes


@dataclass(frozen=True, slots=True)
class BigNumber:
    """RESP3 big number (`(`)."""

    value: int


@dataclass(frozen=True, slots=True)
class MapReply:
    """RESP3 map (`%`) as ordered pairs; a `dict` is accepted by the encoder too."""

    pairs: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True, slots=True)
class SetReply:
    """RESP3 set (`~`) in a fixed order, so replies stay deterministic."""

    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Push:
    """RESP3 push (`>`): out-of-band data such as pub/sub messages."""

    items: tuple[Any, ...]


class _NullArray:
    """The RESP2 null array (`*-1`, an aborted EXEC); RESP3 has only one null."""

    _instance: _NullArray | None = None

    def __new__(cls) -> _NullArray:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NULL_ARRAY"


NULL_ARRAY = _NullArray()
OK = SimpleString("OK")
_OK_REPLY = b"+OK\r\n"
QUEUED = SimpleString("QUEUED")

Reply = Any
"""A reply value: None, bool, int, float, bytes, str (sent as bulk), SimpleString, ErrorReply,
Verbatim, BigNumber, list/tuple (array), dict/MapReply (map), SetReply, Push or NULL_ARRAY."""


# --- reply encoder -------------------------------------------------------------------------------


def _line_text(text: str) -> bytes:
    # Status and error lines cannot hold CR/LF; Redis replaces them with spaces too.
    return text.replace("\r", " ").replace("\n", " ").encode()


def format_double(value: float) -> bytes:
    """The textual form of a double in both protocol versions (inf, -inf, nan as Redis)."""
    if math.isnan(value):
        return b"nan"
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    text = repr(value)
    return text[:-2].encode() if text.endswith(".0") else text.encode()


def encode_reply(value: Reply, proto: int = 2) -> bytes:
    """Encode one reply for protocol version 2 or 3."""
    assert proto in (2, 3), f"protocol version {proto} is neither 2 nor 3"
    cls = type(value)  # the common replies first, without building a list
    if cls is SimpleString and value.text == "OK":  # type: ignore[union-attr]
        return _OK_REPLY
    if cls is bytes:
        return b"$%d\r\n%s\r\n" % (len(value), value)  # type: ignore[arg-type]
    out: list[bytes] = []
    _encode(value, proto, out, 0)
    return b"".join(out)


def _encode(value: Reply, proto: int, out: list[bytes], depth: int) -> None:
    assert depth <= limits.resp_reply_depth_max, "reply nested deeper than resp_reply_depth_max"
    if isinstance(value, bytes):
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif value is None:
        out.append(b"_\r\n" if proto == 3 else b"$-1\r\n")
    elif isinstance(value, SimpleString):
        out.append(b"+" + _line_text(value.text) + CRLF)
    elif isinstance(value, bool):  # before int: bool is an int subclass
        out.append((b"#t\r\n" if value else b"#f\r\n") if proto == 3 else b":%d\r\n" % value)
    elif isinstance(value, int):
        out.append(b":%d\r\n" % value)
    elif isinstance(value, ErrorReply):
        out.append(b"-" + _line_text(value.text) + CRLF)
    elif isinstance(value, (list, tuple)):
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode(item, proto, out, depth + 1)
    elif isinstance(value, str):
        _encode(value.encode(), proto, out, depth)
    elif isinstance(value, float):
        text = format_double(value)
        out.append(b"," + text + CRLF if proto == 3 else b"$%d\r\n%s\r\n" % (len(text), text))
    elif isinstance(value, (dict, MapReply)):
        pairs = tuple(value.items()) if isinstance(value, dict) else value.pairs
        n = len(pairs)
        out.append(b"%%%d\r\n" % n if proto == 3 else b"*%d\r\n" % (2 * n))
        for k, v in pairs:
            _encode(k, proto, out, depth + 1)
            _encode(v, proto, out, depth + 1)
    elif isinstance(value, (SetReply, Push)):
        mark = b"~" if isinstance(value, SetReply) else b">"
        out.append((mark if proto == 3 else b"*") + b"%d\r\n" % len(value.items))
        for item in value.items:
            _encode(item, proto, out, depth + 1)
    elif isinstance(value, Verbatim):
        assert len(value.fmt) == 3, f"verbatim format {value.fmt!r} is not 3 characters"
        if proto == 3:
            body = value.fmt.encode() + b":" + value.text
            out.append(b"=%d\r\n%s\r\n" % (len(body), body))
        else:
            _encode(value.text, proto, out, depth)
    elif isinstance(value, BigNumber):
        text = b"%d" % value.value
        out.append(b"(" + text + CRLF if proto == 3 else b"$%d\r\n%s\r\n" % (len(text), text))
    elif value is NULL_ARRAY:
        out.append(b"_\r\n" if proto == 3 else b"*-1\r\n")
    else:
        raise AssertionError(f"cannot encode a reply of type {type(value).__name__}: {value!r}")


# --- request parser ------------------------------------------------------------------------------


def _protocol_error(text: str) -> RespProtocolError:
    return RespProtocolError(f"Protocol error: {text}")


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def parse_int64(raw: bytes) -> int | None:
    """A strict signed 64-bit decimal as Redis's string2ll reads it (no sign '+', no spaces,
    no leading zeros, no "-0"), or None."""
    if raw == b"0":
        return 0
    if not raw or len(raw) > 20:
        return None
    body = raw[1:] if raw[:1] == b"-" else raw
    if not body.isdigit() or not body.isascii() or body[:1] == b"0":
        return None
    value = int(raw)
    return value if INT64_MIN <= value <= INT64_MAX else None


_parse_int = parse_int64


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_SPACE = frozenset(b" \t\n\r\v\f")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command into arguments the way Redis's sdssplitargs does."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0  # 0 none, 1 double, 2 single
        while True:
            if quote == 1:
                if i >= n:
                    raise _protocol_error("unbalanced quotes in request")
                c = line[i]
                if (c == 92 and i + 3 < n and line[i + 1] == ord("x")
                        and line[i + 2] in _HEX and line[i + 3] in _HEX):
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == ord('"'):
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise _protocol_error("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif quote == 2:
                if i >= n:
                    raise _protocol_error("unbalanced quotes in request")
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == ord("'"):
                    i += 1
                    cur.append(ord("'"))
                elif c == ord("'"):
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise _protocol_error("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in _SPACE:
                    break
                if c == ord('"'):
                    quote = 1
                elif c == ord("'"):
                    quote = 2
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


class RequestParser:
    """Turns a byte stream into requests (lists of bytes arguments), incrementally.

    `feed(data)` appends bytes; `next_request()` returns the next complete request or None
    when more bytes are needed. Empty requests (`*0`, blank inline lines) are skipped, as Redis
    does. Any defect raises `RespProtocolError`; the parser then stays failed.
    """

    def __init__(
        self,
        *,
        args_max: int = limits.resp_args_max,
        bulk_bytes_max: int = limits.resp_bulk_bytes_max,
        request_bytes_max: int = limits.resp_request_bytes_max,
        inline_bytes_max: int = limits.resp_inline_bytes_max,
    ) -> None:
        assert 0 < inline_bytes_max <= request_bytes_max
        assert 0 < bulk_bytes_max <= request_bytes_max
        self.args_max = args_max
        self.bulk_bytes_max = bulk_bytes_max
        self.request_bytes_max = request_bytes_max
        self.inline_bytes_max = inline_bytes_max
        self._buf = bytearray()
        self._pos = 0
        self._failed: RespProtocolError | None = None
        # State of a multibulk request in progress.
        self._args: list[bytes] | None = None
        self._args_left = 0
        self._bulk_len = -1  # length of the bulk whose header was read, or -1
        self._request_bytes = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet consumed by a complete request."""
        return len(self._buf) - self._pos

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def feed(self, data: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_request(self) -> list[bytes] | None:
        if self._failed is not None:
            raise self._failed
        try:
            while True:
                if self._args is None:
                    if self._pos >= len(self._buf):
                        return None
                    if self._buf[self._pos] == 42:  # '*'
                        started = self._start_multibulk()
                        if started is None:
                            return None
                        if not started:
                            continue  # an empty request
                    else:
                        inline = self._inline()
                        if inline is None:
                            return None
                        if inline:
                            return inline
                        continue
                request = self._multibulk_args()
                if request is None:
                    return None
                return request
        except RespProtocolError as exc:
            self._failed = exc
            raise

    def _line(self, too_big: str, limit: int) -> bytes | None:
        end = self._buf.find(b"\r\n", self._pos)
        if end < 0:
            if len(self._buf) - self._pos > limit:
                raise _protocol_error(
                    f"{too_big} (over {limit} bytes without CRLF; "
                    "end every header line with \\r\\n)"
                )
            return None
        line = bytes(self._buf[self._pos:end])
        self._pos = end + 2
        self._request_bytes += len(line) + 2
        return line

    def _inline(self) -> list[bytes] | None:
        end = self._buf.find(b"\n", self._pos)
        if end < 0:
            if len(self._buf) - self._pos > self.inline_bytes_max:
                raise _protocol_error(
                    f"too big inline request (over resp_inline_bytes_max={self.inline_bytes_max};"
                    " send large values as multibulk requests)"
                )
            return None
        if end - self._pos > self.inline_bytes_max:
            raise _protocol_error(
                f"too big inline request ({end - self._pos} bytes, over "
                f"resp_inline_bytes_max={self.inline_bytes_max}; send large values as multibulk)"
            )
        line = bytes(self._buf[self._pos:end])
        self._pos = end + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        args = split_inline(line)
        if len(args) > self.args_max:
            raise _protocol_error(
                f"invalid multibulk length {len(args)} (over resp_args_max={self.args_max})"
            )
        return args

    def _start_multibulk(self) -> bool | None:
        """Read `*<n>`; True when a request started, False for an empty one, None for more."""
        self._request_bytes = 0
        line = self._line("too big mbulk count string", self.inline_bytes_max)
        if line is None:
            return None
        count = _parse_int(line[1:])
        if count is None or count > self.args_max:
            detail = f" {line[1:65]!r}" if count is None else (
                f" {count} (over resp_args_max={self.args_max}; send fewer arguments)")
            raise _protocol_error(f"invalid multibulk length{detail}")
        if count <= 0:
            return False
        self._args = []
        self._args_left = count
        self._bulk_len = -1
        return True

    def _multibulk_args(self) -> list[bytes] | None:
        """Read the bulk strings of the request in progress (locals: this is the hot path)."""
        args = self._args
        assert args is not None
        buf, pos, left, size = self._buf, self._pos, self._args_left, self._bulk_len
        n = len(buf)
        try:
            while left:
                if size < 0:
                    if pos >= n:
                        return None
                    if buf[pos] != 36:  # '$'
                        raise _protocol_error(f"expected '$', got '{chr(buf[pos])}'")
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        if n - pos > self.inline_bytes_max:
                            raise _protocol_error(
                                f"too big bulk count string (over {self.inline_bytes_max} "
                                "bytes without CRLF; end every header line with \\r\\n)")
                        return None
                    raw = bytes(buf[pos + 1:end])
                    size = self._bulk_size(raw)
                    self._request_bytes += end + 2 - pos
                    pos = end + 2
                    self._check_request_bytes(size + 2)
                if n - pos < size + 2:
                    return None
                end = pos + size
                if buf[end] != 13 or buf[end + 1] != 10:
                    raise _protocol_error(f"expected CRLF after a bulk string of {size} bytes")
                args.append(bytes(buf[pos:end]))
                pos = end + 2
                self._request_bytes += size + 2
                size = -1
                left -= 1
        finally:
            self._pos, self._args_left, self._bulk_len = pos, left, size
        self._args = None
        return args

    def _bulk_size(self, raw: bytes) -> int:
        if raw.isdigit() and len(raw) < 19 and (raw[0] != 48 or len(raw) == 1):
            size = int(raw)  # the common case, checked as strictly as parse_int64 does
        else:
            parsed = parse_int64(raw)
            if parsed is None or parsed < 0:
                raise _protocol_error(f"invalid bulk length {raw[:64]!r}")
            size = parsed
        if size > self.bulk_bytes_max:
            raise _protocol_error(f"invalid bulk length {size} (over resp_bulk_bytes_max="
                                  f"{self.bulk_bytes_max}; store smaller values)")
        return size

    def _check_request_bytes(self, more: int) -> None:
        total = self._request_bytes + more
        if total > self.request_bytes_max:
            raise _protocol_error(
                f"request of at least {total} bytes is over resp_request_bytes_max="
                f"{self.request_bytes_max}; split it into several commands"
            )


def encode_request(args: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Encode a request as a multibulk array (what a client sends)."""
    out = [b"*%d\r\n" % len(args)]
    out += [b"$%d\r\n%s\r\n" % (len(a), a) for a in args]
    return b"".join(out)


# --- reply reader --------------------------------------------------------------------------------


class ReplyReader:
    """Parses replies of either protocol version from a byte stream (the client side).

    RESP2 null bulk and null array both read as None; RESP3 attributes are read and dropped.
    """

    def __init__(self, *, bulk_bytes_max: int = limits.resp_request_bytes_max,
                 aggregate_max: int = limits.resp_args_max) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.bulk_bytes_max = bulk_bytes_max
        self.aggregate_max = aggregate_max

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_reply(self) -> tuple[bool, Reply]:
        """(True, reply) when one complete reply is buffered, else (False, None)."""
        start = self._pos
        value = self._read(0)
        if value is _NEED_MORE:
            self._pos = start  # re-read the whole reply when more bytes arrived
            return False, None
        return True, value

    def _readline(self) -> bytes | object:
        end = self._buf.find(b"\r\n", self._pos)
        if end < 0:
            if len(self._buf) - self._pos > limits.resp_inline_bytes_max:
                raise _protocol_error("reply line too long")
            return _NEED_MORE
        line = bytes(self._buf[self._pos:end])
        self._pos = end + 2
        return line

    def _int(self, raw: bytes, what: str) -> int:
        value = _parse_int(raw)
        if value is None:
            raise _protocol_error(f"invalid {what} {raw[:64]!r}")
        return value

    def _blob(self, size: int) -> bytes | object:
        if size > self.bulk_bytes_max:
            raise _protocol_error(f"bulk of {size} bytes is over {self.bulk_bytes_max}")
        if len(self._buf) - self._pos < size + 2:
            return _NEED_MORE
        end = self._pos + size
        if self._buf[end:end + 2] != CRLF:
            raise _protocol_error("expected CRLF after a bulk string")
        data = bytes(self._buf[self._pos:end])
        self._pos = end + 2
        return data

    def _read(self, depth: int) -> Reply:
        if depth > limits.resp_reply_depth_max:
            raise _protocol_error(f"reply nested deeper than {limits.resp_reply_depth_max}")
        line = self._readline()
        if line is _NEED_MORE:
            return _NEED_MORE
        assert isinstance(line, bytes)
        if not line:
            raise _protocol_error("empty reply line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return SimpleString(rest.decode(errors="replace"))
        if kind == b"-":
            return ErrorReply(rest.decode(errors="replace"))
        if kind == b":":
            return self._int(rest, "integer")
        if kind in (b"$", b"!", b"="):
            size = self._int(rest, "bulk length")
            if size < 0:
                if kind == b"$" and size == -1:
                    return None
                raise _protocol_error(f"invalid bulk length {size}")
            data = self._blob(size)
            if data is _NEED_MORE or kind == b"$":
                return data
            assert isinstance(data, bytes)
            if kind == b"!":
                return ErrorReply(data.decode(errors="replace"))
            if len(data) < 4 or data[3:4] != b":":
                raise _protocol_error("verbatim string without a 3-letter format")
            return Verbatim(data[:3].decode(errors="replace"), data[4:])
        if kind == b"_":
            if rest:
                raise _protocol_error("null with a payload")
            return None
        if kind == b"#":
            if rest not in (b"t", b"f"):
                raise _protocol_error(f"invalid boolean {rest[:8]!r}")
            return rest == b"t"
        if kind == b",":
            try:
                return float(rest.decode())
            except (UnicodeDecodeError, ValueError):
                raise _protocol_error(f"invalid double {rest[:64]!r}") from None
        if kind == b"(":
            body = rest[1:] if rest[:1] == b"-" else rest
            if not body.isdigit() or len(rest) > 4000:
                raise _protocol_error(f"invalid big number {rest[:64]!r}")
            return BigNumber(int(rest))
        if kind in (b"*", b"~", b">", b"%", b"|"):
            return self._aggregate(kind, rest, depth)
        raise _protocol_error(f"unknown reply type {kind!r}")

    def _aggregate(self, kind: bytes, rest: bytes, depth: int) -> Reply:
        count = self._int(rest, "aggregate length")
        if count < 0:
            if kind == b"*" and count == -1:
                return None
            raise _protocol_error(f"invalid aggregate length {count}")
        if count > self.aggregate_max:
            raise _protocol_error(f"aggregate of {count} items is over {self.aggregate_max}")
        n = count * 2 if kind in (b"%", b"|") else count
        items = []
        for _ in range(n):
            item = self._read(depth + 1)
            if item is _NEED_MORE:
                return _NEED_MORE
            items.append(item)
        if kind == b"*":
            return items
        if kind == b"~":
            return SetReply(tuple(items))
        if kind == b">":
            return Push(tuple(items))
        pairs = tuple(zip(items[0::2], items[1::2], strict=True))
        if kind == b"%":
            return MapReply(pairs)
        return self._read(depth)  # an attribute: drop it, the real reply follows

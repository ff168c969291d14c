"""The Redis command layer, sans-IO: RESP requests in, typed requests and encoded replies out.

`parse_command(args)` turns one request (a list of bytes) into a typed request of
`keeldb.node.kvstate`, with Redis's exact error texts. `Connection` is the state of one client
connection (protocol version, authentication, name, MULTI queue, WATCH tokens) and handles
the connection-level commands itself (PING, ECHO, HELLO, AUTH, SELECT, CLIENT, COMMAND, INFO,
CONFIG GET, QUIT, RESET, MULTI/EXEC/DISCARD/WATCH/UNWATCH); the interactive TXN
commands are decided by `keeldb.server.txn_commands`.

A server drives a `Connection` like this (no I/O here):

    outputs = conn.receive(bytes_from_socket)
    for out in outputs:
        Send(data)        -> write data to the socket
        Execute(t, batch) -> run batch on the node (batch.read_only: ReadIndex read, else
                             propose); then outputs = conn.complete(t, applied_or_error)
        Close(reason)     -> close the socket (after writing every Send before it)

Replies leave in request order even when executes finish out of order; once
`limits.resp_pending_executes_max` requests are read but unanswered, the rest stay buffered
(back-pressure; `wants_input` tells the server to stop reading the socket).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keeldb import limits
from keeldb.codec.resp import (
    NULL_ARRAY,
    OK,
    QUEUED,
    ErrorReply,
    MapReply,
    Reply,
    RequestParser,
    SetReply,
    SimpleString,
    Verbatim,
    encode_reply,
    parse_int64,
)
from keeldb.errors import CommandError, RespProtocolError
from keeldb.node import kvstate as kv
from keeldb.node import kvtxn
from keeldb.server.conn_outputs import Close, Execute, Output, Send
from keeldb.server.txn_commands import REFUSED as _TXN_REFUSED
from keeldb.server.txn_commands import ConnectionTxn, TxnExecute

REDIS_COMPAT_VERSION = "7.0.0"  # the Redis whose command behaviour this layer follows
ERR_SYNTAX = "ERR syntax error"
_I64_MAX = 2**63 - 1


def _err(text: str) -> CommandError:
    return CommandError(text)


def _int(raw: bytes) -> int:
    value = parse_int64(raw)
    if value is None:
        raise _err(kv.ERR_NOT_INTEGER)
    return value


def arity_error(name: str) -> CommandError:
    return _err(f"ERR wrong number of arguments for '{name}' command")


def unknown_command(args: list[bytes]) -> CommandError:
    """Redis's text: the name and the first arguments, 128 characters at most."""
    preview = ""
    for raw in args[1:]:
        if len(preview) >= 128:
            break
        preview += "'" + raw.decode(errors="replace")[: 128 - len(preview)] + "' "
    name = args[0].decode(errors="replace")[:128]
    return _err(f"ERR unknown command '{name}', with args beginning with: {preview}")


# --- data commands -----------------------------------------------------------------------------


def _set_options(name: str, args: list[bytes], start: int, allow: frozenset[str]) -> kv.Set:
    flags: set[str] = set()
    expire: tuple[str, bytes] | None = None
    i = start
    while i < len(args):
        opt = args[i].upper()
        text = opt.decode(errors="replace")
        has_next = i + 1 < len(args)
        if text == "NX" and "XX" not in flags and text in allow:
            flags.add("NX")
        elif text == "XX" and "NX" not in flags and text in allow:
            flags.add("XX")
        elif text == "GET" and text in allow:
            flags.add("GET")
        elif text == "KEEPTTL" and expire is None and text in allow:
            flags.add("KEEPTTL")
        elif (text in ("EX", "PX", "EXAT", "PXAT") and "KEEPTTL" not in flags and has_next
              and (expire is None or expire[0] == text)):
            expire = (text, args[i + 1])
            i += 1
        else:
            raise _err(ERR_SYNTAX)
        i += 1
    mode, ms = kv.EXPIRE_NONE, 0
    if expire is not None:
        unit, raw = expire
        value = _int(raw)
        if value <= 0 or (unit in ("EX", "EXAT") and value > _I64_MAX // 1000):
            raise _err(f"ERR invalid expire time in '{name}' command")
        ms = value * 1000 if unit in ("EX", "EXAT") else value
        mode = kv.EXPIRE_AT_MS if unit.endswith("AT") else kv.EXPIRE_IN_MS
    return kv.Set(args[1], args[2], nx="NX" in flags, xx="XX" in flags, get="GET" in flags,
                  keepttl="KEEPTTL" in flags, expire_mode=mode, expire_ms=ms)


_SET_OPTIONS = frozenset({"NX", "XX", "GET", "KEEPTTL"})


def _p_set(args: list[bytes]) -> kv.Request:
    if len(args) == 3:  # SET key value: no options to parse
        return kv.Set(args[1], args[2])
    return _set_options("set", args, 3, _SET_OPTIONS)


def _p_setex(args: list[bytes], unit: bytes, name: str) -> kv.Request:
    return _set_options(name, [args[0], args[1], args[3], unit, args[2]], 3, frozenset())


def _p_mset(args: list[bytes]) -> kv.Request:
    if len(args) % 2 == 0:
        raise arity_error("mset")
    return kv.MSet(tuple(args[1:]))


def _p_scan(args: list[bytes]) -> kv.Request:
    cursor = kv.decode_cursor(args[1])
    if cursor is None:
        raise _err("ERR invalid cursor")
    match: bytes | None = None
    count = 10
    i = 2
    while i < len(args):
        opt = args[i].upper()
        if i + 1 >= len(args):
            raise _err(ERR_SYNTAX)
        if opt == b"COUNT":
            count = _int(args[i + 1])
            if count < 1:
                raise _err(ERR_SYNTAX)
        elif opt == b"MATCH":
            match = None if args[i + 1] == b"*" else args[i + 1]
        elif opt == b"TYPE":
            if args[i + 1].lower() != b"string":
                match = b"[]"  # a pattern no key matches: only strings exist here
        else:
            raise _err(ERR_SYNTAX)
        i += 2
    return kv.Scan(cursor, match, count)


def _p_expire(args: list[bytes], name: str, seconds: bool, absolute: bool) -> kv.Request:
    when = _int(args[2])
    flags: set[str] = set()
    for raw in args[3:]:
        text = raw.upper().decode(errors="replace")
        if text not in ("NX", "XX", "GT", "LT"):
            raise _err(f"ERR Unsupported option {raw.decode(errors='replace')}")
        flags.add(text)
    if "NX" in flags and flags & {"XX", "GT", "LT"}:
        raise _err("ERR NX and XX, GT or LT options at the same time are not compatible")
    if "GT" in flags and "LT" in flags:
        raise _err("ERR GT and LT options at the same time are not compatible")
    if seconds:
        if not -_I64_MAX // 1000 <= when <= _I64_MAX // 1000:
            raise _err(f"ERR invalid expire time in '{name}' command")
        when *= 1000
    return kv.Expire(args[1], kv.EXPIRE_AT_MS if absolute else kv.EXPIRE_IN_MS, when,
                     nx="NX" in flags, xx="XX" in flags, gt="GT" in flags, lt="LT" in flags,
                     command=name)


Parser = Callable[[list[bytes]], kv.Request]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command: Redis arity (n = exactly n arguments with the name, -n = at least n),
    flags for COMMAND, and the parser (None for connection-level commands)."""

    name: str
    arity: int
    flags: tuple[str, ...]
    group: str
    summary: str
    parse: Parser | None = None
    keys: tuple[int, int, int] = (0, 0, 0)  # first key, last key, step (COMMAND INFO)


def _spec(name: str, arity: int, flags: str, group: str, summary: str,
          parse: Parser | None = None, keys: tuple[int, int, int] = (1, 1, 1)) -> CommandSpec:
    return CommandSpec(name, arity, tuple(flags.split()), group, summary, parse,
                       keys if parse is not None else (0, 0, 0))


_R, _W = "readonly fast", "write"
SPECS: dict[str, CommandSpec] = {s.name: s for s in (
    _spec("get", 2, _R, "string", "Get the value of a key", lambda a: kv.Get(a[1])),
    _spec("set", -3, _W, "string", "Set the string value of a key", _p_set),
    _spec("setex", 4, _W, "string", "Set a value and an expiry in seconds",
          lambda a: _p_setex(a, b"EX", "setex")),
    _spec("psetex", 4, _W, "string", "Set a value and an expiry in milliseconds",
          lambda a: _p_setex(a, b"PX", "psetex")),
    _spec("del", -2, _W, "generic", "Delete keys", lambda a: kv.Del(tuple(a[1:])), (1, -1, 1)),
    _spec("unlink", -2, _W, "generic", "Delete keys (same as DEL here)",
          lambda a: kv.Del(tuple(a[1:])), (1, -1, 1)),
    _spec("exists", -2, _R, "generic", "Count the keys that exist",
          lambda a: kv.Exists(tuple(a[1:])), (1, -1, 1)),
    _spec("mget", -2, _R, "string", "Get the values of keys", lambda a: kv.MGet(tuple(a[1:])),
          (1, -1, 1)),
    _spec("mset", -3, _W, "string", "Set several keys", _p_mset, (1, -1, 2)),
    _spec("incr", 2, _W, "string", "Add one", lambda a: kv.IncrBy(a[1], 1)),
    _spec("decr", 2, _W, "string", "Subtract one", lambda a: kv.IncrBy(a[1], -1)),
    _spec("incrby", 3, _W, "string", "Add an integer", lambda a: kv.IncrBy(a[1], _int(a[2]))),
    _spec("decrby", 3, _W, "string", "Subtract an integer", lambda a: _p_decrby(a)),
    _spec("append", 3, _W, "string", "Append to a value", lambda a: kv.Append(a[1], a[2])),
    _spec("strlen", 2, _R, "string", "Length of a value", lambda a: kv.StrLen(a[1])),
    _spec("getdel", 2, _W, "string", "Get a value and delete its key",
          lambda a: kv.GetDel(a[1])),
    _spec("getset", 3, _W, "string", "Set a value, return the old one",
          lambda a: kv.GetSet(a[1], a[2])),
    _spec("scan", -2, "readonly", "generic", "Iterate over keys", _p_scan, (0, 0, 0)),
    _spec("keys", 2, "readonly", "generic", "Keys matching a pattern",
          lambda a: kv.Keys(a[1]), (0, 0, 0)),
    _spec("dbsize", 1, _R, "server", "Number of keys", lambda a: kv.DbSize(), (0, 0, 0)),
    _spec("ttl", 2, _R, "generic", "Time to live in seconds", lambda a: kv.Ttl(a[1])),
    _spec("pttl", 2, _R, "generic", "Time to live in milliseconds",
          lambda a: kv.Ttl(a[1], ms=True)),
    _spec("expire", -3, _W, "generic", "Set a time to live in seconds",
          lambda a: _p_expire(a, "expire", True, False)),
    _spec("pexpire", -3, _W, "generic", "Set a time to live in milliseconds",
          lambda a: _p_expire(a, "pexpire", False, False)),
    _spec("expireat", -3, _W, "generic", "Set an expiry time in Unix seconds",
          lambda a: _p_expire(a, "expireat", True, True)),
    _spec("pexpireat", -3, _W, "generic", "Set an expiry time in Unix milliseconds",
          lambda a: _p_expire(a, "pexpireat", False, True)),
    _spec("persist", 2, _W, "generic", "Remove a key's expiry", lambda a: kv.Persist(a[1])),
    _spec("ping", -1, "fast", "connection", "Ping the server"),
    _spec("echo", 2, "fast", "connection", "Echo the argument"),
    _spec("hello", -1, "fast no-auth", "connection", "Handshake: protocol version, auth, name"),
    _spec("auth", -2, "fast no-auth", "connection", "Authenticate the connection"),
    _spec("select", 2, "fast", "connection", "Select database 0 (the only one)"),
    _spec("client", -2, "", "connection", "CLIENT SETNAME|GETNAME|ID|INFO|SETINFO"),
    _spec("command", -1, "", "server", "COMMAND, COMMAND COUNT|DOCS|INFO|LIST"),
    _spec("info", -1, "", "server", "Server information"),
    _spec("config", -2, "", "server", "CONFIG GET (read-only)"),
    _spec("quit", -1, "fast no-auth", "connection", "Close the connection"),
    _spec("reset", 1, "fast no-auth", "connection", "Reset the connection state"),
    _spec("multi", 1, "fast", "transactions", "Start a transaction"),
    _spec("exec", 1, "", "transactions", "Execute the queued commands atomically"),
    _spec("discard", 1, "fast", "transactions", "Discard the queued commands"),
    _spec("watch", -2, "fast", "transactions", "Abort the next EXEC if keys change",
          keys=(1, -1, 1)),
    _spec("unwatch", 1, "fast", "transactions", "Forget watched keys"),
    _spec("txn", -2, "", "transactions",
          "TXN BEGIN [ISOLATION level] | COMMIT | ROLLBACK: an interactive transaction"),
    _spec("readonly", 1, "fast", "cluster",
          "Serve this connection's reads from the node's own state (may be stale)"),
    _spec("readwrite", 1, "fast", "cluster", "Linearizable reads again (undo READONLY)"),
)}


# Every name in lower and upper case as bytes (what clients send), for `lookup`.
_SPECS_AS_SENT: dict[bytes, CommandSpec] = {
    form: spec for name, spec in SPECS.items() for form in (name.encode(), name.upper().encode())}


def _p_decrby(args: list[bytes]) -> kv.Request:
    delta = _int(args[2])
    if delta == -(2**63):
        raise _err("ERR decrement would overflow")
    return kv.IncrBy(args[1], -delta)


def lookup(args: list[bytes]) -> CommandSpec:
    """The spec of a request, after Redis's unknown-command and arity checks."""
    assert args, "a request has at least one argument"
    spec = _SPECS_AS_SENT.get(args[0])  # a name as clients send it: no lower/decode
    if spec is None:
        spec = SPECS.get(args[0].lower().decode(errors="replace"))
    if spec is None:
        raise unknown_command(args)
    if (spec.arity > 0 and len(args) != spec.arity) or len(args) < -spec.arity:
        raise arity_error(spec.name)
    return spec


def parse_command(args: list[bytes]) -> kv.Request:
    """A data command as a typed request; `CommandError` carries the Redis error text."""
    spec = lookup(args)
    if spec.parse is None:
        raise _err(f"ERR '{spec.name}' is a connection command, not a data command")
    return spec.parse(args)


# --- the connection ----------------------------------------------------------------------------


DEFERRED: Any = object()  # a handler's "the reply comes later" (EXEC, WATCH) or was queued
InfoProvider = Callable[[], Mapping[str, Mapping[str, object]]]


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    password: str | None = None  # AUTH password of the "default" user; None = no auth
    info: InfoProvider | None = None  # extra INFO sections (keyspace, replication, ...)
    config: Mapping[str, str] = field(default_factory=lambda: {"save": "", "appendonly": "no"})


@dataclass(slots=True)
class _Slot:
    """One reply position in request order: done when `data` is set."""

    data: bytes | None = None
    close: Close | None = None
    proto: int = 2
    kind: str = "plain"  # plain | exec | watch | txn_begin | txn_step | txn_commit
    txn: kvtxn.TxnSession | None = None
    layout: list[Any] | None = None  # exec: queued entries (request index or a ready reply)
    keys: tuple[bytes, ...] = ()


class Connection:
    """One client connection's protocol state (see the module docstring)."""

    def __init__(self, client_id: int, config: ConnectionConfig | None = None,
                 *, peer: str = "", parser: RequestParser | None = None) -> None:
        self.client_id = client_id
        self.config = config or ConnectionConfig()
        self.peer = peer
        self.parser = parser or RequestParser()
        self.proto = 2
        self.name: bytes | None = None
        self.authenticated = self.config.password is None
        self.closed = False
        # READONLY (Redis Cluster): reads of this connection may be answered from the
        # local replica's state without asking the leader (stale); READWRITE undoes it.
        self.readonly = False
        self._multi: list[Any] | None = None  # queued: kv.Request or a ready reply
        self._multi_failed = False
        self._watches: dict[bytes, kv.WatchToken] = {}
        self._watch_failed = False
        self._slots: deque[_Slot] = deque()
        self._tickets: dict[int, _Slot] = {}
        self._next_ticket = 1
        self._blocked = False  # a WATCH is in flight: later requests wait for its tokens
        self._txn = ConnectionTxn()  # TXN BEGIN .. COMMIT|ROLLBACK (keeldb.server.txn_commands)

    @property
    def pending_executes(self) -> int:
        return len(self._tickets)

    @property
    def wants_input(self) -> bool:
        """False while the server should stop reading this socket: closed, waiting on a
        WATCH, at `resp_pending_executes_max`, or a full request already buffered."""
        return not (self.closed or self._blocked
                    or len(self._slots) >= limits.resp_pending_executes_max
                    or self.parser.buffered_bytes >= self.parser.request_bytes_max)

    @property
    def in_multi(self) -> bool:
        return self._multi is not None

    # --- driving -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Output]:
        """Bytes from the client; returns what to do, in order."""
        if self.closed:
            return []
        out: list[Output] = []
        try:
            self.parser.feed(data)
        except RespProtocolError as exc:
            self._protocol_error(exc)
            return self._flush(out)
        return self._process(out)

    def complete(self, ticket: int, result: kv.Applied | ErrorReply) -> list[Output]:
        """The node's answer to an `Execute` (or an error such as "TRYAGAIN ...")."""
        slot = self._tickets.pop(ticket)
        if slot.kind.startswith("txn_"):
            self._blocked = False
            assert slot.txn is not None
            slot.data = encode_reply(self._txn.reply(slot.kind, slot.txn, result), slot.proto)
        elif slot.kind == "watch":
            self._blocked = False
            if isinstance(result, ErrorReply):
                self._watch_failed = True  # EXEC must not run unguarded
            else:
                for key, (version, live) in zip(slot.keys, result.replies[0], strict=True):
                    self._watches.setdefault(key, kv.WatchToken(key, version, bool(live)))
            slot.data = encode_reply(result if isinstance(result, ErrorReply) else OK,
                                     slot.proto)
        elif isinstance(result, ErrorReply):
            slot.data = encode_reply(result, slot.proto)
        elif slot.kind == "exec":
            slot.data = encode_reply(self._exec_reply(slot, result), slot.proto)
        else:
            slot.data = encode_reply(result.replies[0], slot.proto)
        return self._process(self._flush([]))

    def _exec_reply(self, slot: _Slot, result: kv.Applied) -> Reply:
        if result.aborted:
            return NULL_ARRAY
        assert slot.layout is not None
        return [result.replies[item] if isinstance(item, int) else item[0]
                for item in slot.layout]

    def _process(self, out: list[Output]) -> list[Output]:
        while (not self.closed and not self._blocked
               and len(self._slots) < limits.resp_pending_executes_max):
            try:
                args = self.parser.next_request()
            except RespProtocolError as exc:
                self._protocol_error(exc)
                break
            if args is None:
                break
            self._request(args, out)
            self._flush(out)  # so only replies behind an open execute occupy slots
        return self._flush(out)

    def _flush(self, out: list[Output]) -> list[Output]:
        while self._slots and self._slots[0].data is not None:
            slot = self._slots.popleft()
            if slot.data:
                out.append(Send(slot.data))
            if slot.close is not None:
                out.append(slot.close)
                self._slots.clear()
                self.closed = True
        return out

    def _protocol_error(self, exc: RespProtocolError) -> None:
        self._reply(ErrorReply(f"ERR {exc.message}"))
        self._slots[-1].close = Close(exc.message, protocol_error=True)
        self.closed = True  # stop reading; the flush emits the reply then Close

    def _reply(self, value: Reply) -> None:
        self._slots.append(_Slot(data=encode_reply(value, self.proto)))

    def _execute(self, batch: kv.Batch, out: list[Output], slot: _Slot) -> None:
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tickets[ticket] = slot
        self._flush(out)  # replies ready so far go before this execute's reply can
        self._slots.append(slot)
        out.append(Execute(ticket, batch))

    # --- one request --------------------------------------------------------------------------

    def _request(self, args: list[bytes], out: list[Output]) -> None:
        try:
            spec = lookup(args)
        except CommandError as exc:
            if self._multi is not None:
                self._multi_failed = True
            self._reply(ErrorReply(exc.message))
            return
        if not self.authenticated and "no-auth" not in spec.flags:
            self._reply(ErrorReply("NOAUTH Authentication required."))
            return
        if self._txn.active and (spec.parse is not None or spec.name in _TXN_REFUSED):
            reply = self._run_txn(self._txn.step(spec.name, spec.parse, args), out)
            if reply is not DEFERRED:
                self._reply(reply)
            return
        if self._multi is not None and spec.name == "txn":
            self._multi_failed = True
            self._reply(ErrorReply("ERR TXN is not allowed inside MULTI; EXEC or DISCARD first"))
            return
        if self._multi is not None and spec.name not in ("exec", "discard", "multi", "watch",
                                                         "quit", "reset"):
            self._queue(spec, args)
            return
        if spec.parse is not None:
            try:
                request = spec.parse(args)
            except CommandError as exc:
                self._reply(ErrorReply(exc.message))
                return
            self._execute(kv.Batch((request,)), out, _Slot(proto=self.proto))
            return
        handler = getattr(self, "_c_" + spec.name)
        try:
            reply = handler(args, out)
        except CommandError as exc:
            reply = ErrorReply(exc.message)
        if reply is not DEFERRED:
            self._reply(reply)

    def _queue(self, spec: CommandSpec, args: list[bytes]) -> None:
        assert self._multi is not None
        if len(self._multi) >= limits.resp_multi_queued_max:
            self._multi_failed = True
            self._reply(ErrorReply(f"ERR over resp_multi_queued_max={limits.resp_multi_queued_max}"
                                   " commands queued in MULTI; use smaller transactions"))
            return
        if spec.name == "unwatch":  # Redis queues it; at EXEC the watches were checked already
            self._multi.append((OK,))
            self._reply(QUEUED)
            return
        if spec.parse is None and spec.name not in ("ping", "echo", "select"):
            self._multi_failed = True
            self._reply(ErrorReply("ERR Command not allowed inside a transaction"))
            return
        try:
            if spec.parse is not None:
                self._multi.append(spec.parse(args))
            else:
                self._multi.append((getattr(self, "_c_" + spec.name)(args, []),))
        except CommandError as exc:  # runtime errors show in EXEC's reply, as in Redis
            self._multi.append((ErrorReply(exc.message),))
        self._reply(QUEUED)

    # --- transactions -----------------------------------------------------------------------

    def _c_multi(self, args: list[bytes], out: list[Output]) -> Reply:
        if self._multi is not None:
            return ErrorReply("ERR MULTI calls can not be nested")
        self._multi, self._multi_failed = [], False
        return OK

    def _c_discard(self, args: list[bytes], out: list[Output]) -> Reply:
        if self._multi is None:
            return ErrorReply("ERR DISCARD without MULTI")
        self._multi = None
        self._unwatch()
        return OK

    def _c_exec(self, args: list[bytes], out: list[Output]) -> Reply:
        if self._multi is None:
            return ErrorReply("ERR EXEC without MULTI")
        queued, failed, watch_failed = self._multi, self._multi_failed, self._watch_failed
        watches = tuple(self._watches.values())
        self._multi = None
        self._unwatch()
        if failed:
            return ErrorReply("EXECABORT Transaction discarded because of previous errors.")
        if watch_failed:
            return NULL_ARRAY
        requests = [q for q in queued if not isinstance(q, tuple)]
        if not requests and not watches:
            return [q[0] for q in queued]
        layout: list[Any] = []  # per queued command: its request's index, or (reply,)
        index = 0
        for q in queued:
            if isinstance(q, tuple):
                layout.append(q)
            else:
                layout.append(index)
                index += 1
        self._execute(kv.Batch(tuple(requests), watches), out,
                      _Slot(proto=self.proto, kind="exec", layout=layout))
        return DEFERRED

    def _c_watch(self, args: list[bytes], out: list[Output]) -> Reply:
        if self._multi is not None:
            return ErrorReply("ERR WATCH inside MULTI is not allowed")
        keys = tuple(k for k in dict.fromkeys(args[1:]) if k not in self._watches)
        if len(self._watches) + len(keys) > limits.resp_watch_keys_max:
            return ErrorReply(f"ERR over resp_watch_keys_max={limits.resp_watch_keys_max} "
                              "watched keys; watch fewer keys")
        if not keys:
            return OK
        self._blocked = True
        self._execute(kv.Batch((kv.Watch(keys),)), out,
                      _Slot(proto=self.proto, kind="watch", keys=keys))
        return DEFERRED

    def _c_unwatch(self, args: list[bytes], out: list[Output]) -> Reply:
        self._unwatch()
        return OK

    def _unwatch(self) -> None:
        self._watches.clear()
        self._watch_failed = False

    # --- interactive transactions (TXN: keeldb.server.txn_commands) ---------------------------

    @property
    def in_txn(self) -> bool:
        return self._txn.active

    def _c_txn(self, args: list[bytes], out: list[Output]) -> Reply:
        return self._run_txn(self._txn.control(args, readonly=self.readonly), out)

    def _run_txn(self, action: Reply | TxnExecute, out: list[Output]) -> Reply:
        """Execute a TXN request, blocking later commands until its reply (they depend on
        it); a ready reply passes through."""
        if not isinstance(action, TxnExecute):
            return action
        self._blocked = True
        self._execute(action.batch, out,
                      _Slot(proto=self.proto, kind=action.kind, txn=action.session))
        return DEFERRED

    # --- connection commands ------------------------------------------------------------------

    def _c_ping(self, args: list[bytes], out: list[Output]) -> Reply:
        if len(args) > 2:
            raise arity_error("ping")
        return SimpleString("PONG") if len(args) == 1 else args[1]

    def _c_echo(self, args: list[bytes], out: list[Output]) -> Reply:
        return args[1]

    def _c_select(self, args: list[bytes], out: list[Output]) -> Reply:
        if _int(args[1]) != 0:
            raise _err("ERR DB index is out of range")
        return OK

    def _c_quit(self, args: list[bytes], out: list[Output]) -> Reply:
        self._reply(OK)
        self._slots[-1].close = Close("QUIT")
        self.closed = True
        return DEFERRED

    def _c_reset(self, args: list[bytes], out: list[Output]) -> Reply:
        self._multi = None
        self._txn.reset()
        self._unwatch()
        self.proto = 2
        self.name = None
        self.readonly = False
        self.authenticated = self.config.password is None
        return SimpleString("RESET")

    def _c_readonly(self, args: list[bytes], out: list[Output]) -> Reply:
        self.readonly = True
        return OK

    def _c_readwrite(self, args: list[bytes], out: list[Output]) -> Reply:
        self.readonly = False
        return OK

    def _check_password(self, user: bytes, password: bytes) -> bool:
        if self.config.password is None:
            return True
        return user == b"default" and password == self.config.password.encode()

    def _c_auth(self, args: list[bytes], out: list[Output]) -> Reply:
        if len(args) > 3:
            raise _err(ERR_SYNTAX)
        if self.config.password is None and len(args) == 2:
            raise _err("ERR AUTH <password> called without any password configured for the "
                       "default user. Are you sure your configuration is correct?")
        user, password = (b"default", args[1]) if len(args) == 2 else (args[1], args[2])
        if not self._check_password(user, password):
            raise _err("WRONGPASS invalid username-password pair or user is disabled.")
        self.authenticated = True
        return OK

    def _c_hello(self, args: list[bytes], out: list[Output]) -> Reply:
        proto = self.proto
        if len(args) >= 2:
            version = parse_int64(args[1])
            if version is None:
                raise _err("ERR Protocol version is not an integer or out of range")
            if version not in (2, 3):
                raise _err("NOPROTO unsupported protocol version")
            proto = version
        name: bytes | None = None
        authed = self.authenticated
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if opt == b"AUTH" and i + 2 < len(args):
                if not self._check_password(args[i + 1], args[i + 2]):
                    raise _err("WRONGPASS invalid username-password pair or user is disabled.")
                authed = True
                i += 3
            elif opt == b"SETNAME" and i + 1 < len(args):
                name = _check_name(args[i + 1])
                i += 2
            else:
                raise _err(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
        if not authed:
            raise _err("NOAUTH HELLO must be called with the client already authenticated, "
                       "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                       "authenticate the client and select the RESP protocol version at the "
                       "same time")
        self.authenticated, self.proto = True, proto
        if name is not None:
            self.name = name or None
        return MapReply((
            ("server", "keeldb"), ("version", REDIS_COMPAT_VERSION), ("proto", proto),
            ("id", self.client_id), ("mode", "standalone"), ("role", "master"),
            ("modules", []),
        ))

    def _c_client(self, args: list[bytes], out: list[Output]) -> Reply:
        sub = args[1].lower()
        expect = {b"setname": 3, b"getname": 2, b"id": 2, b"info": 2, b"setinfo": 4}
        if sub not in expect:
            raise _err(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. "
                       "Try CLIENT HELP.")
        if len(args) != expect[sub]:
            raise arity_error("client|" + sub.decode())
        if sub == b"setname":
            self.name = _check_name(args[2]) or None
            return OK
        if sub == b"getname":
            return self.name
        if sub == b"id":
            return self.client_id
        if sub == b"setinfo":
            if args[2].lower() not in (b"lib-name", b"lib-ver"):
                raise _err(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
            return OK
        return self.info_line().encode()

    def info_line(self) -> str:
        """The CLIENT INFO line (a subset of Redis's fields)."""
        name = (self.name or b"").decode(errors="replace")
        multi = -1 if self._multi is None else len(self._multi)
        return (f"id={self.client_id} addr={self.peer} name={name} db=0 multi={multi} "
                f"watch={len(self._watches)} resp={self.proto}\n")

    def _c_command(self, args: list[bytes], out: list[Output]) -> Reply:
        if len(args) == 1:
            return [_command_info(s) for s in SPECS.values()]
        sub = args[1].lower()
        if sub == b"count":
            return len(SPECS)
        if sub == b"list":
            return [s.name.encode() for s in SPECS.values()]
        if sub == b"info":
            return [None if (s := SPECS.get(a.lower().decode(errors="replace"))) is None
                    else _command_info(s) for a in args[2:]]
        if sub == b"docs":
            names = [a.lower().decode(errors="replace") for a in args[2:]] or list(SPECS)
            return MapReply(tuple((n, MapReply((("summary", SPECS[n].summary),
                                                 ("since", "1.0.0"),
                                                 ("group", SPECS[n].group))))
                                  for n in names if n in SPECS))
        raise _err(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. "
                   "Try COMMAND HELP.")

    def _c_config(self, args: list[bytes], out: list[Output]) -> Reply:
        if args[1].lower() != b"get":
            raise _err(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. "
                       "Try CONFIG HELP.")
        if len(args) < 3:
            raise arity_error("config|get")
        pairs = [(k, v) for k, v in sorted(self.config.config.items())
                 if any(kv.glob_match(p.lower(), k.encode()) for p in args[2:])]
        return MapReply(tuple(pairs))

    def _c_info(self, args: list[bytes], out: list[Output]) -> Reply:
        sections: dict[str, Mapping[str, object]] = {
            "server": {"redis_version": REDIS_COMPAT_VERSION, "redis_mode": "standalone",
                       "keeldb": "1"},
            "clients": {},
            "replication": {"role": "master"},
            "keyspace": {},
        }
        if self.config.info is not None:
            for name, fields in self.config.info().items():
                sections[name.lower()] = {**sections.get(name.lower(), {}), **fields}
        wanted = {a.lower().decode(errors="replace") for a in args[1:]}
        if wanted & {"all", "everything", "default"}:
            wanted = set()
        lines: list[str] = []
        for name, fields in sections.items():
            if wanted and name not in wanted:
                continue
            lines.append(f"# {name.capitalize()}")
            lines += [f"{k}:{v}" for k, v in fields.items()]
            lines.append("")
        # A verbatim string in RESP3, a bulk string in RESP2 (as Redis).
        return Verbatim("txt", "\r\n".join(lines).encode())


def _check_name(name: bytes) -> bytes:
    if len(name) > limits.resp_client_name_bytes_max:
        raise _err(f"ERR client name of {len(name)} bytes is over resp_client_name_bytes_max="
                   f"{limits.resp_client_name_bytes_max}")
    if any(c < 33 or c > 126 for c in name):
        raise _err("ERR Client names cannot contain spaces, newlines or special characters.")
    return name


def _command_info(spec: CommandSpec) -> list[Reply]:
    first, last, step = spec.keys
    return [spec.name.encode(), spec.arity, SetReply(tuple(SimpleString(f) for f in spec.flags)),
            first, last, step, SetReply((SimpleString("@" + spec.group),)), [], [], []]

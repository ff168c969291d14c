"""A small synchronous RESP client for keeldb servers, with interactive transactions.

    >>> import keeldb
    >>> client = keeldb.connect("127.0.0.1:6380")          # doctest: +SKIP
    >>> client.put(b"k", b"v"); client.get(b"k")           # doctest: +SKIP
    b'v'
    >>> with client.transaction(isolation="serializable") as tx:   # doctest: +SKIP
    ...     tx.put(b"k", tx.get(b"k") + b"!")

A transaction commits when the block ends and rolls back when it raises. Errors are the same
classes as the embedded store's, so `@keeldb.transactional(client)` retries both alike:

    -TXNCONFLICT ...  -> TransactionConflict (retryable: run the transaction again)
    -TXNTOOOLD ...    -> TransactionTooOldError (retryable)
    -TXNTOOLARGE ...  -> TransactionTooLargeError
    -TXNUNKNOWN ...   -> CommitUnknown (never guessed: read the data to learn the outcome);
                         so is a connection lost or timed out after TXN COMMIT was sent
    -TRYAGAIN ...     -> TryAgainError (retryable: nothing happened)
    -CLUSTERDOWN ...  -> CommitUnknown for a write (it may or may not have happened)
    other errors      -> ServerReplyError (the server's text)

A connection error outside a commit raises NodeUnavailableError (retryable); the next call
connects again (an open transaction is lost with the connection: the server drops it).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from keeldb import limits
from keeldb.codec.resp import ErrorReply, Reply, ReplyReader, SimpleString, encode_request
from keeldb.errors import (
    CommitUnknown,
    NodeUnavailableError,
    ServerReplyError,
    TransactionClosedError,
    TransactionConflict,
    TransactionTooLargeError,
    TransactionTooOldError,
    TryAgainError,
    UsageError,
)
from keeldb.node.kvrequests import decode_cursor, encode_cursor
from keeldb.node.kvtxn import LEVELS
from keeldb.txn.local import TransactionScope

SCAN_PAGE = 1_000  # keys one SCAN call of `scan` asks for
_READ_BYTES = 64 * 1024


def parse_address(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    if not (colon and host and port.isdigit() and 0 < int(port) <= 65535):
        raise UsageError(f"address {address!r} is not HOST:PORT; pass e.g. 127.0.0.1:6380")
    return host, int(port)


def error_for(reply: ErrorReply, *, write: bool = False) -> Exception:
    """The exception a client raises for an error reply (`write`: the request may have
    changed data, so an unknown outcome is CommitUnknown)."""
    text = reply.text
    code = text.split(" ", 1)[0]
    if code == "TXNCONFLICT":
        return TransactionConflict(text)
    if code == "TXNTOOOLD":
        return TransactionTooOldError(text)
    if code == "TXNTOOLARGE":
        return TransactionTooLargeError(text)
    if code == "TXNUNKNOWN" or (code == "CLUSTERDOWN" and write):
        return CommitUnknown(text)
    if code in ("TRYAGAIN", "CLUSTERDOWN", "LOADING"):
        return TryAgainError(text)
    return ServerReplyError(text)


class Client:
    """One connection to one keeldb server (not thread-safe: one client per thread)."""

    def __init__(self, host: str, port: int, *, password: str | None = None,
                 timeout_s: float = 10.0) -> None:
        if timeout_s <= 0:
            raise UsageError(f"timeout_s={timeout_s} must be positive (seconds)")
        self.host, self.port = host, port
        self.password = password
        self.timeout_s = timeout_s
        self.sleep = time.sleep  # the backoff port `keeldb.transactional` waits through
        self._sock: socket.socket | None = None
        self._reader = ReplyReader(bulk_bytes_max=limits.txn_client_reply_bytes_max)
        self.generation = 0  # counts connections: a transaction lives in one of them

    # --- the connection --------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise NodeUnavailableError(f"cannot connect to {self.host}:{self.port}: {exc}; "
                                       "is the server running?") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = ReplyReader(bulk_bytes_max=limits.txn_client_reply_bytes_max)
        self.generation += 1
        if self.password is not None:
            self.execute(b"AUTH", self.password.encode())
        return sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, *args: bytes | str | int, write: bool = False) -> Reply:
        """Send one command, return its reply (an ErrorReply is returned, not raised)."""
        raw = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        sock = self._connect()
        try:
            sock.sendall(encode_request(raw))
            while True:
                done, reply = self._reader.next_reply()
                if done:
                    return reply
                data = sock.recv(_READ_BYTES)
                if not data:
                    raise ConnectionError("the server closed the connection")
                self._reader.feed(data)
        except (OSError, ConnectionError) as exc:
            self.close()
            what = f"{self.host}:{self.port} {raw[0].decode(errors='replace')}"
            if write:
                raise CommitUnknown(f"connection to {what} failed after the request was sent "
                                    f"({exc}); its outcome is unknown, read the data") from None
            raise NodeUnavailableError(f"connection to {what} failed: {exc}; retry") from None

    def execute(self, *args: bytes | str | int, write: bool = False) -> Reply:
        """`call`, raising the mapped exception for an error reply."""
        reply = self.call(*args, write=write)
        if isinstance(reply, ErrorReply):
            raise error_for(reply, write=write)
        return reply

    # --- key-value API ---------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        reply = self.execute(b"GET", key)
        assert reply is None or isinstance(reply, bytes), reply
        return reply

    def put(self, key: bytes, value: bytes) -> None:
        self.execute(b"SET", key, value, write=True)

    def delete(self, key: bytes) -> None:
        self.execute(b"DEL", key, write=True)

    def scan(self, start: bytes | None = None, end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Pairs with start <= key < end in key order (at most `limit`). Outside a
        transaction the pages are read one after another, not as one snapshot."""
        return _scan(self, start, end, limit)

    def transaction(self, isolation: str = "serializable") -> ClientTransaction:
        """Begin a transaction on this connection (TXN BEGIN): use it in a `with` block."""
        return ClientTransaction(self, isolation)


def _scan(client: Client, start: bytes | None, end: bytes | None,
          limit: int | None) -> list[tuple[bytes, bytes]]:
    if limit is not None and limit < 0:
        raise UsageError(f"limit={limit} must be >= 0 (or None for no limit)")
    cursor = encode_cursor(start) if start else b"0"
    keys: list[bytes] = []
    while limit is None or len(keys) < limit:
        reply = client.execute(b"SCAN", cursor, b"COUNT", SCAN_PAGE)
        assert isinstance(reply, list) and len(reply) == 2, reply
        cursor, page = reply
        assert isinstance(cursor, bytes) and isinstance(page, list), reply
        stop = decode_cursor(cursor) == b""
        for key in page:
            assert isinstance(key, bytes)
            if end is not None and key >= end:
                stop = True
                break
            keys.append(key)
        if stop:
            break
    keys = keys[:limit] if limit is not None else keys
    if not keys:
        return []
    values = client.execute(b"MGET", *keys)
    assert isinstance(values, list) and len(values) == len(keys), values
    return [(k, v) for k, v in zip(keys, values, strict=True) if isinstance(v, bytes)]


class ClientTransaction(TransactionScope):
    """A TXN on one connection; the same surface (and `with` block) as the embedded
    `Transaction`."""

    def __init__(self, client: Client, isolation: str) -> None:
        if isolation not in LEVELS:
            raise UsageError(f"isolation {isolation!r} is not one of {', '.join(LEVELS)}")
        self.client, self.isolation = client, isolation
        self.state = "active"
        self._generation: int | None = None  # TXN BEGIN goes with the first command

    def begin(self) -> None:
        """Send TXN BEGIN now (by default it goes with the first command)."""
        if self.state != "active":
            raise TransactionClosedError(f"transaction is {self.state}; begin a new one")
        if self._generation is None:
            self.client.execute(b"TXN", b"BEGIN", b"ISOLATION", self.isolation.encode())
            self._generation = self.client.generation

    def _run(self, *args: bytes | str | int) -> Reply:
        self.begin()
        if self.client.generation != self._generation:
            self.state = "aborted"
            raise NodeUnavailableError("the connection of this transaction was lost; run "
                                       "the transaction again")
        try:
            return self.client.execute(*args)
        except (TransactionConflict, TransactionTooOldError, TransactionTooLargeError,
                NodeUnavailableError):
            self.rollback()
            raise

    def get(self, key: bytes) -> bytes | None:
        reply = self._run(b"GET", key)
        assert reply is None or isinstance(reply, bytes), reply
        return reply

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        reply = self._run(b"MGET", *keys)
        assert isinstance(reply, list), reply
        return [v if isinstance(v, bytes) else None for v in reply]

    def put(self, key: bytes, value: bytes) -> None:
        self._run(b"SET", key, value)

    def delete(self, key: bytes) -> None:
        self._run(b"DEL", key)

    def scan(self, start: bytes | None = None, end: bytes | None = None,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        self.begin()
        try:
            return _scan(self.client, start, end, limit)
        except (TransactionConflict, TransactionTooOldError, NodeUnavailableError):
            self.rollback()
            raise

    def commit(self) -> None:
        """TXN COMMIT: TransactionConflict when the level forbids it, CommitUnknown when
        the outcome could not be learned."""
        if self.state != "active":
            raise TransactionClosedError(f"transaction is {self.state}; begin a new one")
        if self._generation is None:
            self.state = "committed"  # nothing was read or written
            return
        if self.client.generation != self._generation:
            self.state = "aborted"
            raise NodeUnavailableError("the connection of this transaction was lost before "
                                       "the commit; run the transaction again")
        self.state = "committing"
        try:
            reply = self.client.execute(b"TXN", b"COMMIT", write=True)
        except BaseException:
            self.state = "aborted"
            raise
        assert reply == SimpleString("OK"), reply
        self.state = "committed"

    def rollback(self) -> None:
        """TXN ROLLBACK (safe to call more than once; a lost connection dropped it anyway)."""
        if self.state not in ("active",):
            return
        self.state = "aborted"
        if self._generation == self.client.generation and self.client._sock is not None:
            try:
                self.client.call(b"TXN", b"ROLLBACK")
            except NodeUnavailableError:
                pass


def connect(address: str, password: str | None = None, timeout_s: float = 10.0) -> Client:
    """A client of the keeldb (or any Redis-protocol) server at "HOST:PORT"; it connects on
    first use."""
    host, port = parse_address(address)
    return Client(host, port, password=password, timeout_s=timeout_s)

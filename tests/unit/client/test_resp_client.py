"""The Python client: error mapping, the key-value API, transactions, `transactional`."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

import keeldb
from keeldb.client import Client, error_for
from keeldb.codec.resp import ErrorReply, RequestParser
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
from keeldb.server.commands import ConnectionConfig
from tests.integration.local_resp_server import LocalRespServer


@pytest.mark.parametrize(("text", "write", "cls"), [
    ("TXNCONFLICT key 'x' changed", False, TransactionConflict),
    ("TXNTOOOLD transaction is 61000 ms old", False, TransactionTooOldError),
    ("TXNTOOLARGE transaction holds", False, TransactionTooLargeError),
    ("TXNUNKNOWN the commit's outcome is unknown", True, CommitUnknown),
    ("CLUSTERDOWN leader lost", True, CommitUnknown),
    ("CLUSTERDOWN leader lost", False, TryAgainError),
    ("TRYAGAIN no leader", True, TryAgainError),
    ("WRONGTYPE Operation against a key", False, ServerReplyError),
])
def test_error_mapping(text: str, write: bool, cls: type[Exception]) -> None:
    exc = error_for(ErrorReply(text), write=write)
    assert type(exc) is cls and str(exc) == text
    assert getattr(exc, "retryable", False) == (cls in (TransactionConflict,
                                                        TransactionTooOldError, TryAgainError))


@pytest.fixture
def server() -> Iterator[LocalRespServer]:
    with LocalRespServer().running() as srv:
        yield srv


def connect(srv: LocalRespServer) -> Client:
    return keeldb.connect(f"127.0.0.1:{srv.port}", timeout_s=5)


def test_key_value_api_and_scan_bounds(server: LocalRespServer) -> None:
    with connect(server) as c:
        for i in range(30):
            c.put(b"k%02d" % i, b"v%d" % i)
        c.delete(b"k05")
        assert c.get(b"k01") == b"v1" and c.get(b"k05") is None
        rows = c.scan(b"k03", b"k08")
        assert [k for k, _ in rows] == [b"k03", b"k04", b"k06", b"k07"]
        assert len(c.scan()) == 29 and c.scan(limit=2) == [(b"k00", b"v0"), (b"k01", b"v1")]


def test_transaction_commits_on_exit_and_rolls_back_on_error(server: LocalRespServer) -> None:
    with connect(server) as c:
        with c.transaction("snapshot") as tx:
            tx.put(b"a", b"1")
            assert tx.get(b"a") == b"1" and tx.scan() == [(b"a", b"1")]
        assert c.get(b"a") == b"1"
        with pytest.raises(RuntimeError), c.transaction() as tx:
            tx.put(b"a", b"2")
            raise RuntimeError("boom")
        assert tx.state == "aborted" and c.get(b"a") == b"1"
        with pytest.raises(TransactionClosedError):
            tx.get(b"a")
        with pytest.raises(UsageError):
            c.transaction("chaos")


def test_conflict_is_transaction_conflict_and_transactional_retries(
        server: LocalRespServer) -> None:
    with connect(server) as a, connect(server) as b:
        a.put(b"n", b"0")
        with pytest.raises(TransactionConflict), a.transaction("snapshot") as tx:
            tx.put(b"n", str(int(tx.get(b"n") or b"0") + 1).encode())
            b.put(b"n", b"10")
        waits: list[float] = []
        attempts = [0]

        @keeldb.transactional(a, isolation="serializable", sleep=waits.append)
        def bump(tx: keeldb.Transaction) -> None:
            attempts[0] += 1
            value = int(tx.get(b"n") or b"0")
            if attempts[0] == 1:
                b.put(b"n", b"100")  # another client wins the first attempt
            tx.put(b"n", str(value + 1).encode())

        bump()
        assert attempts[0] == 2 and len(waits) == 1
        assert a.get(b"n") == b"101"


def test_password() -> None:
    with LocalRespServer(ConnectionConfig(password="s3cret")).running() as srv:
        good = keeldb.connect(f"127.0.0.1:{srv.port}", password="s3cret")
        good.put(b"k", b"v")
        assert good.get(b"k") == b"v"
        good.close()
        with pytest.raises(ServerReplyError, match="NOAUTH"):
            keeldb.connect(f"127.0.0.1:{srv.port}").get(b"k")


def _scripted_server(replies: list[bytes]) -> tuple[int, threading.Thread]:
    """A one-connection server: one canned reply per request, then it closes the socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        parser = RequestParser()
        with conn, listener:
            for reply in replies:
                while parser.next_request() is None:
                    parser.feed(conn.recv(4096))
                conn.sendall(reply)
            conn.recv(4096)  # the commit arrives; close without an answer

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_connection_lost_after_commit_sent_is_commit_unknown() -> None:
    port, thread = _scripted_server([b"+OK\r\n", b"+OK\r\n"])  # TXN BEGIN, SET
    client = keeldb.connect(f"127.0.0.1:{port}", timeout_s=5)
    tx = client.transaction()
    tx.put(b"k", b"v")
    with pytest.raises(CommitUnknown, match="outcome is unknown"):
        tx.commit()
    assert tx.state == "aborted"
    thread.join(5)


def test_unreachable_server_is_retryable_and_addresses_are_checked() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(NodeUnavailableError) as info:
        keeldb.connect(f"127.0.0.1:{port}").get(b"k")
    assert info.value.retryable
    with pytest.raises(UsageError, match="HOST:PORT"):
        keeldb.connect("localhost")

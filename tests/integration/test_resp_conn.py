"""The server's client connections (an asyncio Protocol per socket): a client that half-closes
still gets the replies of what it sent; pipelined requests are answered in order."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.integration.serve_process import running


def _send_half_close(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # EOF while the SET is still being fsynced
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_a_half_closed_client_gets_its_pending_replies_then_the_close(tmp_path: Path) -> None:
    with running(tmp_path / "data", "--sync", "always") as srv:
        for i in range(10):
            out = _send_half_close(srv.port, b"SET k%d v%d\r\nGET k%d\r\nPING\r\n" % (i, i, i))
            assert out == b"+OK\r\n$2\r\nv%d\r\n+PONG\r\n" % i, out


def test_a_client_that_sends_nothing_more_after_quit_sees_ok_then_eof(tmp_path: Path) -> None:
    with running(tmp_path / "data") as srv:
        assert _send_half_close(srv.port, b"PING\r\nQUIT\r\nPING\r\n") == b"+PONG\r\n+OK\r\n"

"""The admin port's POST /cluster/<action>: body limits, JSON errors, the action's reply."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from keeldb import limits
from keeldb.server.admin_http import AdminServer, ServerMetrics
from keeldb.server.raft_admin import AdminActionError, parse_addr


async def _post(port: int, raw: bytes) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _request(path: str, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n".encode() + body)


def test_post_routes_to_the_actions_and_refuses_bad_requests() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def actions(action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        seen.append((action, body))
        if action == "boom":
            raise RuntimeError("a bug")
        return 200, {"ok": True, "echo": body}

    async def run() -> None:
        srv = AdminServer(0, ServerMetrics(lambda: None), dict, actions)
        await srv.start()
        plain = AdminServer(0, ServerMetrics(lambda: None), dict)
        await plain.start()
        try:
            code, reply = await _post(srv.port, _request("/cluster/add", b'{"id": "n4"}'))
            assert (code, reply) == (200, {"ok": True, "echo": {"id": "n4"}})
            code, reply = await _post(srv.port, _request("/cluster/add", b"[1]"))
            assert code == 400 and reply["error"] == "bad-request"
            code, reply = await _post(srv.port, _request("/cluster/add", b"{nope"))
            assert code == 400
            big = limits.admin_body_bytes_max + 1
            code, reply = await _post(srv.port, _request("/cluster/add", b"", length=big))
            assert code == 413 and str(limits.admin_body_bytes_max) in reply["message"]
            code, reply = await _post(srv.port, b"POST /cluster/add HTTP/1.1\r\n\r\n")
            assert code == 411
            code, reply = await _post(srv.port, _request("/elsewhere", b"{}"))
            assert code == 404
            code, reply = await _post(srv.port, _request("/cluster/boom", b"{}"))
            assert code == 500 and reply["error"] == "internal"
            code, reply = await _post(plain.port, _request("/cluster/add", b"{}"))
            assert code == 404 and reply["error"] == "not-raft"
        finally:
            await srv.close()
            await plain.close()

    asyncio.run(run())
    assert [a for a, _ in seen] == ["add", "boom"]


def test_addresses_are_checked() -> None:
    assert parse_addr("10.0.0.4:7001") == ("10.0.0.4", 7001)
    for bad in ("n4", "host:", ":80", "h:99999", "h:x"):
        try:
            parse_addr(bad)
        except AdminActionError as exc:
            assert exc.kind == "bad-request" and bad in exc.message
        else:
            raise AssertionError(f"{bad!r} accepted")

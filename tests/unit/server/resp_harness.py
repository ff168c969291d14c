"""A synchronous stand-in for the server: `Connection`s driven against one `KvStateMachine`.

Every `Execute` runs at once: read-only batches through `read()`, the rest through `apply()`
with the next log index. Time comes from `clock` (a fixed, advancing counter by default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keeldb.codec.resp import ReplyReader, encode_request
from keeldb.node.kvstate import KvStateMachine
from keeldb.server.commands import Close, Connection, ConnectionConfig, Execute, Output, Send
from keeldb.storage.memory import MemoryEngine


class LocalServer:
    def __init__(self, *, clock: Callable[[], int] | None = None,
                 config: ConnectionConfig | None = None) -> None:
        self.now_ms = 1_700_000_000_000
        self.clock = clock or (lambda: self.now_ms)
        self.sm = KvStateMachine(MemoryEngine())
        self.index = 0
        self.config = config or ConnectionConfig()
        self.next_id = 1

    def connect(self) -> LocalClient:
        self.next_id += 1
        return LocalClient(self, Connection(self.next_id, self.config, peer="127.0.0.1:1"))

    def run(self, conn: Connection, outputs: list[Output]) -> tuple[bytes, Close | None]:
        data = bytearray()
        close: Close | None = None
        queue = list(outputs)
        while queue:
            out = queue.pop(0)
            if isinstance(out, Send):
                assert close is None, "nothing may be sent after Close"
                data += out.data
            elif isinstance(out, Close):
                close = out
            else:
                assert isinstance(out, Execute)
                queue = self.execute(conn, out) + queue
        return bytes(data), close

    def execute(self, conn: Connection, out: Execute) -> list[Output]:
        now = self.clock()
        if out.batch.read_only:
            result = self.sm.read_batch(out.batch, now_ms=now)
        else:
            self.index += 1
            result = self.sm.apply(out.batch, index=self.index, now_ms=now)
        return conn.complete(out.ticket, result)


class LocalClient:
    def __init__(self, server: LocalServer, conn: Connection) -> None:
        self.server = server
        self.conn = conn
        self.reader = ReplyReader()
        self.closed: Close | None = None

    def send(self, data: bytes) -> bytes:
        raw, close = self.server.run(self.conn, self.conn.receive(data))
        if close is not None:
            self.closed = close
        return raw

    def replies(self, data: bytes) -> list[Any]:
        self.reader.feed(self.send(data))
        out: list[Any] = []
        while True:
            done, value = self.reader.next_reply()
            if not done:
                return out
            out.append(value)

    def call(self, *args: bytes | str | int) -> Any:
        raw = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        (reply,) = self.replies(encode_request(raw))
        return reply

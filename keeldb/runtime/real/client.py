"""A small asyncio client for a real node's client port (frames of `keeldb.codec.message`).

    client = await NodeClient.connect(("127.0.0.1", port))
    answer = await client.call("write", "x", 3, timeout_s=1.0)   # ClientAnswer(type="ok", ...)
    await client.close()

Calls may overlap; replies are matched by id. A call that times out or loses its connection
raises (`TimeoutError`, `NodeUnavailableError`): its outcome is unknown (`info` in a history).
"""

from __future__ import annotations

import asyncio
from typing import Any

from keeldb import limits
from keeldb.codec.frame import FrameDecoder, encode_frame
from keeldb.codec.message import ClientAnswer, ClientCall, parse_answer
from keeldb.errors import FrameError, LimitExceededError, NodeUnavailableError

Address = tuple[str, int]


class NodeClient:
    def __init__(self, addr: Address, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.addr = addr
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[ClientAnswer]] = {}
        self._next_id = 0
        self._error: Exception | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_replies())

    @classmethod
    async def connect(cls, addr: Address, *, timeout_s: float = 5.0) -> NodeClient:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise NodeUnavailableError(f"cannot connect to the node at {addr[0]}:{addr[1]}: "
                                       f"{exc!r}; is it running?") from exc
        return cls(addr, reader, writer)

    async def call(self, f: str, key: Any = None, value: Any = None, *,
                   timeout_s: float = 5.0) -> ClientAnswer:
        if self._error is not None:
            raise NodeUnavailableError(f"connection to {self.addr} is gone: {self._error!r}")
        if len(self._pending) >= limits.client_inflight_per_connection_max:
            raise LimitExceededError(
                f"{len(self._pending)} calls in flight, the limit "
                "limits.client_inflight_per_connection_max; wait for some to finish")
        self._next_id += 1
        cid = self._next_id
        fut: asyncio.Future[ClientAnswer] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            self._writer.write(encode_frame(ClientCall(cid, f, key, value).to_wire()))
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._pending.pop(cid, None)

    async def _read_replies(self) -> None:
        decoder = FrameDecoder()
        error: Exception = ConnectionError("the node closed the connection")
        try:
            while True:
                data = await self._reader.read(64 * 1024)
                if not data:
                    break
                for obj in decoder.feed(data):
                    answer = parse_answer(obj)
                    fut = self._pending.get(answer.id)
                    if fut is not None and not fut.done():
                        fut.set_result(answer)
                if decoder.failed is not None:
                    raise decoder.failed
        except (OSError, ConnectionError, FrameError) as exc:
            error = exc
        self._error = error
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NodeUnavailableError(
                    f"connection to {self.addr} lost before the reply: {error!r}"))

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

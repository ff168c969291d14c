"""A minimal asyncio TCP server that drives `Connection`s against one `KvStateMachine`.

Only for tests: it proves real clients (redis-cli, redis-benchmark, redis-py) work with the
sans-IO command layer unchanged. Time is the wall clock, as a single leader's would be.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from keeldb.node.kvstate import KvStateMachine
from keeldb.server.commands import Close, Connection, ConnectionConfig, Execute, Output, Send
from keeldb.storage.memory import MemoryEngine


class LocalRespServer:
    def __init__(self, config: ConnectionConfig | None = None) -> None:
        self.sm = KvStateMachine(MemoryEngine())
        self.config = config or ConnectionConfig()
        self.index = 0
        self.next_id = 0
        self.port = 0

    def _run(self, conn: Connection, outputs: list[Output], writer: asyncio.StreamWriter) -> bool:
        queue = list(outputs)
        while queue:
            out = queue.pop(0)
            if isinstance(out, Send):
                writer.write(out.data)
            elif isinstance(out, Close):
                return False
            else:
                assert isinstance(out, Execute)
                now = int(time.time() * 1000)
                if out.batch.read_only:
                    result = self.sm.read_batch(out.batch, now_ms=now)
                else:
                    self.index += 1
                    result = self.sm.apply(out.batch, index=self.index, now_ms=now)
                queue = conn.complete(out.ticket, result) + queue
        return True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.next_id += 1
        host, port = writer.get_extra_info("peername")[:2]
        conn = Connection(self.next_id, self.config, peer=f"{host}:{port}")
        try:
            while True:
                data = await reader.read(65536)
                if not data or not self._run(conn, conn.receive(data), writer):
                    break
                await writer.drain()
            await writer.drain()
        finally:
            writer.close()

    @contextmanager
    def running(self) -> Iterator[LocalRespServer]:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        holder: dict[str, asyncio.AbstractServer] = {}

        async def start() -> None:
            server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            holder["server"] = server
            self.port = server.sockets[0].getsockname()[1]
            started.set()

        thread = threading.Thread(target=lambda: (loop.run_until_complete(start()),
                                                  loop.run_forever()), daemon=True)
        thread.start()
        assert started.wait(10), "test server did not start"
        try:
            yield self
        finally:
            async def stop() -> None:
                holder["server"].close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()  # clients still connected
                await holder["server"].wait_closed()

            asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

"""A tiny Redis-protocol KV server over PySyncObj, the Python Raft peer of `keeldb bench cluster`.

    python -m keeldb.bench.syncobj_kv --self 127.0.0.1:7001 \
        --partners 127.0.0.1:7002,127.0.0.1:7003 --port 6401

A dict replicated with PySyncObj's `@replicated` `set` (its defaults: in-memory log, no
journal file, no fsync; only the tick period is shortened, see TICK_MS_DEFAULT). It answers PING, SET key value (after PySyncObj commits and applies
it), GET key (local), and INFO (`role:leader|follower`, so the bench can find the leader).
It is a benchmark peer, not a product: no expiry, no options, no auth.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any, cast

from pysyncobj import SyncObj, SyncObjConf, replicated

REQUEST_BYTES_MAX = 1024 * 1024  # one connection's unparsed input
# PySyncObj's tick thread waits up to autoTickPeriod (default 50 ms) in poll() and is not
# woken by a command from another thread, so with the default a lone client waits ~50-100 ms
# per SET. 1 ms lets it show its best latency (at the cost of a busy tick thread).
TICK_MS_DEFAULT = 1.0


class ReplicatedKV(SyncObj):  # type: ignore[misc]
    def __init__(self, self_addr: str, partners: list[str], tick_s: float) -> None:
        super().__init__(self_addr, partners, conf=SyncObjConf(
            dynamicMembershipChange=False, autoTickPeriod=tick_s, appendEntriesPeriod=tick_s))
        self._data: dict[bytes, bytes] = {}

    @replicated  # type: ignore[misc]
    def set(self, key: bytes, value: bytes) -> bool:
        self._data[key] = value
        return True

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)


def parse_command(buf: bytearray) -> tuple[list[bytes] | None, int]:
    """(arguments, bytes used) of the first complete RESP array of bulk strings, or (None, 0)."""
    if not buf:
        return None, 0
    if buf[:1] != b"*":
        raise ValueError(f"expected a RESP array, got {bytes(buf[:20])!r}")
    end = buf.find(b"\r\n")
    if end < 0:
        return None, 0
    count, pos, args = int(buf[1:end]), end + 2, []
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None, 0
        if buf[pos:pos + 1] != b"$":
            raise ValueError(f"expected a bulk string at byte {pos}")
        size = int(buf[pos + 1:end])
        start = end + 2
        if len(buf) < start + size + 2:
            return None, 0
        args.append(bytes(buf[start:start + size]))
        pos = start + size + 2
    return args, pos


class _Client(asyncio.Protocol):
    """One connection; replies leave in request order (a SET waits for its commit)."""

    def __init__(self, kv: ReplicatedKV, loop: asyncio.AbstractEventLoop) -> None:
        self.kv, self.loop = kv, loop
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.replies: list[bytes | None] = []  # None: a SET not committed yet
        self.first = 0  # request number of replies[0]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > REQUEST_BYTES_MAX:
            assert self.transport is not None
            self.transport.close()
            return
        while True:
            try:
                args, used = parse_command(self.buf)
            except ValueError as exc:
                self.replies.append(b"-ERR protocol error: " + str(exc).encode() + b"\r\n")
                self._flush()
                assert self.transport is not None
                self.transport.close()
                return
            if args is None:
                break
            del self.buf[:used]
            self._execute(args)
        self._flush()

    def _execute(self, args: list[bytes]) -> None:
        name = args[0].upper() if args else b""
        if name == b"SET" and len(args) == 3:
            slot = self.first + len(self.replies)
            self.replies.append(None)
            self.kv.set(args[1], args[2], callback=lambda res, err, slot=slot:
                        self.loop.call_soon_threadsafe(self._committed, slot, err))
        elif name == b"GET" and len(args) == 2:
            v = self.kv.get(args[1])
            self.replies.append(b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v))
        elif name == b"PING":
            self.replies.append(b"+PONG\r\n")
        elif name == b"INFO":
            role = b"leader" if self.kv._isLeader() else b"follower"
            body = b"# Replication\r\nrole:" + role + b"\r\n"
            self.replies.append(b"$%d\r\n%s\r\n" % (len(body), body))
        else:
            self.replies.append(b"-ERR unknown command or wrong arity\r\n")

    def _committed(self, slot: int, err: Any) -> None:
        i = slot - self.first
        assert 0 <= i < len(self.replies) and self.replies[i] is None, (slot, self.first)
        self.replies[i] = b"+OK\r\n" if err == 0 else b"-TRYAGAIN pysyncobj error %d\r\n" % err
        self._flush()

    def _flush(self) -> None:
        out: list[bytes] = []
        while self.replies and (first := self.replies[0]) is not None:
            out.append(first)
            self.replies.pop(0)
            self.first += 1
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))


async def _serve(self_addr: str, partners: list[str], port: int, tick_s: float) -> None:
    kv = ReplicatedKV(self_addr, partners, tick_s)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: _Client(kv, loop), "127.0.0.1", port)
    print(f"syncobj-kv serving 127.0.0.1:{port} raft={self_addr}", flush=True)
    await stop.wait()
    server.close()
    kv.destroy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--self", dest="self_addr", required=True)
    ap.add_argument("--partners", default="")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tick-ms", type=float, default=TICK_MS_DEFAULT)
    a = ap.parse_args()
    partners = [p for p in a.partners.split(",") if p]
    asyncio.run(_serve(a.self_addr, partners, a.port, a.tick_ms / 1000))


if __name__ == "__main__":
    main()

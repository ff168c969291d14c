"""The asyncio TCP transport on real loopback sockets (ports picked by binding to port 0).

Every wait is a bounded poll on a condition, never a sleep-and-assert on wall time.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from keeldb import limits
from keeldb.codec.frame import FRAME_VERSION, encode_frame
from keeldb.errors import ConfigError, FrameTooLargeError, LimitExceededError
from keeldb.runtime.real.transport import LinkFaults, Transport, backoff_ms
from keeldb.types import NodeId

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")
LOOP = "127.0.0.1"
WAIT_S = 10.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


async def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOP, 0))
        port = s.getsockname()[1]
        assert isinstance(port, int)
        return port


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[NodeId, Any]] = []

    def __call__(self, src: NodeId, msg: Any) -> None:
        self.got.append((src, msg))

    def msgs(self, src: NodeId) -> list[Any]:
        return [m for s, m in self.got if s == src]


async def pair(**kw: Any) -> tuple[Transport, Transport, Inbox, Inbox]:
    """Two started transports a <-> b on fresh ports."""
    ia, ib = Inbox(), Inbox()
    pa, pb = free_port(), free_port()
    addrs = {A: (LOOP, pa), B: (LOOP, pb)}
    ta = Transport(A, addrs[A], addrs, ia, seed=1, **kw)
    tb = Transport(B, addrs[B], addrs, ib, seed=1, **kw)
    await ta.start()
    await tb.start()
    return ta, tb, ia, ib


async def closing(*ts: Transport) -> None:
    for t in ts:
        await t.close()


def test_in_order_delivery_both_ways() -> None:
    async def main() -> None:
        ta, tb, ia, ib = await pair()
        try:
            n = 2000
            for i in range(n):
                assert ta.send(B, {"seq": i, "blob": b"x" * (i % 300)})
                assert tb.send(A, ["back", i])
            await wait_until(lambda: len(ib.got) == n and len(ia.got) == n, "all frames")
            assert [m["seq"] for m in ib.msgs(A)] == list(range(n))
            assert ia.msgs(B) == [["back", i] for i in range(n)]
            assert ta.stats.sent == n and tb.stats.received == n
            assert ta.stats.dropped_overflow == 0 and tb.stats.bad_frames == 0
            assert ta.status()["connected"] == [B]
        finally:
            await closing(ta, tb)

    run(main())


def test_survives_peer_restart() -> None:
    async def main() -> None:
        ta, tb, _, ib = await pair()
        addr_b = (LOOP, tb.port)
        try:
            ta.send(B, "before")
            await wait_until(lambda: ib.msgs(A) == ["before"], "first frame")
            await tb.close()
            # a notices the EOF on its outbound link without having to send.
            await wait_until(lambda: ta.status()["connected"] == [], "a to notice b is gone")
            for i in range(50):
                assert ta.send(B, i)  # queued while b is down
            ib2 = Inbox()
            tb2 = Transport(B, addr_b, {A: (LOOP, ta.port), B: addr_b}, ib2, seed=2)
            await tb2.start()
            try:
                await wait_until(lambda: len(ib2.got) == 50, "frames after restart")
                assert ib2.msgs(A) == list(range(50))
                assert ta.stats.reconnects == 1
                assert ta.stats.connects == 2
            finally:
                await tb2.close()
        finally:
            await ta.close()

    run(main())


def test_queue_overflow_drops_and_counts() -> None:
    async def main() -> None:
        ib = Inbox()
        pa, pb = free_port(), free_port()
        addrs = {A: (LOOP, pa), B: (LOOP, pb)}
        ta = Transport(A, addrs[A], addrs, Inbox(), send_queue_frames_max=10)
        await ta.start()
        tb = Transport(B, addrs[B], addrs, ib)
        try:
            # b is not listening: nothing can leave a's queue.
            results = [ta.send(B, i) for i in range(25)]
            assert results == [True] * 10 + [False] * 15
            assert ta.stats.dropped_overflow == 15
            assert ta.queued(B) == 10
            await tb.start()
            await wait_until(lambda: len(ib.got) == 10, "the queued frames")
            assert ib.msgs(A) == list(range(10))
            assert ta.queued(B) == 0
        finally:
            await closing(ta, tb)

    run(main())


async def raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOOP, port)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), WAIT_S) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # wrong magic
    struct.pack(">2sBBII", b"KF", FRAME_VERSION, 0, limits.frame_bytes_max, 0),  # too large
    struct.pack(">2sBBII", b"KF", FRAME_VERSION + 7, 0, 1, 0) + b"\x01",  # unknown version
])
def test_bad_frames_close_that_connection_only(garbage: bytes) -> None:
    async def main() -> None:
        ta, tb, _, ib = await pair()
        try:
            ta.send(B, "one")
            await wait_until(lambda: ib.msgs(A) == ["one"], "first frame")
            reader, writer = await raw_connect(tb.port)
            writer.write(encode_frame({"keeldb-hello": "a"}) + garbage)
            await writer.drain()
            assert await closed_by_peer(reader)
            writer.close()
            await wait_until(lambda: tb.stats.bad_frames == 1, "bad frame counted")
            ta.send(B, "two")  # the good link was never touched
            await wait_until(lambda: ib.msgs(A) == ["one", "two"], "frame after garbage")
            assert ta.stats.reconnects == 0
        finally:
            await closing(ta, tb)

    run(main())


def test_corrupt_checksum_and_unknown_sender_are_refused() -> None:
    async def main() -> None:
        ta, tb, _, ib = await pair()
        try:
            frame = bytearray(encode_frame({"keeldb-hello": "a"}))
            frame[-1] ^= 1
            reader, writer = await raw_connect(tb.port)
            writer.write(bytes(frame))
            assert await closed_by_peer(reader)
            writer.close()
            reader, writer = await raw_connect(tb.port)
            writer.write(encode_frame({"keeldb-hello": "mallory"}) + encode_frame("hi"))
            assert await closed_by_peer(reader)
            writer.close()
            await wait_until(lambda: tb.stats.inbound_refused == 1, "unknown sender refused")
            assert tb.stats.bad_frames == 1
            assert ib.got == []
            ta.send(B, "still here")
            await wait_until(lambda: ib.msgs(A) == ["still here"], "good frame")
        finally:
            await closing(ta, tb)

    run(main())


def test_partition_drop_to_drop_from_and_heal() -> None:
    async def main() -> None:
        ta, tb, ia, ib = await pair()
        try:
            ta.set_faults(LinkFaults(drop_to=frozenset({B})))
            assert [ta.send(B, i) for i in range(5)] == [False] * 5
            assert ta.stats.dropped_partition_out == 5
            tb.send(A, "b->a still flows")  # asymmetric: only a->b is cut
            await wait_until(lambda: ia.msgs(B) == ["b->a still flows"], "reverse direction")
            tb.set_faults(LinkFaults(drop_from=frozenset({A})))
            ta.set_faults(LinkFaults())
            for i in range(5):
                assert ta.send(B, i)
            await wait_until(lambda: tb.stats.dropped_partition_in == 5, "inbound drops")
            assert ib.got == []
            tb.set_faults(LinkFaults())  # heal
            ta.send(B, "healed")
            await wait_until(lambda: ib.msgs(A) == ["healed"], "traffic after heal")
            with pytest.raises(ConfigError, match="unknown peer"):
                ta.set_faults(LinkFaults(drop_to=frozenset({C})))
        finally:
            await closing(ta, tb)

    run(main())


def test_delay_holds_frames_in_order_until_heal() -> None:
    async def main() -> None:
        ta, tb, _, ib = await pair()
        try:
            ta.send(B, "warm")
            await wait_until(lambda: ib.msgs(A) == ["warm"], "link up")
            ta.set_faults(LinkFaults(delay_to=frozenset({B}), delay_ms=limits.fault_delay_ms_max))
            for i in range(20):
                ta.send(B, i)
            for _ in range(50):  # let the loop run; a minute-long delay keeps them queued
                await asyncio.sleep(0)
            assert ta.queued(B) == 20 and ib.msgs(A) == ["warm"]
            ta.set_faults(LinkFaults())
            await wait_until(lambda: len(ib.got) == 21, "delayed frames after heal")
            assert ib.msgs(A) == ["warm", *range(20)]
        finally:
            await closing(ta, tb)

    run(main())


def test_oversized_send_is_a_caller_error() -> None:
    async def main() -> None:
        ta, tb, _, _ = await pair(frame_bytes_max=4096)
        try:
            with pytest.raises(FrameTooLargeError, match="frame_bytes_max=4096"):
                ta.send(B, b"x" * 5000)
        finally:
            await closing(ta, tb)

    run(main())


def test_backoff_is_bounded_jittered_and_seeded() -> None:
    r1, r2 = random.Random("s"), random.Random("s")
    seq1 = [backoff_ms(i, r1) for i in range(1, 40)]
    assert seq1 == [backoff_ms(i, r2) for i in range(1, 40)]
    lo, hi = limits.reconnect_backoff_ms_min, limits.reconnect_backoff_ms_max
    assert all(lo / 2 <= d <= hi for d in seq1)
    assert max(seq1[-10:]) > hi / 2  # it grew to the cap
    assert len(set(seq1)) == len(seq1)  # jittered
    with pytest.raises(ConfigError):
        Transport(A, (LOOP, 0), {}, Inbox(), send_queue_frames_max=0)



def test_add_peer_dials_a_new_member_and_remove_peer_forgets_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        ta, tb, ia, _ = await pair()
        ic = Inbox()
        pc = free_port()
        addrs = {A: (LOOP, ta.port), B: (LOOP, tb.port), C: (LOOP, pc)}
        tc = Transport(C, addrs[C], addrs, ic, seed=3)
        await tc.start()
        try:
            assert ta.peers == (B,)
            assert ta.add_peer(C, (LOOP, pc)) is True
            assert ta.add_peer(C, (LOOP, pc)) is False  # already known there
            assert ta.add_peer(A, (LOOP, 1)) is False  # itself
            assert ta.peers == (B, C)
            assert ta.send(C, "to c")
            assert tc.send(A, "to a")  # a accepts c's hello now that it knows c
            await wait_until(lambda: ic.msgs(A) == ["to c"] and ia.msgs(C) == ["to a"],
                             "frames both ways with the added peer")
            assert ta.remove_peer(C) is True
            assert ta.remove_peer(C) is False
            assert ta.peers == (B,)
            await wait_until(lambda: C not in ta.status()["connected"], "link to c closed")
            # a bounded peer set: one more than the limit is refused
            monkeypatch.setattr(limits, "transport_peers_max", 1)
            with pytest.raises(LimitExceededError, match="transport_peers_max"):
                ta.add_peer(C, (LOOP, pc))
            assert ta.peers == (B,)
        finally:
            await closing(ta, tb, tc)

    run(main())


def test_inbound_delay_holds_frames_in_order_until_heal() -> None:
    async def main() -> None:
        ta, tb, _, ib = await pair()
        try:
            ta.send(B, "warm")
            await wait_until(lambda: ib.msgs(A) == ["warm"], "link up")
            tb.set_faults(LinkFaults(delay_from=frozenset({A}), delay_ms=limits.fault_delay_ms_max))
            for i in range(20):
                ta.send(B, i)
            await wait_until(lambda: tb.stats.received == 1 and ta.stats.sent == 21, "sent")
            for _ in range(50):  # arrived, but held by the receiver for a long delay
                await asyncio.sleep(0.001)
            assert ib.msgs(A) == ["warm"]
            tb.set_faults(LinkFaults())
            await wait_until(lambda: len(ib.got) == 21, "held frames after heal")
            assert ib.msgs(A) == ["warm", *range(20)]
        finally:
            await closing(ta, tb)

    run(main())

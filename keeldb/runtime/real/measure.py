"""Measure the real runtime on this machine (the figures of docs/runtime-real.md):

    python -m keeldb.runtime.real.measure [--seconds 3]

1. transport one way: two `Transport`s in one event loop, ~120-byte frames, the sender kept
   below its queue bound (so nothing is dropped);
2. transport ping-pong round trips;
3. the `echo` system as 3 processes: messages delivered per second (admin `received` counters);
4. the `register` system as a process: fsynced writes per second with 1 and 16 clients.

Numbers depend on the machine's load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from keeldb.runtime.real.client import NodeClient
from keeldb.runtime.real.launch import LOOPBACK, NodeProcess, free_port, local_cluster
from keeldb.runtime.real.transport import Transport
from keeldb.types import NodeId

A, B = NodeId("a"), NodeId("b")
ONE_WAY_FRAMES = 200_000
PING_PONGS = 3_000
SENDER_QUEUE_HIGH = 5_000


def _pct(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] / 1000


async def transport_figures() -> dict[str, float]:
    got = [0]
    pongs: asyncio.Queue[Any] = asyncio.Queue()
    addrs = {A: (LOOPBACK, free_port()), B: (LOOPBACK, free_port())}

    def on_b(src: NodeId, msg: Any) -> None:
        got[0] += 1
        if isinstance(msg, list):
            tb.send(A, msg)

    ta = Transport(A, addrs[A], addrs, lambda s, m: pongs.put_nowait(m))
    tb = Transport(B, addrs[B], addrs, on_b)
    await ta.start()
    await tb.start()
    try:
        t0 = time.perf_counter()
        sent = 0
        while sent < ONE_WAY_FRAMES:
            while sent < ONE_WAY_FRAMES and ta.queued(B) < SENDER_QUEUE_HIGH:
                ta.send(B, {"k": sent, "v": b"x" * 100})
                sent += 1
            await asyncio.sleep(0)
        while got[0] < ONE_WAY_FRAMES:
            await asyncio.sleep(0.001)
        one_way = ONE_WAY_FRAMES / (time.perf_counter() - t0)
        rtts: list[int] = []
        for i in range(PING_PONGS):
            t = time.perf_counter_ns()
            ta.send(B, [i])
            await pongs.get()
            rtts.append(time.perf_counter_ns() - t)
        rtts.sort()
        return {"one_way_frames_per_s": one_way, "rtt_p50_us": _pct(rtts, 0.5),
                "rtt_p99_us": _pct(rtts, 0.99), "dropped": ta.stats.dropped_overflow}
    finally:
        await ta.close()
        await tb.close()


def echo_figures(base: Path, seconds: float) -> float:
    procs = [NodeProcess(s) for s in local_cluster("echo", ["n1", "n2", "n3"], base / "echo")]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        time.sleep(1.0)  # let every link connect

        def total() -> int:
            return sum(int(p.status()["transport"]["stats"]["received"]) for p in procs)

        before, t0 = total(), time.perf_counter()
        time.sleep(seconds)
        return (total() - before) / (time.perf_counter() - t0)
    finally:
        for p in procs:
            p.kill()


async def _writes(addr: tuple[str, int], clients: int, seconds: float) -> tuple[float, float]:
    lat: list[int] = []
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        client = await NodeClient.connect(addr)
        n = 0
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter_ns()
                answer = await client.call("write", f"k{i}", n)
                assert answer.type == "ok", answer
                lat.append(time.perf_counter_ns() - t)
                n += 1
        finally:
            await client.close()

    await asyncio.gather(*(worker(i) for i in range(clients)))
    lat.sort()
    return len(lat) / seconds, _pct(lat, 0.5) / 1000


def register_figures(base: Path, seconds: float) -> dict[int, tuple[float, float]]:
    (spec,) = local_cluster("register", ["n1"], base / "register")
    proc = NodeProcess(spec)
    try:
        proc.start()
        proc.wait_ready()
        return {c: asyncio.run(_writes(spec.client_addr, c, seconds)) for c in (1, 16)}
    finally:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="window of each process run")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    t = asyncio.run(transport_figures())
    print(f"transport one way: {t['one_way_frames_per_s']:,.0f} frames/s "
          f"({ONE_WAY_FRAMES} frames, dropped {t['dropped']:.0f})")
    print(f"transport ping-pong: RTT p50 {t['rtt_p50_us']:.0f} us, p99 {t['rtt_p99_us']:.0f} us")
    with tempfile.TemporaryDirectory() as tmp:
        rate = echo_figures(Path(tmp), args.seconds)
        print(f"echo, 3 processes: {rate:,.0f} messages/s delivered in total")
        for clients, (ops, p50) in register_figures(Path(tmp), args.seconds).items():
            print(f"register, fsynced writes, {clients} client(s): {ops:,.0f}/s, "
                  f"p50 {p50:.2f} ms")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

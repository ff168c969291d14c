"""raft-kv as three real OS processes on loopback: writes and reads through the client port,
each node SIGKILLed in turn (so the leader certainly is), writes continue, nothing is lost.

Every wait is a bounded poll; every process is killed by PID in teardown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keeldb.errors import NodeUnavailableError
from keeldb.runtime.real.client import NodeClient
from keeldb.runtime.real.launch import NodeProcess, local_cluster

WAIT_S = 20.0
NODES = ["n1", "n2", "n3"]


@pytest.fixture
def procs() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for p in started:
        p.kill()  # SIGKILL by PID, reaped


async def call_until_ok(p: NodeProcess, f: str, key: Any, value: Any = None) -> Any:
    """Retry one operation (a fresh session each time is fine: values are unique) until ok."""
    deadline = time.monotonic() + WAIT_S
    last: Any = None
    while time.monotonic() < deadline:
        try:
            client = await NodeClient.connect(p.spec.client_addr, timeout_s=1.0)
        except NodeUnavailableError as exc:
            last = exc
            await asyncio.sleep(0.05)
            continue
        try:
            answer = await client.call(f, key, value, timeout_s=2.0)
            if answer.type == "ok":
                return answer.value
            last = answer
        except (TimeoutError, NodeUnavailableError) as exc:
            last = exc
        finally:
            await client.close()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{f} {key} on {p.spec.node} never succeeded: {last!r}")


def test_raft_kv_processes_survive_killing_each_node(procs: list[NodeProcess],
                                                      tmp_path: Path) -> None:
    ps = [NodeProcess(spec) for spec in local_cluster("raft-kv", NODES, tmp_path)]
    procs.extend(ps)
    for p in ps:
        p.start()
    for p in ps:
        p.wait_ready()

    async def scenario() -> None:
        await call_until_ok(ps[0], "write", "x", 0)
        assert await call_until_ok(ps[1], "read", "x") == 0
        for round_, victim in enumerate(ps, start=1):
            await asyncio.to_thread(victim.kill)
            survivor = ps[round_ % 3]
            await call_until_ok(survivor, "write", "x", round_)  # a majority is still up
            assert await call_until_ok(ps[(round_ + 1) % 3], "read", "x") == round_
            await asyncio.to_thread(victim.start)
            await asyncio.to_thread(victim.wait_ready)
            # the restarted node recovers from its files and serves linearizable reads
            assert await call_until_ok(victim, "read", "x") == round_

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert all(p.starts == 2 for p in ps)

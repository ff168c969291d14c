"""The reference systems as separate OS processes on loopback, with real faults.

- register: concurrent clients, a SIGKILL and a restart in the middle of the workload; the
  history (keeldb.check.history format) passes "no acknowledged write lost" and
  linearizability, because every acknowledged write was fsynced.
- primary-backup: an admin partition really stops traffic (counters on both sides), the naive
  failover makes two primaries, and the checkers catch the lost write on real processes; after
  heal, traffic flows again; a restarted node is reconnected to; garbage on a peer port closes
  only that connection.

Every wait is a bounded poll; every process is killed by PID in teardown.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keeldb.check.history import Op, dump_jsonl, parse_jsonl
from keeldb.errors import AdminError, NodeUnavailableError, StorageIOError
from keeldb.node.effects import (
    ClientRequest,
    Effect,
    Event,
    Persist,
    Received,
    Reply,
    Send,
    Sync,
)
from keeldb.runtime.real import admin
from keeldb.runtime.real.client import NodeClient
from keeldb.runtime.real.disk import RealDisk, RealFile
from keeldb.runtime.real.host import HostConfig, NodeHost
from keeldb.runtime.real.launch import NodeProcess, free_port, local_cluster
from keeldb.testing.checkers import linearizability, lost_writes
from keeldb.testing.history import HistoryRecorder
from keeldb.testing.workloads import RegisterWorkload
from keeldb.types import NodeId

WAIT_S = 15.0
CALL_TIMEOUT_S = 2.0


@pytest.fixture
def procs() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for p in started:
        p.kill()  # SIGKILL by PID, reaped


def launch(procs: list[NodeProcess], system: str, nodes: list[str], base: Path
           ) -> list[NodeProcess]:
    ps = [NodeProcess(spec) for spec in local_cluster(system, nodes, base)]
    procs.extend(ps)
    for p in ps:
        p.start()
    for p in ps:
        p.wait_ready()
    return ps


def poll(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


# --- a real client workload that records a history -------------------------------------------


class RealClients:
    """Clients of one node's client port, recording every operation in a history."""

    def __init__(self, addr: tuple[str, int], seed: int) -> None:
        self.addr = addr
        self.seed = seed
        self.workload = RegisterWorkload(keys=3)
        self.recorder = HistoryRecorder()
        self.next_process = 0
        self.completed_ok = 0

    def _new_process(self) -> int:
        self.next_process += 1
        return self.next_process - 1

    async def _connect(self) -> NodeClient:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                return await NodeClient.connect(self.addr, timeout_s=1.0)
            except NodeUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def run_client(self, index: int, ops: int) -> None:
        rng = random.Random(f"{self.seed}:client:{index}")
        process = self._new_process()
        client: NodeClient | None = None
        for _ in range(ops):
            if client is None:
                client = await self._connect()
            f, key, value = self.workload.next_op(rng)
            process = await self.one_op(client, process, f, key, value)
            if client._error is not None:  # the node went away: reconnect before the next op
                await client.close()
                client = None
        if client is not None:
            await client.close()

    async def one_op(self, client: NodeClient, process: int, f: str, key: Any, value: Any
                     ) -> int:
        """Invoke, call, complete; returns the process id to use next (new after `info`)."""
        self.recorder.invoke(process, f, key, value, time.monotonic_ns())
        try:
            answer = await client.call(f, key, value, timeout_s=CALL_TIMEOUT_S)
        except (TimeoutError, NodeUnavailableError):
            self.recorder.complete(process, "info", value, time.monotonic_ns())
            return self._new_process()
        result = answer.value if answer.type == "ok" and f == "read" else value
        self.recorder.complete(process, answer.type, result, time.monotonic_ns())
        if answer.type == "ok":
            self.completed_ok += 1
        return self._new_process() if answer.type == "info" else process

    async def final_reads(self) -> list[Any]:
        client = await self._connect()
        values = []
        try:
            for f, key, value in self.workload.final_ops():
                process = self._new_process()
                await self.one_op(client, process, f, key, value)
                values.append(self.recorder.ops[-1])
        finally:
            await client.close()
        return values


def test_register_survives_sigkill_with_a_checked_history(
        procs: list[NodeProcess], tmp_path: Path) -> None:
    (node,) = launch(procs, "register", ["n1"], tmp_path)
    clients = RealClients(node.spec.client_addr, seed=7)

    async def crash_midway() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while clients.completed_ok < 60:
            assert loop.time() < deadline, "workload made no progress before the crash"
            await asyncio.sleep(0.005)
        await asyncio.to_thread(node.kill)  # SIGKILL while clients have ops in flight
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(node.wait_ready)

    async def main() -> list[Op]:
        await asyncio.gather(crash_midway(), *(clients.run_client(i, 60) for i in range(4)))
        return await clients.final_reads()

    finals = asyncio.run(asyncio.wait_for(main(), 60))
    history = clients.recorder.ops
    (tmp_path / "history.jsonl").write_text("".join(dump_jsonl(history)))

    assert node.starts == 2
    assert [op.type for op in finals] == ["ok"] * 3, finals
    kinds = {op.type for op in history}
    assert {"invoke", "ok"} <= kinds
    assert sum(1 for op in history if op.type == "ok" and op.f in ("write", "cas")) > 30
    # The history file is the shared format: it reads back identically.
    assert parse_jsonl((tmp_path / "history.jsonl").read_text()) == history
    assert lost_writes(history) == []
    assert linearizability(history) == []
    status = node.status()
    assert status["driver"]["starts"] == 1 and status["alive"]
    assert status["clients"]["bad_frames"] == 0


def test_register_process_rejects_garbage_clients_and_keeps_serving(
        procs: list[NodeProcess], tmp_path: Path) -> None:
    (node,) = launch(procs, "register", ["n1"], tmp_path)
    with socket.create_connection(node.spec.client_addr, timeout=5) as sock:
        sock.sendall(b"\x00\x01 definitely not a frame \xff" * 4)
        assert sock.recv(100) == b""  # closed by the node

    async def write_read() -> Any:
        client = await NodeClient.connect(node.spec.client_addr)
        try:
            assert (await client.call("write", "k", 41)).type == "ok"
            return (await client.call("read", "k")).value
        finally:
            await client.close()

    assert asyncio.run(write_read()) == 41
    assert node.status()["clients"]["bad_frames"] == 1


# --- primary-backup: partitions on real processes ---------------------------------------------


def peer_stats(p: NodeProcess) -> dict[str, Any]:
    stats: dict[str, Any] = p.status()["transport"]["stats"]
    return stats


def received_from(p: NodeProcess, src: str) -> int:
    return int(peer_stats(p)["per_peer_received"].get(src, 0))


async def call(addr: tuple[str, int], f: str, key: Any = None, value: Any = None
               ) -> tuple[str, Any]:
    client = await NodeClient.connect(addr)
    try:
        answer = await client.call(f, key, value, timeout_s=CALL_TIMEOUT_S)
        return answer.type, answer.value
    finally:
        await client.close()


def recorded(recorder: HistoryRecorder, process: int, addr: tuple[str, int], f: str, key: Any,
             value: Any = None) -> tuple[str, Any]:
    recorder.invoke(process, f, key, value, time.monotonic_ns())
    kind, result = asyncio.run(call(addr, f, key, value))
    recorder.complete(process, kind, result if f == "read" else value, time.monotonic_ns())
    return kind, result


def roles(a: NodeProcess, b: NodeProcess) -> tuple[NodeProcess, NodeProcess] | None:
    """(primary, backup) if exactly one of them serves requests right now."""
    kinds = [asyncio.run(call(p.spec.client_addr, "read", "probe"))[0] for p in (a, b)]
    if kinds == ["ok", "fail"]:
        return a, b
    if kinds == ["fail", "ok"]:
        return b, a
    return None


def settled_roles(a: NodeProcess, b: NodeProcess) -> tuple[NodeProcess, NodeProcess]:
    """Wait for one primary whose heartbeats reach the backup (so nobody fails over)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        assert time.monotonic() < deadline, "no stable primary emerged"
        pair = roles(a, b)
        if pair is None:
            time.sleep(0.01)
            continue
        primary, backup = pair
        heard = received_from(backup, primary.spec.node)
        for _ in range(100):  # ~1 s: heartbeats go every 10 ms
            if received_from(backup, primary.spec.node) >= heard + 5:
                break
            time.sleep(0.01)
        if roles(a, b) == pair and received_from(backup, primary.spec.node) >= heard + 5:
            return pair


def test_primary_backup_partition_stops_traffic_and_loses_a_write(
        procs: list[NodeProcess], tmp_path: Path) -> None:
    n1, n2 = launch(procs, "primary-backup", ["n1", "n2"], tmp_path)
    # Usually n1 leads; if n2 came up before n1's heartbeats reached it, n2 took over.
    primary, backup = settled_roles(n1, n2)
    p_id, b_id = primary.spec.node, backup.spec.node

    def traffic() -> int:
        return received_from(primary, b_id) + received_from(backup, p_id)

    history = HistoryRecorder()
    heard = received_from(backup, p_id)
    assert recorded(history, 0, primary.spec.client_addr, "write", "x", 1)[0] == "ok"
    # Frames on a link arrive in order: heartbeats after the write mean the write arrived.
    poll(lambda: received_from(backup, p_id) >= heard + 3, "the backup to hear the primary")

    # Cut the primary off both ways and watch the counters: it discards what it would send.
    faults = admin.isolate(primary.spec.admin_addr)
    assert faults["drop_to"] == [b_id] and faults["drop_from"] == [b_id]
    poll(lambda: peer_stats(primary)["dropped_partition_out"] >= 5, "dropped heartbeats")
    frozen = received_from(backup, p_id)
    poll(lambda: peer_stats(primary)["dropped_partition_out"] >= 15, "more dropped heartbeats")
    assert received_from(backup, p_id) == frozen, "traffic crossed the partition"

    # The backup hears nothing and promotes itself: two primaries. The old one still
    # acknowledges a write ...
    poll(lambda: asyncio.run(call(backup.spec.client_addr, "read", "x"))[0] == "ok",
         "the backup to promote itself")
    poll(lambda: peer_stats(primary)["dropped_partition_in"] >= 1, "the new primary's beats")
    assert recorded(history, 1, primary.spec.client_addr, "write", "x", 2)[0] == "ok"
    # ... that a later read at the new primary does not see: the checkers must say so.
    kind, seen = recorded(history, 2, backup.spec.client_addr, "read", "x")
    assert (kind, seen) == ("ok", 1)
    lost = lost_writes(history.ops)
    assert lost and lost[0].checker == "lost-write", lost
    assert linearizability(history.ops), "linearizability must flag the stale read"

    # Heal: the old primary hears the new one again and steps down to its higher epoch.
    before = received_from(primary, b_id)
    admin.heal(primary.spec.admin_addr)
    poll(lambda: received_from(primary, b_id) > before + 3, "traffic after heal")
    poll(lambda: asyncio.run(call(primary.spec.client_addr, "read", "x"))[0] == "fail",
         "the old primary to step down")

    # A restarted peer is reconnected to: kill the old primary, bring it back; the new
    # primary redials it and the two talk again.
    primary.kill()
    primary.start()
    primary.wait_ready()
    poll(lambda: peer_stats(backup)["reconnects"] >= 1, "a reconnect to the restarted node")
    after_restart = traffic()
    poll(lambda: traffic() > after_restart + 3, "peer traffic after the restart")

    # Garbage on a peer port closes that connection only: the real links keep carrying
    # heartbeats and the node keeps answering clients.
    with socket.create_connection(("127.0.0.1", backup.spec.peers[b_id][1]), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert s.recv(100) == b""
    assert peer_stats(backup)["bad_frames"] == 1
    after_garbage = traffic()
    poll(lambda: traffic() > after_garbage + 3, "peer traffic after the garbage")
    assert asyncio.run(call(backup.spec.client_addr, "read", "x"))[0] in ("ok", "fail")


def test_admin_port_refuses_bad_commands(procs: list[NodeProcess], tmp_path: Path) -> None:
    (node,) = launch(procs, "register", ["n1"], tmp_path)
    addr = node.spec.admin_addr
    with pytest.raises(AdminError, match="unknown peer"):
        admin.partition(addr, drop_to=["n9"])
    with pytest.raises(AdminError, match="unknown admin op"):
        admin.admin_call(addr, {"op": "explode"})
    with pytest.raises(AdminError, match="delay_ms"):
        admin.admin_call(addr, {"op": "partition", "delay_ms": -1})
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"{not json\n")
        answer = json.loads(s.makefile().readline())
    assert answer["ok"] is False and "not JSON" in answer["error"]
    assert admin.heal(addr)["drop_to"] == []


# --- the driver contract in the real world (two NodeHosts in one event loop) -----------------


EVENTS: list[tuple[str, Any]] = []


class RecordingFile:
    """A file that logs each completed fsync with the bytes it made durable, and fails the
    fsync when the last record is "bad"."""

    def __init__(self, inner: RealFile) -> None:
        self._inner = inner
        self.name = inner.name

    def append(self, data: bytes) -> None:
        self._inner.append(data)

    def read_at(self, offset: int, size: int) -> bytes:
        return self._inner.read_at(offset, size)

    def size(self) -> int:
        return self._inner.size()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def close(self) -> None:
        self._inner.close()

    def sync(self) -> None:
        data = self.read_at(0, self.size())
        if data.endswith(b"bad;"):
            raise StorageIOError(f"injected fsync failure on {self.name}")
        self._inner.sync()
        EVENTS.append(("synced", data))


class RecordingDisk(RealDisk):
    def create(self, name: str) -> RecordingFile:  # type: ignore[override]
        return RecordingFile(super().create(name))

    def open(self, name: str, *, append: bool = False) -> RecordingFile:  # type: ignore[override]
        return RecordingFile(super().open(name, append=append))


class Writer:
    """n1 appends each request's value to its log, syncs, then tells n2 and the client."""

    def __init__(self) -> None:
        self.op = 0

    def step(self, event: Event) -> list[Effect]:
        if isinstance(event, ClientRequest):
            self.op += 2
            return [Persist(self.op - 1, "log", f"{event.value};".encode()),
                    Sync(self.op, "log"),
                    Send(NodeId("n2"), event.value, after=self.op),
                    Reply(event.request_id, "ok", after=self.op)]
        if isinstance(event, Received):
            EVENTS.append(("received", event.msg))
        return []


def test_real_world_sends_and_replies_only_after_the_sync(tmp_path: Path) -> None:
    EVENTS.clear()

    async def main() -> None:
        peers = {NodeId(n): ("127.0.0.1", free_port()) for n in ("n1", "n2")}
        hosts = [NodeHost(HostConfig(n, peers, str(tmp_path / n)), Writer,
                          disk=RecordingDisk(str(tmp_path / n))) for n in peers]
        for h in hosts:
            await h.start()
        try:
            client = await NodeClient.connect(("127.0.0.1", hosts[0].client_port))
            for v in ("a", "b", "c"):
                assert (await client.call("write", "log", v)).type == "ok"
            with pytest.raises(TimeoutError):  # failed fsync: no reply, no message, ever
                await client.call("write", "log", "bad", timeout_s=0.5)
            assert (await client.call("write", "log", "d")).type == "ok"
            await client.close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while ("received", "d") not in EVENTS:
                assert loop.time() < deadline, f"message 'd' never arrived: {EVENTS}"
                await asyncio.sleep(0.005)
            assert hosts[0].driver.stats.held_dropped == 2  # the send and reply of "bad"
        finally:
            for h in hosts:
                await h.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    received = [m for kind, m in EVENTS if kind == "received"]
    assert received == ["a", "b", "c", "d"]  # in order, and never "bad"
    for i, (kind, msg) in enumerate(EVENTS):
        if kind == "received":
            synced_before = [d for k, d in EVENTS[:i] if k == "synced"]
            assert any(f"{msg};".encode() in d for d in synced_before), (
                f"{msg!r} reached n2 before a sync made it durable: {EVENTS[:i + 1]}")


def test_runner_exit_codes(procs: list[NodeProcess], tmp_path: Path) -> None:
    (node,) = launch(procs, "register", ["n1"], tmp_path)
    assert node.terminate() == 0  # SIGTERM: a clean stop
    bad = subprocess.run(
        [sys.executable, "-m", "keeldb.runtime.real.runner", "--system", "no-such-system",
         "--id", "n1", "--peers", "n1=127.0.0.1:0", "--data", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown system 'no-such-system'" in bad.stderr

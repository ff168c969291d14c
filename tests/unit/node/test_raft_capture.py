"""A RaftNode builds its state-machine image off its own thread (`Capture`): the state is
frozen at the captured index, entries keep applying meanwhile, and the files are replaced
only when no Ready waits for its sync."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keeldb.consensus import Role
from keeldb.node import kvstate as kv
from keeldb.node.effects import Apply, CaptureDone, ClientRequest, Reply
from keeldb.node.raft_kv_sm import RaftKvSM
from keeldb.node.raft_log import SNAP_FILE
from keeldb.node.raft_node import RaftNode, RaftNodeConfig
from keeldb.runtime.driver import Driver, IoResult
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.memory import MemoryEngine
from keeldb.testing.raft_kv import KvStateMachine
from keeldb.types import NodeId

N1 = NodeId("n1")
CFG = RaftNodeConfig(snapshot_entries=20, keep_entries=5)


class CapturingSM(KvStateMachine):
    """The test state machine with `capture`: the state is copied now, packed later."""

    captures = 0

    def capture(self) -> Callable[[], bytes]:
        CapturingSM.captures += 1
        frozen = KvStateMachine()
        frozen.state = dict(self.state)
        return frozen.snapshot


class World:
    """Disk ops complete at once unless held; background jobs wait until the test runs
    them; timers fire when the test ticks."""

    def __init__(self) -> None:
        self.the_disk = MemoryDisk()
        self.jobs: list[tuple[Callable[[], Any], Callable[[Any], None]]] = []
        self.held_io: list[tuple[Callable[[], IoResult], Callable[[IoResult], None]]] = []
        self.hold_io = False
        self.timers: list[Callable[[], None]] = []
        self.replies: dict[int, Reply] = {}

    def disk(self, node: NodeId) -> MemoryDisk:
        return self.the_disk

    def now_ns(self, node: NodeId) -> int:
        return 1

    def call_later(self, node: NodeId, delay_ns: int, fn: Callable[[], None]) -> None:
        self.timers.append(fn)

    def submit_io(self, node: NodeId, perform: Callable[[], IoResult],
                  complete: Callable[[IoResult], None]) -> None:
        if self.hold_io:
            self.held_io.append((perform, complete))
        else:
            complete(perform())

    def release_io(self) -> None:
        self.hold_io = False
        while self.held_io:
            perform, complete = self.held_io.pop(0)
            complete(perform())

    def submit_job(self, node: NodeId, perform: Callable[[], Any],
                   complete: Callable[[Any], None]) -> None:
        self.jobs.append((perform, complete))

    def run_jobs(self) -> None:
        while self.jobs:
            perform, complete = self.jobs.pop(0)
            complete(perform())

    def tick(self) -> None:
        fns, self.timers = self.timers, []
        for fn in fns:
            fn()

    def send(self, src: NodeId, dst: NodeId, msg: Any) -> None:
        raise AssertionError("a one-node cluster sends nothing")

    def reply(self, node: NodeId, reply: Reply) -> None:
        self.replies[reply.request_id] = reply

    def applied(self, node: NodeId, apply: Apply) -> None:
        pass

    def halted(self, node: NodeId, reason: str) -> None:
        self.replies[-1] = Reply(-1, "fail", error=reason)


def one_node() -> tuple[Driver, World]:
    world = World()
    driver = Driver(N1, (), lambda: RaftNode(CapturingSM, CFG), world)
    driver.start()
    for _ in range(100):
        world.tick()
        n = driver.node
        if isinstance(n, RaftNode) and n.raft is not None and n.raft.role == Role.LEADER:
            return driver, world
    raise AssertionError("a one-node cluster elected no leader")


def node(driver: Driver) -> RaftNode:
    assert isinstance(driver.node, RaftNode)
    return driver.node


def write(driver: Driver, world: World, rid: int) -> None:
    driver.deliver(ClientRequest(rid, "write", f"k{rid % 7}", rid))


def test_the_image_is_of_the_captured_index_while_later_entries_apply() -> None:
    driver, world = one_node()
    n = node(driver)
    for rid in range(1, 26):
        write(driver, world, rid)
    assert len(world.jobs) == 1, "one capture once snapshot_entries applied"
    (op, index, _), = [n.capturing] if n.capturing else []
    assert n.applied > index  # writes kept applying while the image waits
    before = dict(n.sessions.sm.state)  # type: ignore[attr-defined]
    for rid in range(26, 31):
        write(driver, world, rid)
    assert len(world.jobs) == 1, "one image at a time"
    world.run_jobs()
    st = n.dlog.storage  # type: ignore[union-attr]
    assert st.snapshot().index == index and n.stats.snapshots_taken == 1
    assert st.first_index() == index - CFG.keep_entries + 1
    assert st.last_index() == n.applied > index
    assert all(world.replies[r].type == "ok" for r in range(1, 31))
    expected = dict(n.sessions.sm.state)  # type: ignore[attr-defined]
    assert expected != before
    # Recovery from the files: the snapshot at `index`, then the log after it.
    assert world.the_disk.exists(SNAP_FILE)
    driver.crash()
    driver.start()
    for _ in range(100):
        world.tick()
        if node(driver).applied == 31:
            break
    assert node(driver).sessions.sm.state == expected  # type: ignore[attr-defined]
    assert node(driver).dlog.storage.snapshot().index == index  # type: ignore[union-attr]


def test_a_capture_done_during_a_sync_waits_for_it() -> None:
    driver, world = one_node()
    n = node(driver)
    for rid in range(1, 26):
        write(driver, world, rid)
    world.hold_io = True
    write(driver, world, 26)
    assert n.inflight is not None
    world.run_jobs()
    assert n.captured is not None and n.stats.snapshots_taken == 0  # not over a pending append
    world.release_io()
    assert n.captured is None and n.stats.snapshots_taken == 1
    assert world.replies[26].type == "ok"
    assert n.dlog.storage.last_index() == n.applied  # type: ignore[union-attr]


def test_a_crash_drops_the_capture_and_the_next_incarnation_takes_its_own() -> None:
    driver, world = one_node()
    for rid in range(1, 26):
        write(driver, world, rid)
    assert len(world.jobs) == 1
    driver.crash()
    world.run_jobs()  # the dead incarnation's job: its result is ignored
    driver.start()
    for _ in range(100):
        world.tick()
        if node(driver).applied == 25:
            break
    n = node(driver)
    assert n.stats.snapshots_taken == 0  # the dead incarnation's image was not installed
    # having replayed past snapshot_entries, this incarnation captures on its own
    assert n.capturing is not None and len(world.jobs) == 1
    world.run_jobs()
    assert n.stats.snapshots_taken == 1
    assert n.dlog.storage.snapshot().index == n.applied  # type: ignore[union-attr]


def test_a_failed_image_halts_the_node() -> None:
    driver, world = one_node()
    for rid in range(1, 26):
        write(driver, world, rid)
    perform, complete = world.jobs.pop()
    complete(CaptureDone(node(driver).capturing[0], False, None, "too big"))  # type: ignore[index]
    assert not driver.alive and "too big" in world.replies[-1].error


def test_kv_capture_freezes_the_state_at_capture_time_deferred_writes_included() -> None:
    sm = RaftKvSM(kv.KvStateMachine(MemoryEngine()))

    def put(index: int, key: bytes, value: bytes) -> None:
        sm.kv.apply(kv.Batch((kv.Set(key, value),)), index=index, now_ms=1)

    put(1, b"a", b"1")
    sm.kv.begin_group()
    put(2, b"b", b"2")  # deferred: the capture must still see it
    job = sm.capture()
    put(3, b"a", b"changed")
    sm.kv.end_group()
    put(4, b"c", b"3")
    image = job()
    other = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    other.restore(image)
    got = other.kv.read([kv.Get(b"a"), kv.Get(b"b"), kv.Get(b"c")], now_ms=1)
    assert got == [b"1", b"2", None] and other.kv.applied_index == 2
    assert sm.snapshot() != image  # the live state moved on

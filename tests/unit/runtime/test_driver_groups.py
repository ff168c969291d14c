"""Disk ops queued while the disk is busy go to the world as one job, in order; a failure
inside a group fails the op it happened at and leaves the later ones unperformed."""

from __future__ import annotations

from collections.abc import Callable

from keeldb.node.effects import ClientRequest, Persist, PersistDone, Sync, SyncDone, Tick
from keeldb.runtime.driver import Driver, IoResult
from keeldb.types import NodeId
from tests.unit.runtime.test_driver import N1, N2, FakeWorld, Scripted


def _driver() -> tuple[Driver, FakeWorld, Scripted]:
    Scripted.instances = []
    world = FakeWorld()
    driver = Driver(N1, (N2,), Scripted, world)
    driver.start()
    return driver, world, Scripted.instances[-1]


def test_ops_queued_behind_a_busy_disk_share_one_job() -> None:
    driver, world, node = _driver()
    node.script[ClientRequest] = [Persist(1, "log", b"a"), Sync(2, "log")]
    driver.deliver(ClientRequest(1, "write"))
    assert len(world.io) == 1  # both ops were queued together: one job
    node.script[Tick] = [Persist(3, "log", b"b"), Persist(4, "log", b"c"), Sync(5, "log")]
    driver.deliver(Tick("t", 0))
    assert len(world.io) == 1  # the disk is busy: the new ops wait
    world.finish_io()
    first = [e for e in node.seen if isinstance(e, PersistDone | SyncDone)]
    assert [(type(e).__name__, e.op) for e in first] == [("PersistDone", 1), ("SyncDone", 2)]
    assert len(world.io) == 1  # the three waiting ops left as the next single job
    world.finish_io()
    done = [e for e in node.seen if isinstance(e, PersistDone | SyncDone)]
    assert [e.op for e in done] == [1, 2, 3, 4, 5] and all(e.ok for e in done)
    f = world.the_disk.open("log")
    assert f.read_at(0, f.size()) == b"abc"
    assert driver.stats.disk_ops == 5


def test_a_failed_op_fails_its_group_from_there_on() -> None:
    driver, world, node = _driver()
    world.the_disk.create("log").close()
    world.the_disk.fail_syncs = 1
    node.script[ClientRequest] = [Persist(1, "log", b"a"), Sync(2, "log"),
                                  Persist(3, "log", b"c"), Sync(4, "log")]
    driver.deliver(ClientRequest(1, "write"))
    world.finish_io()
    done = [e for e in node.seen if isinstance(e, PersistDone | SyncDone)]
    assert [(e.op, e.ok) for e in done] == [(1, True), (2, False), (3, False), (4, False)]
    assert "earlier disk op" in done[2].error and "earlier" not in done[1].error
    f = world.the_disk.open("log")
    assert f.read_at(0, f.size()) == b"a"  # op 3 never ran


def test_a_job_the_world_fails_fails_its_first_op() -> None:
    driver, world, node = _driver()
    node.script[ClientRequest] = [Persist(1, "log", b"a"), Sync(2, "log")]
    driver.deliver(ClientRequest(1, "write"))
    world.finish_io(ok=False)  # the world never ran it
    done = [e for e in node.seen if isinstance(e, PersistDone | SyncDone)]
    assert [(e.op, e.ok, e.error) for e in done] == [
        (1, False, "injected"), (2, False, "an earlier disk op of its group failed")]


def test_io_job_bytes_names_the_bytes_of_the_job_being_submitted() -> None:
    driver, world, node = _driver()
    seen: list[int] = []
    submit = world.submit_io

    def spy(node_id: NodeId, perform: Callable[[], IoResult],
            complete: Callable[[IoResult], None]) -> None:
        seen.append(driver.io_job_bytes)  # what a world's inline policy reads
        submit(node_id, perform, complete)

    world.submit_io = spy  # type: ignore[method-assign, assignment]
    node.script[ClientRequest] = [Persist(1, "log", b"abc"), Sync(2, "log")]
    driver.deliver(ClientRequest(1, "write"))
    node.script[Tick] = [Persist(3, "log", b"x" * 100), Persist(4, "meta", b"yy", replace=True),
                         Sync(5, "log")]
    driver.deliver(Tick("t", 0))  # queued behind the busy disk: one job of both persists
    world.finish_io()
    node.script[Tick] = [Sync(6, "log")]
    driver.deliver(Tick("t", 0))
    world.finish_io()
    assert seen == [3, 102, 0]

"""Scripted scenarios: the faults random runs reach slowly, written out step by step."""

from __future__ import annotations

from keeldb.runtime.sim.faults import FaultPlan
from keeldb.testing.cluster import SimCluster, SimConfig
from keeldb.testing.register_service import LOG, SUSPECT
from keeldb.types import NodeId

N1 = NodeId("n1")


def _cluster(system: str) -> SimCluster:
    c = SimCluster(SimConfig(system, 1, faults=()))
    c.start()
    return c


def test_register_keeps_acknowledged_writes_through_power_loss() -> None:
    c = _cluster("register")
    reply = c.request("n1", "write", "x", 1)
    assert reply is not None and reply.type == "ok"
    c.crash("n1", power_loss=True)
    assert c.request("n1", "read", "x") is None  # down: no answer
    c.restart("n1")
    reply = c.request("n1", "read", "x")
    assert reply is not None and (reply.type, reply.value) == ("ok", 1)


def test_register_cuts_a_torn_tail_only_after_reading_it_twice() -> None:
    c = _cluster("register")
    assert c.request("n1", "write", "x", 1).type == "ok"  # type: ignore[union-attr]
    disk = c.world.disks[N1]
    good = disk.open(LOG).size()
    f = disk.open(LOG, append=True)
    f.append(b"\x00\x00\x00\x20torn")  # a record header promising more than is there
    f.sync()
    c.crash("n1", power_loss=True)
    c.restart("n1")
    c.run_for(5)
    assert c.world.stats.halts == 1  # first read: suspect noted, node halted to read again
    assert disk.exists(SUSPECT)
    c.run_for(100)  # the supervisor restarts it; same bytes again: a real torn tail, cut
    assert c.world.drivers[N1].alive and disk.open(LOG).size() == good
    reply = c.request("n1", "read", "x")
    assert reply is not None and (reply.type, reply.value) == ("ok", 1)
    assert c.request("n1", "write", "x", 2).type == "ok"  # type: ignore[union-attr]


def test_register_does_not_cut_its_log_for_a_transient_bit_flip() -> None:
    c = _cluster("register")
    for v in range(1, 4):
        assert c.request("n1", "write", "x", v).type == "ok"  # type: ignore[union-attr]
    disk = c.world.disks[N1]
    size = disk.open(LOG).size()
    c.crash("n1", power_loss=True)
    disk.p_bitflip = 1.0  # every read flips a bit
    c.restart("n1")
    c.run_for(2)
    assert c.world.stats.halts == 1 and not c.world.drivers[N1].alive
    disk.p_bitflip = 0.0  # transient: the next read is clean
    c.run_for(100)
    assert c.world.drivers[N1].alive and disk.open(LOG).size() == size
    reply = c.request("n1", "read", "x")
    assert reply is not None and (reply.type, reply.value) == ("ok", 3)


def test_register_halts_on_fsync_failure_and_answers_nothing_unsynced() -> None:
    c = _cluster("register")
    c.world.disks[N1].p_fsync_fail = 1.0
    assert c.request("n1", "write", "x", 1, timeout_ms=20) is None  # no false "ok"
    assert c.world.stats.halts >= 1
    c.world.disks[N1].p_fsync_fail = 0.0
    c.run_for(100)
    reply = c.request("n1", "write", "x", 2)
    assert reply is not None and reply.type == "ok"


def test_primary_backup_loses_an_acknowledged_write_when_isolated() -> None:
    c = _cluster("primary-backup")
    c.run_for(20)
    assert c.request("n1", "write", "x", 1).type == "ok"  # type: ignore[union-attr]
    c.run_for(5)  # replicated
    c.isolate("n1")
    reply = c.request("n1", "write", "x", 2)  # the isolated primary still says ok
    assert reply is not None and reply.type == "ok"
    c.run_for(200)  # n2 hears nothing and promotes itself
    c.heal()
    c.run_for(50)
    primary = c.request("n2", "read", "x")
    assert primary is not None and (primary.type, primary.value) == ("ok", 1)  # 2 is lost


def test_fault_plan_of_a_cluster_is_the_configured_one() -> None:
    c = SimCluster(SimConfig("primary-backup", 5, faults=()))
    assert c.plan == FaultPlan.of(5, ())


def test_register_syncs_page_cache_records_before_serving_them() -> None:
    from keeldb.testing.kvstate import encode_record

    c = _cluster("register")
    assert c.request("n1", "write", "x", 1).type == "ok"  # type: ignore[union-attr]
    disk = c.world.disks[N1]
    disk.open(LOG, append=True).append(encode_record([2, "write", "x", 2]))  # not synced
    c.crash("n1", power_loss=False)  # a process crash: the page cache keeps the record
    c.restart("n1")
    reply = c.request("n1", "read", "x")
    assert reply is not None and (reply.type, reply.value) == ("ok", 2)
    c.crash("n1", power_loss=True)  # what the client saw must survive a power loss now
    c.restart("n1")
    reply = c.request("n1", "read", "x")
    assert reply is not None and (reply.type, reply.value) == ("ok", 2)

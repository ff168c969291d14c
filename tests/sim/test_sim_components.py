"""The simulator's parts: faults and plans, scheduler, clock, network and disk semantics."""

from __future__ import annotations

import random

import pytest

from keeldb import limits
from keeldb.errors import DiskFullError, LimitExceededError, StorageIOError, UsageError
from keeldb.runtime.sim.clock import SimClock
from keeldb.runtime.sim.disk import SimDisk
from keeldb.runtime.sim.faults import SPECS, Fault, FaultPlan, parse_faults
from keeldb.runtime.sim.network import SimNetwork
from keeldb.runtime.sim.scheduler import Scheduler
from keeldb.testing.cluster import SimConfig, run_sim
from keeldb.types import NodeId

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")


# --- faults and plans ------------------------------------------------------------------------

def test_every_fault_has_a_name_a_knob_and_a_doc_line() -> None:
    for fault in Fault:
        spec = SPECS[fault]
        assert 0 < spec.p_min <= spec.p_max <= 1
        assert spec.doc and "\n" not in spec.doc
        assert fault.value == fault.value.lower() and " " not in fault.value


def test_parse_faults() -> None:
    assert parse_faults("crash,drop") == (Fault.DROP, Fault.CRASH)  # enum order
    assert parse_faults("none") == () and parse_faults("all") == tuple(Fault)
    with pytest.raises(UsageError, match="unknown fault 'fire'"):
        parse_faults("drop,fire")


def test_swarm_plan_is_rebuilt_by_its_repro_faults() -> None:
    subsets = set()
    for seed in range(40):
        plan = FaultPlan.swarm(seed)
        assert FaultPlan.of(seed, parse_faults(plan.names())) == plan
        for fault, p in plan.probabilities:
            assert SPECS[fault].p_min <= p <= SPECS[fault].p_max
        subsets.add(plan.faults)
    assert len(subsets) > 30  # different seeds stress different mixes
    assert FaultPlan.of(1, ()).names() == "none" and FaultPlan.of(1, ()).p(Fault.DROP) == 0.0


NEEDS = {Fault.BITFLIP: (Fault.CRASH,), Fault.LOSE_UNSYNCED: (Fault.CRASH,),
         Fault.TORN_WRITE: (Fault.CRASH, Fault.LOSE_UNSYNCED)}


@pytest.mark.parametrize("fault", list(Fault), ids=lambda f: f.value)
def test_every_fault_fires(fault: Fault) -> None:
    system = "register" if fault in (Fault.ENOSPC, Fault.FSYNC_FAIL) else "primary-backup"
    faults = (fault, *NEEDS.get(fault, ()))
    for seed in range(1, 6):
        result = run_sim(SimConfig(system, seed, faults, ticks_max=500, clients=2))
        if result.faults_exercised.get(fault.value, 0) > 0:
            return
    pytest.fail(f"{fault.value} never fired in 5 seeds")


# --- scheduler and clock ---------------------------------------------------------------------

def test_scheduler_runs_in_time_then_submission_order() -> None:
    s = Scheduler()
    seen: list[str] = []
    s.at(5, seen.append, "b1")
    s.at(3, seen.append, "a")
    s.at(5, seen.append, "b2")
    s.at(9, seen.append, "late")
    s.run_until(5)
    assert seen == ["a", "b1", "b2"] and s.now == 5 and s.pending() == 1
    with pytest.raises(AssertionError, match="before now"):
        s.at(4, seen.append, "past")


def test_clock_skew_drift_and_jumps() -> None:
    plain = SimClock(random.Random(1), skew=False, drift=False)
    assert plain.local(10) - plain.local(0) == 10 and plain.local(0) >= 10**12
    c = SimClock(random.Random(2), skew=True, drift=True)
    assert c.offset != 0 and c.drift != 0
    before = c.local(1_000_000)
    c.jump(-500)
    assert c.local(1_000_000) == before - 500 and c.jumps == 1
    # a local delay maps to true time so that the local clock advances by about that much
    true = c.local_delay_to_true(1_000_000)
    assert abs((c.local(true) - c.local(0)) - 1_000_000) <= 2


# --- network ---------------------------------------------------------------------------------

def test_links_are_fifo_without_reorder() -> None:
    net = SimNetwork(random.Random(3), (A, B), p_tail=0.5)
    times = [net.arrivals(i, A, B)[0] for i in range(200)]
    assert times == sorted(times)
    reordering = SimNetwork(random.Random(3), (A, B), p_reorder=0.5, p_tail=0.5)
    times = [reordering.arrivals(i, A, B)[0] for i in range(200)]
    assert times != sorted(times)


def test_partitions_cut_and_heal() -> None:
    net = SimNetwork(random.Random(4), (A, B, C))
    net.split((A,), (B, C), both_ways=False)
    assert net.arrivals(0, A, B) == () and net.arrivals(0, B, A) != ()
    net.heal()
    net.bridge((A,), C, (B,))
    assert net.arrivals(0, A, B) == () and net.arrivals(0, B, A) == ()
    assert net.arrivals(0, A, C) != () and net.arrivals(0, C, B) != ()
    net.heal()
    net.isolate(B)
    assert not net.delivers(A, B) and not net.delivers(B, C) and net.delivers(A, C)


def test_clog_delays_and_duplicate_repeats() -> None:
    net = SimNetwork(random.Random(5), (A, B))
    net.clog(A, until_ns=10**9)
    assert net.arrivals(0, B, A)[0] >= 10**9
    dup = SimNetwork(random.Random(6), (A, B), p_duplicate=1.0)
    assert len(dup.arrivals(0, A, B)) == 2 and dup.injected["duplicate"] == 1
    lossy = SimNetwork(random.Random(7), (A, B), p_drop=1.0)
    assert lossy.arrivals(0, A, B) == () and lossy.injected["drop"] == 1


# --- disk ------------------------------------------------------------------------------------

def _disk_with(data: bytes, synced: bytes) -> SimDisk:
    d = SimDisk(random.Random(8))
    f = d.create("f")
    d.sync_dir()
    f.append(synced)
    f.sync()
    f.append(data)
    return d


def test_process_crash_keeps_page_cache_power_loss_does_not() -> None:
    d = _disk_with(b"unsynced", b"synced")
    d.crash(power_loss=False)
    assert d.open("f").read_at(0, 100) == b"syncedunsynced"
    d.crash(power_loss=True)
    assert d.open("f").read_at(0, 100) == b"synced"


def test_torn_write_keeps_a_prefix_of_the_unsynced_tail() -> None:
    kept = set()
    for seed in range(20):
        d = SimDisk(random.Random(seed), p_torn=1.0)
        f = d.create("f")
        d.sync_dir()
        f.append(b"0123456789")
        d.crash()
        got = d.open("f").read_at(0, 100)
        assert b"0123456789".startswith(got) and got
        kept.add(len(got))
    assert len(kept) > 3


def test_bitflip_is_transient_enospc_and_fsync_fail_change_nothing() -> None:
    d = SimDisk(random.Random(9), p_bitflip=1.0)
    f = d.create("f")
    f.append(b"\x00" * 16)
    flipped = f.read_at(0, 16)
    assert sum(bin(b).count("1") for b in flipped) == 1
    d.heal()
    assert f.read_at(0, 16) == b"\x00" * 16
    full = SimDisk(random.Random(10), p_enospc=1.0)
    g = full.create("g")
    with pytest.raises(DiskFullError, match="ENOSPC"):
        g.append(b"data")
    assert g.size() == 0
    eio = SimDisk(random.Random(11), p_fsync_fail=1.0)
    h = eio.create("h")
    h.append(b"data")
    with pytest.raises(StorageIOError, match="EIO"):
        h.sync()
    with pytest.raises(StorageIOError):
        eio.sync_dir()
    eio.crash()
    assert eio.list() == []


def test_simulator_doc_lists_every_fault_with_its_doc_line() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "simulator.md").read_text()
    for fault in Fault:
        spec = SPECS[fault]
        row = f"| `{fault.value}` | {spec.p_min:g}-{spec.p_max:g} | {spec.doc} |"
        assert row in doc, f"docs/simulator.md: the faults table lacks or differs on {row}"


def test_scheduler_stops_a_livelock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "sim_events_same_instant_max", 1000)
    s = Scheduler()

    def again(_: object) -> None:
        s.at(s.now, again)

    s.at(1, again)
    with pytest.raises(LimitExceededError, match="livelock"):
        s.run_until(10)

"""The proof the harness finds bugs: the correct register service passes every seed, the
primary-backup register (incorrect by design) is flagged, under swarm fault plans."""

from __future__ import annotations

import pytest

from keeldb.runtime.sim.faults import parse_faults
from keeldb.testing.cluster import SimConfig, run_sim

DEFAULT_SEEDS = range(1, 31)


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_register_service_is_never_flagged(seed: int) -> None:
    result = run_sim(SimConfig("register", seed))
    assert result.ok, f"{result.violations[:3]}\nreproduce: {result.repro}"
    assert any(op.type == "ok" for op in result.history)


@pytest.mark.parametrize("workload", ["list-append", "bank"])
def test_register_service_passes_the_other_workloads(workload: str) -> None:
    for seed in range(1, 9):
        result = run_sim(SimConfig("register", seed, workload=workload))
        assert result.ok, f"{result.violations[:3]}\nreproduce: {result.repro}"


def test_register_service_survives_every_fault_at_once() -> None:
    for seed in range(100, 106):
        result = run_sim(SimConfig("register", seed, parse_faults("all")))
        assert result.ok, f"{result.violations[:3]}\nreproduce: {result.repro}"


def test_primary_backup_is_flagged_by_the_swarm() -> None:
    results = [run_sim(SimConfig("primary-backup", seed)) for seed in DEFAULT_SEEDS]
    flagged = [r for r in results if not r.ok]
    assert flagged, "the checkers never caught the incorrect primary-backup system"
    kinds = {v.checker for r in flagged for v in r.violations}
    assert kinds <= {"lost-write", "linearizable", "liveness"}, kinds
    assert "lost-write" in kinds


def test_primary_backup_loses_appends() -> None:
    flagged = [r for r in (run_sim(SimConfig("primary-backup", seed, workload="list-append"))
                           for seed in range(1, 11)) if not r.ok]
    assert flagged and all(v.checker in ("lost-append", "liveness")
                           for r in flagged for v in r.violations)


def test_primary_backup_without_faults_passes() -> None:
    """No faults, no failover: the bug needs a fault to show, so a clean run is clean."""
    for seed in range(1, 6):
        result = run_sim(SimConfig("primary-backup", seed, parse_faults("none")))
        assert result.ok, result.violations[:3]


def test_failure_reproduces_from_its_repro_line() -> None:
    result = run_sim(SimConfig("primary-backup", 2))
    assert not result.ok
    args = result.repro.split()
    assert args[:2] == ["keeldb", "sim"]
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    again = run_sim(SimConfig(flags["--system"], int(flags["--seed"]),
                              parse_faults(flags["--faults"]), workload=flags["--workload"]))
    assert again.digest == result.digest
    assert [str(v) for v in again.violations] == [str(v) for v in result.violations]


@pytest.mark.slow
@pytest.mark.parametrize("system", ["register", "primary-backup"])
def test_swarm_many_seeds(system: str) -> None:
    """`python -m pytest -m slow tests/sim`: 500 seeds each (the CLI: keeldb sim --seeds 1000)."""
    results = [run_sim(SimConfig(system, seed)) for seed in range(1, 501)]
    failed = [r.repro for r in results if not r.ok]
    if system == "register":
        assert not failed, failed[:5]
    else:
        assert len(failed) > 100, len(failed)


class _Buggy:
    """Breaks an invariant on its 50th request."""

    def __init__(self) -> None:
        self.seen = 0

    def step(self, event: object) -> list[object]:
        from keeldb.node.effects import ClientRequest, Reply

        if isinstance(event, ClientRequest):
            self.seen += 1
            assert self.seen < 50, "invariant broken on purpose"
            return [Reply(event.request_id, "ok", None)]
        return []


def test_a_crashing_node_is_a_finding_with_a_repro_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from keeldb.testing.cluster import SYSTEMS, SystemSpec

    monkeypatch.setitem(SYSTEMS, "buggy", SystemSpec("buggy", _Buggy, ("n1",), False, "test"))
    result = run_sim(SimConfig("buggy", 1, parse_faults("none")))
    assert [v.checker for v in result.violations] == ["exception"]
    assert "invariant broken on purpose" in result.violations[0].message
    assert result.repro.startswith("keeldb sim --system buggy --seed 1 --faults none")


def test_linearizability_checker_agrees_on_its_own() -> None:
    """keeldb.check.linearizable flags primary-backup runs without help from lost-write."""
    from keeldb.testing.checkers import linearizability

    for seed in (1, 2, 3):
        assert linearizability(run_sim(SimConfig("primary-backup", seed)).history)
        assert linearizability(run_sim(SimConfig("register", seed)).history) == []

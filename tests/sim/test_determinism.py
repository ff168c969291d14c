"""Same seed, same run: the trace digest proves it, also across PYTHONHASHSEEDs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from keeldb.runtime.sim.faults import parse_faults
from keeldb.testing.cluster import SimConfig, run_sim

CONFIGS = [
    SimConfig("register", 7),
    SimConfig("primary-backup", 11),
    SimConfig("primary-backup", 12, parse_faults("all"), workload="list-append"),
    SimConfig("register", 13, parse_faults("all"), workload="bank"),
]


def _source(c: SimConfig) -> str:
    faults = "None" if c.faults is None else f"parse_faults({','.join(f.value for f in c.faults)!r})"
    return f"SimConfig({c.system!r}, {c.seed}, {faults}, workload={c.workload!r})"


def _digests() -> list[str]:
    return [run_sim(c).digest for c in CONFIGS]


def test_same_seed_same_digest_and_history() -> None:
    for config in CONFIGS:
        a, b = run_sim(config), run_sim(config)
        assert a.digest == b.digest, config
        assert a.history == b.history
        assert [str(v) for v in a.violations] == [str(v) for v in b.violations]


def test_different_seeds_differ() -> None:
    digests = {run_sim(SimConfig("primary-backup", seed)).digest for seed in range(5)}
    assert len(digests) == 5


def test_digest_is_independent_of_the_hash_seed() -> None:
    code = ("import json\n"
            "from keeldb.runtime.sim.faults import parse_faults\n"
            "from keeldb.testing.cluster import SimConfig, run_sim\n"
            f"configs = [{', '.join(_source(c) for c in CONFIGS)}]\n"
            "print(json.dumps([run_sim(c).digest for c in configs]))\n")
    here = _digests()
    for hash_seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                             capture_output=True, text=True).stdout
        assert json.loads(out) == here, f"PYTHONHASHSEED={hash_seed} changed a run"


def test_trace_does_not_change_the_run() -> None:
    plain = run_sim(SimConfig("primary-backup", 3))
    traced = run_sim(SimConfig("primary-backup", 3, trace=True))
    assert traced.history == plain.history
    assert traced.trace and not plain.trace

"""Public helpers for tests: reference systems, workloads, histories, checkers, SimCluster.

    from keeldb.testing import SimCluster, SimConfig, run_sim
    result = run_sim(SimConfig("register", seed=7))
    assert result.ok, result.repro
"""

from keeldb.testing.checkers import Violation
from keeldb.testing.cluster import SYSTEMS, SimCluster, SimConfig, SimResult, run_sim, swarm
from keeldb.testing.primary_backup import PrimaryBackupNode
from keeldb.testing.register_service import RegisterNode

__all__ = ["SYSTEMS", "PrimaryBackupNode", "RegisterNode", "SimCluster", "SimConfig",
           "SimResult", "Violation", "run_sim", "swarm"]

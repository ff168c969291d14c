"""The deterministic simulator: one seeded, single-threaded world of virtual time.

`SimWorld` hosts nodes (through the shared `runtime.driver.Driver`) over `SimNetwork`,
`SimDisk` and `SimClock`, with a nemesis injecting the faults of a `FaultPlan`. Workloads,
histories, checkers and the safety/liveness phases live in `keeldb.testing`.
"""

from keeldb.runtime.sim.disk import SimDisk
from keeldb.runtime.sim.faults import Fault, FaultPlan, parse_faults
from keeldb.runtime.sim.world import SimWorld

__all__ = ["Fault", "FaultPlan", "SimDisk", "SimWorld", "parse_faults"]

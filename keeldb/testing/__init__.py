"""Public helpers for tests: reference systems, workloads, simulated clusters."""

"""The deterministic simulated world: seeded network, disks and clocks with named faults."""

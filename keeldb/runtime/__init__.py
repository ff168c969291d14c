"""The only layer below the edges that touches the operating system: real and simulated worlds."""

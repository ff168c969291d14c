"""The node: sans-IO state machines composed from the cores; the contract is in `effects`."""

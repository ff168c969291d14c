"""The sans-IO storage engines: memory (oracle) and LSM; they know nothing of the network."""

"""Versioned, checksummed encodings: network frames, wire messages, on-disk records."""

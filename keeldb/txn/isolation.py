"""Isolation levels keeldb offers and what each one checks at commit.

| level            | reads see                                  | commit-time check          |
| ---------------- | ------------------------------------------ | -------------------------- |
| `read_committed` | the newest committed data, per operation   | none (last committer wins) |
| `snapshot`       | one snapshot, taken at the first operation | write-write (first committer wins) |
| `serializable`   | one snapshot, taken at the first operation | write-write and read-write over every key and range read |

Every level reads its own writes and never sees uncommitted or aborted data of others.
"""

from __future__ import annotations

from keeldb.errors import UsageError

READ_COMMITTED = "read_committed"
SNAPSHOT = "snapshot"
SERIALIZABLE = "serializable"
LEVELS: tuple[str, ...] = (READ_COMMITTED, SNAPSHOT, SERIALIZABLE)

# Spellings accepted for each level (SQL and checker names).
_ALIASES = {
    "read-committed": READ_COMMITTED,
    "snapshot-isolation": SNAPSHOT,
    "snapshot_isolation": SNAPSHOT,
    "repeatable_read": SNAPSHOT,
    "repeatable-read": SNAPSHOT,
}

# The name `keeldb.check.transactions` uses for the same level.
CHECKER_NAMES = {
    READ_COMMITTED: "read-committed",
    SNAPSHOT: "snapshot-isolation",
    SERIALIZABLE: "serializable",
}


def parse_level(name: object) -> str:
    """Return the canonical level for `name`, or raise `UsageError` listing the choices."""
    if isinstance(name, str):
        level = _ALIASES.get(name.lower(), name.lower())
        if level in LEVELS:
            return level
    raise UsageError(f"unknown isolation level {name!r}; use one of {', '.join(LEVELS)}")


def uses_snapshot(level: str) -> bool:
    """Whether one snapshot serves every read of the transaction."""
    return level != READ_COMMITTED


def checks_writes(level: str) -> bool:
    """Whether a write-write conflict aborts the later committer."""
    return level != READ_COMMITTED


def checks_reads(level: str) -> bool:
    """Whether reads (keys and scanned ranges) are validated at commit."""
    return level == SERIALIZABLE

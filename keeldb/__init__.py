"""keeldb: an embedded, replicated, transactional key-value store.

    >>> import keeldb
    >>> with keeldb.open("mydb") as db:          # doctest: +SKIP
    ...     db.put(b"k", b"v")
    ...     db.get(b"k")
    b'v'

The embedded API is imported lazily so that importing a low layer (`keeldb.storage`, ...)
never pulls in threads and files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keeldb.errors import (
    CheckError,
    ClosedError,
    CommitUnknown,
    ConfigError,
    CorruptionError,
    DiskFullError,
    InvalidKeyError,
    InvalidValueError,
    KeeldbError,
    LimitExceededError,
    LockedError,
    RetryableError,
    StorageIOError,
    TransactionConflict,
    UsageError,
    WriteStallError,
)

if TYPE_CHECKING:
    from keeldb.client import connect
    from keeldb.embedded import DB, Snapshot, WriteBatch, open
    from keeldb.txn import Transaction, transactional

__version__ = "0.1.0"

__all__ = [
    "DB",
    "CheckError",
    "ClosedError",
    "CommitUnknown",
    "ConfigError",
    "CorruptionError",
    "DiskFullError",
    "InvalidKeyError",
    "InvalidValueError",
    "KeeldbError",
    "LimitExceededError",
    "LockedError",
    "RetryableError",
    "Snapshot",
    "StorageIOError",
    "Transaction",
    "TransactionConflict",
    "UsageError",
    "WriteBatch",
    "WriteStallError",
    "__version__",
    "connect",
    "open",
    "transactional",
]

_LAZY = {"open", "DB", "Snapshot", "WriteBatch"}
_LAZY_TXN = {"Transaction", "transactional"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from keeldb import embedded

        return getattr(embedded, name)
    if name == "connect":
        from keeldb.client import connect

        return connect
    if name in _LAZY_TXN:
        from keeldb import txn

        return getattr(txn, name)
    raise AttributeError(f"module 'keeldb' has no attribute {name!r}")

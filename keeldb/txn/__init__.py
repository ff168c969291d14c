"""MVCC transactions: isolation levels, the local transaction manager, retries.

    from keeldb.txn import TransactionManager, transactional
"""

from __future__ import annotations

from keeldb.txn.isolation import LEVELS, READ_COMMITTED, SERIALIZABLE, SNAPSHOT, parse_level
from keeldb.txn.local import Transaction, TransactionManager
from keeldb.txn.retry import transactional

__all__ = [
    "LEVELS",
    "READ_COMMITTED",
    "SERIALIZABLE",
    "SNAPSHOT",
    "Transaction",
    "TransactionManager",
    "parse_level",
    "transactional",
]

"""The public API of `keeldb` is what `__all__` says, and every name in it resolves."""

from __future__ import annotations

import keeldb


def test_all_names_resolve() -> None:
    for name in keeldb.__all__:
        assert getattr(keeldb, name) is not None, name


def test_errors_say_retryable() -> None:
    assert keeldb.TransactionConflict("x").retryable
    assert keeldb.WriteStallError("x").retryable
    assert not keeldb.CorruptionError("x").retryable
    assert not keeldb.CommitUnknown("x").retryable

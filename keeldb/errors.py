"""The keeldb error tree.

Every operating error is a subclass of `KeeldbError` and says what happened and what to do.
`retryable` tells a caller whether trying the same thing again may succeed. Programmer
errors (violated invariants) are plain `AssertionError`s and crash loudly.
"""

from __future__ import annotations


class KeeldbError(Exception):
    """Base of every error keeldb raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(KeeldbError, ValueError):
    """The caller asked for something invalid: wrong type, empty key, over a limit."""


class InvalidKeyError(UsageError):
    """A key is not bytes, is empty, or is longer than `limits.key_bytes_max`."""


class InvalidValueError(UsageError):
    """A value is not bytes or is longer than `limits.value_bytes_max`."""


class LimitExceededError(UsageError):
    """A batch, scan, queue or other bounded thing would cross its named limit."""


class ClosedError(UsageError):
    """The database (or snapshot, iterator, batch) was already closed."""


class ConfigError(KeeldbError):
    """A configuration value is invalid or inconsistent."""


class LockedError(KeeldbError):
    """Another process holds the directory lock."""


class CorruptionError(KeeldbError):
    """Stored bytes fail their checksum or format check. Names the file and offset."""

    def __init__(self, message: str, *, path: str = "", offset: int = -1) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class StorageIOError(KeeldbError):
    """The operating system refused a read, write or fsync (ENOSPC, EIO, ...).

    The store stays readable; writes fail until the cause is fixed and the store reopened.
    """


class DiskFullError(StorageIOError):
    """No space left on the device (ENOSPC)."""


class WriteStallError(KeeldbError):
    """Writes are throttled because compaction is behind; retry after a pause."""

    retryable = True


class RetryableError(KeeldbError):
    """A transient condition (no leader, timeout, busy); the same request may succeed later."""

    retryable = True


class TransactionConflict(RetryableError):
    """A transaction lost a conflict and was aborted; retrying it from the start is safe."""


class CommitUnknown(KeeldbError):
    """A commit was sent but its outcome could not be learned; never guess, check the data."""


class CheckError(KeeldbError):
    """A history or checker input could not be read (names the line and what is wrong)."""

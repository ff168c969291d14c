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


# --- real runtime: frames, transport, admin (area: real world) -----------------------------


class FrameError(KeeldbError):
    """A network frame is malformed: over the size limit, bad checksum, unknown version,
    bad header or an undecodable payload. The connection that carried it must be closed."""

    reason: str = "malformed"


class FrameTooLargeError(FrameError, LimitExceededError):
    """A frame is longer than `limits.frame_bytes_max`."""

    reason = "too_large"


class FrameChecksumError(FrameError):
    """A frame's crc32c does not match its bytes (corrupted on the wire or not a keeldb peer)."""

    reason = "checksum"


class FrameVersionError(FrameError):
    """A frame carries a version this build does not speak."""

    reason = "version"


class FramePayloadError(FrameError):
    """A frame's header is wrong (magic, flags) or its msgpack payload cannot be decoded."""

    reason = "payload"


class AdminError(KeeldbError):
    """An admin request was refused, malformed, or its node could not be reached."""


class NodeUnavailableError(RetryableError):
    """A node's client port did not answer (not started yet, restarting, or gone)."""


# --- storage CLI (area: storage commands) ---------------------------------------------------


class NotFoundError(KeeldbError):
    """A key or store that a command asked for does not exist (the CLI exits 1)."""


# --- benchmarks (area: keeldb bench) --------------------------------------------------------


class BenchmarkFailedError(KeeldbError):
    """An engine process of a benchmark failed or timed out; the results written are partial."""


# --- raft core (area: consensus) ------------------------------------------------------------


class ProposalDroppedError(RetryableError):
    """A proposal (or read/transfer request) was not accepted: no leader known, a leadership
    transfer in progress, or this node was removed. Retry, possibly on the leader."""


class ConfChangeRefusedError(RetryableError):
    """A membership change was refused: another change is still pending, or a learner has
    not caught up yet. Retry after the pending change applied or the learner caught up."""


class LogCompactedError(KeeldbError):
    """Raft storage was asked for entries or a term below its first index (compacted away).
    The core answers it by sending a snapshot instead."""


class LogUnavailableError(KeeldbError):
    """Raft storage was asked for entries beyond its last index."""


# --- checker benchmark (area: keeldb bench checkers) ---------------------------------------


class CheckerMismatchError(BenchmarkFailedError):
    """A checker's verdict on a public corpus file differs from the recorded verdict."""


# --- RESP protocol and Redis command layer (area: resp) -------------------------------------


class RespProtocolError(UsageError):
    """A client sent bytes that are not a valid RESP request, or a request over a limit.
    The message is the Redis error text ("Protocol error: ..."); the server replies with it
    and then closes the connection, as Redis does."""


class CommandError(UsageError):
    """A command was refused with a Redis error reply (wrong arity, bad argument, unknown
    command). `message` is the full reply text including its code ("ERR ...", "WRONGTYPE ...");
    the connection stays usable."""


class StateRestoreError(CorruptionError):
    """A state-machine snapshot could not be restored: bad format, version or checksum."""


# --- MVCC transactions (area: txn) ------------------------------------------------------------


class SerializationConflict(TransactionConflict):
    """A transaction lost a write-write or read-write conflict against `other_txn` on `key`.

    Retrying the whole transaction from its start is safe (nothing of it was written)."""

    def __init__(self, message: str, *, key: bytes = b"", other_txn: int = 0,
                 kind: str = "write-write") -> None:
        super().__init__(message)
        self.key = key
        self.other_txn = other_txn
        self.kind = kind


class TransactionTooLargeError(LimitExceededError):
    """A transaction buffered more ops, bytes or read-set entries than its limit allows."""


class TransactionTooOldError(RetryableError):
    """A transaction lived longer than `limits.txn_age_seconds_max` or fell further behind
    than `limits.txn_commits_behind_max` commits; restart it (it may succeed when shorter)."""


class TransactionClosedError(ClosedError):
    """A transaction was used after its commit or rollback; begin a new one."""


# --- transactions on the server and the cluster (area: txn server) ----------------------------


class ServerReplyError(KeeldbError):
    """The server answered a request with an error reply the client has no better class for;
    the message is the server's text (it says what to do)."""


class TryAgainError(RetryableError):
    """The server did nothing this time (TRYAGAIN: no leader yet, a read not confirmed in
    time); the same request may succeed in a moment, here or on another node."""


# --- storage write path: background jobs in a worker process (area: storage write) ------------


class BackgroundJobError(KeeldbError):
    """A flush or compaction job failed in the worker process (it died, or reported an
    error). The embedded store logs it and runs the job in-process instead; nothing to do
    unless it repeats (then open with background="thread")."""


class BackgroundJobCancelledError(BackgroundJobError):
    """The store was closed while a background job ran; the job's outputs were discarded
    (its inputs are still in the store, so nothing is lost)."""

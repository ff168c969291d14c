"""txn/conflicts.py: the read set, the commit log and validation."""

from __future__ import annotations

import pytest

from keeldb.errors import SerializationConflict, TransactionTooOldError
from keeldb.txn.conflicts import CommitLog, Committed, ReadSet, validate


def test_read_set_covers_keys_and_half_open_ranges() -> None:
    reads = ReadSet()
    reads.add_key(b"k")
    reads.add_range(b"b", b"d")
    reads.add_range(b"b", b"d")
    reads.add_range(b"x", None)
    assert len(reads) == 3
    assert reads.covers(b"k") and reads.covers(b"b") and reads.covers(b"c\xff")
    assert not reads.covers(b"d") and not reads.covers(b"a") and reads.covers(b"zzz")
    everything = ReadSet()
    everything.add_range(None, None)
    assert everything.covers(b"\x00")


def test_log_since_prune_and_trim() -> None:
    log = CommitLog()
    for ts in range(1, 8):
        log.append(Committed(ts * 10, ts, frozenset({str(ts).encode()})))
    assert [c.ts for c in log.since(4)] == [5, 6, 7]
    log.prune(2)
    assert len(log) == 5 and log.floor == 2
    log.trim(2)
    assert [c.ts for c in log.since(0)] == [6, 7] and log.floor == 5
    with pytest.raises(AssertionError):
        log.append(Committed(99, 7, frozenset()))


def test_validate_orders_the_checks() -> None:
    log = CommitLog()
    log.append(Committed(1, 5, frozenset({b"a"})))
    log.append(Committed(2, 6, frozenset({b"b"})))
    validate(txn_id=9, read_ts=6, writes={b"a"}, reads=None, log=log)  # nothing after 6
    validate(txn_id=9, read_ts=4, writes={b"c"}, reads=None, log=log)
    with pytest.raises(SerializationConflict) as info:
        validate(txn_id=9, read_ts=5, writes={b"c", b"b"}, reads=None, log=log)
    assert info.value.kind == "write-write" and info.value.other_txn == 2
    reads = ReadSet()
    reads.add_range(b"a", b"b")
    with pytest.raises(SerializationConflict) as info:
        validate(txn_id=9, read_ts=4, writes={b"z"}, reads=reads, log=log)
    assert info.value.kind == "read-write" and info.value.key == b"a"
    log.prune(5)
    with pytest.raises(TransactionTooOldError):
        validate(txn_id=9, read_ts=4, writes={b"z"}, reads=None, log=log)

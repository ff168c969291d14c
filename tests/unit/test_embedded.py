"""keeldb.open(): the embedded database (lock, group commit, sync policies, stalls, faults)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import keeldb
from keeldb.errors import (
    ClosedError,
    ConfigError,
    DiskFullError,
    LockedError,
    StorageIOError,
)
from keeldb.runtime.real import disk as real_disk
from keeldb.storage.engine import STALL_STOP


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count WAL/table fdatasync calls (and make each take a little time, like a disk)."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(real_disk.os, "fdatasync", counting)
    yield calls


def test_basic_api_and_context_manager(tmp_path: Path) -> None:
    with keeldb.open(tmp_path / "db") as db:
        db.put(b"a", b"1")
        db.put(b"b", b"2")
        db.delete(b"a")
        assert db.get(b"a") is None and db.get(b"b") == b"2"
        with db.write_batch() as wb:
            wb.put(b"c", b"3")
            wb.delete(b"b")
        assert list(db.scan()) == [(b"c", b"3")]
        with db.snapshot() as snap:
            db.put(b"c", b"4")
            assert snap.get(b"c") == b"3" and list(snap.scan()) == [(b"c", b"3")]
        assert db.get(b"c") == b"4"
        db.flush()
        db.compact()
        db.sync()
        assert db.verify().ok
        assert db.stats().last_seq >= 5
    with keeldb.open(tmp_path / "db") as db:
        assert list(db.scan()) == [(b"c", b"4")]


def test_write_batch_is_discarded_on_exception(tmp_path: Path) -> None:
    with keeldb.open(tmp_path / "db") as db:
        with pytest.raises(RuntimeError), db.write_batch() as wb:
            wb.put(b"a", b"1")
            raise RuntimeError("boom")
        assert db.get(b"a") is None
        wb = db.write_batch()
        wb.put(b"x", b"1")
        assert wb.commit() > 0
        with pytest.raises(ClosedError):
            wb.put(b"y", b"2")


def test_second_process_gets_locked_error_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with keeldb.open(path):
        code = ("import keeldb, sys\n"
                "try:\n    keeldb.open(sys.argv[1])\n"
                "except keeldb.LockedError as e:\n    print(e); sys.exit(7)\n")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 7, out.stderr
        assert f"pid={os.getpid()}" in out.stdout
        with pytest.raises(LockedError):  # flock is per open file description: same process too
            keeldb.open(path)
    keeldb.open(path).close()  # released on close


def test_use_after_close_and_bad_arguments(tmp_path: Path) -> None:
    db = keeldb.open(tmp_path / "db")
    snap = db.snapshot()
    db.close()
    db.close()  # idempotent
    for call in (lambda: db.get(b"a"), lambda: db.put(b"a", b"b"), lambda: db.scan(),
                 lambda: db.stats(), lambda: snap.get(b"a"), lambda: db.write_batch()):
        with pytest.raises(ClosedError):
            call()
    with pytest.raises(ConfigError, match="sync"):
        keeldb.open(tmp_path / "x", sync="sometimes")
    with pytest.raises(ConfigError, match="unknown option"):
        keeldb.open(tmp_path / "y", memtable_size=5)
    with pytest.raises(ConfigError, match="create=True"):
        keeldb.open(tmp_path / "missing", create=False)


def test_group_commit_merges_concurrent_writers(tmp_path: Path, fsyncs: list[int]) -> None:
    threads_n, per_thread = 8, 40
    with keeldb.open(tmp_path / "db", sync="always") as db:
        base = len(fsyncs)

        def writer(t: int) -> None:
            for i in range(per_thread):
                db.put(b"t%d-%03d" % (t, i), b"v")

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        syncs = len(fsyncs) - base
        writes = threads_n * per_thread
        assert len(list(db.scan())) == writes
        assert 0 < syncs < writes, f"{syncs} fsyncs for {writes} writes: no group commit"
        assert db.stats().last_seq < writes  # groups share one seq and one WAL record


def test_sync_always_fsyncs_every_single_writer(tmp_path: Path, fsyncs: list[int]) -> None:
    with keeldb.open(tmp_path / "db", sync="always") as db:
        base = len(fsyncs)
        for i in range(10):
            db.put(b"k%d" % i, b"v")
        assert len(fsyncs) - base >= 10


def test_sync_batch_by_bytes_and_never(tmp_path: Path, fsyncs: list[int]) -> None:
    with keeldb.open(tmp_path / "b", sync="batch", sync_bytes=1000,
                     sync_interval_ms=3_600_000) as db:
        base = len(fsyncs)
        for i in range(40):
            db.put(b"k%03d" % i, b"x" * 97)  # 100 user bytes each
        assert 2 <= len(fsyncs) - base < 40
    with keeldb.open(tmp_path / "n", sync="never") as db:
        base = len(fsyncs)
        for i in range(40):
            db.put(b"k%03d" % i, b"x" * 97)
        assert len(fsyncs) == base


def test_writers_wait_during_a_stall_instead_of_failing(tmp_path: Path) -> None:
    db = keeldb.open(tmp_path / "db", memtable_bytes=2048, l0_compaction_trigger=1,
                     l0_slowdown_files=1, l0_stop_files=2)
    errors: list[BaseException] = []
    with db._flush_lock, db._compact_lock:  # hold back the background: no flush, no compaction
        def writer() -> None:
            try:
                for i in range(200):
                    db.put(b"k%04d" % i, b"x" * 100)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        th = threading.Thread(target=writer)
        th.start()
        th.join(timeout=0.5)
        assert th.is_alive(), f"writer did not stall: {errors}"
        assert db.engine.write_stall() == STALL_STOP
    th.join(timeout=60)
    assert not th.is_alive() and not errors
    stats = db.stats()
    assert stats.write_stalls >= 1 and stats.write_stall_seconds > 0
    assert len(list(db.scan())) == 200
    db.close()


def test_fsync_failure_makes_db_read_only_until_reopened(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "db"
    db = keeldb.open(path, sync="always")
    db.put(b"a", b"1")
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(real_disk.os, "fdatasync", failing)
    with pytest.raises(StorageIOError):
        db.put(b"b", b"2")
    monkeypatch.setattr(real_disk.os, "fdatasync", real)
    with pytest.raises(StorageIOError, match="read-only"):
        db.put(b"c", b"3")  # never retried as if the failed fsync had worked
    assert db.get(b"a") == b"1"
    db.close()
    with keeldb.open(path) as again:
        assert again.get(b"a") == b"1" and again.get(b"c") is None
        again.put(b"c", b"3")


def test_disk_full_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = keeldb.open(tmp_path / "db", sync="never")
    db.put(b"a", b"1")
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(real_disk.os, "write", full)
    with pytest.raises(DiskFullError):
        db.put(b"b", b"2")
    monkeypatch.setattr(real_disk.os, "write", real_write)
    assert db.get(b"a") == b"1"
    db.close()
    with keeldb.open(tmp_path / "db") as again:
        assert dict(again.scan()) == {b"a": b"1"}


def test_concurrent_readers_and_writers_see_consistent_batches(tmp_path: Path) -> None:
    with keeldb.open(tmp_path / "db", memtable_bytes=4096, table_bytes=4096,
                     level1_bytes=16384) as db:
        stop = threading.Event()
        problems: list[str] = []

        def writer() -> None:
            for i in range(300):
                with db.write_batch() as wb:  # both keys always carry the same number
                    wb.put(b"left", b"%d" % i)
                    wb.put(b"right", b"%d" % i)
                    wb.put(b"fill%04d" % i, b"x" * 64)
            stop.set()

        def reader() -> None:
            while not stop.is_set():
                with db.snapshot() as snap:
                    left, right = snap.get(b"left"), snap.get(b"right")
                    if left != right:
                        problems.append(f"snapshot saw left={left!r} right={right!r}")
                pairs = dict(db.scan(end=b"right\x00"))
                if pairs.get(b"left") != pairs.get(b"right"):
                    problems.append(f"scan saw {pairs.get(b'left')!r}/{pairs.get(b'right')!r}")

        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                       for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not problems, problems[:3]
        assert db.get(b"left") == b"299" and db.stats().flushes > 0


def test_package_exports_the_api() -> None:
    assert keeldb.open is keeldb.embedded.open  # type: ignore[attr-defined]
    for name in ("DB", "Snapshot", "WriteBatch"):
        assert getattr(keeldb, name) is getattr(keeldb.embedded, name)  # type: ignore[attr-defined]


def test_transactions_through_the_embedded_db(tmp_path: Path) -> None:
    """db.transaction() and keeldb.transactional(db) reach the MVCC layer and survive reopen."""
    import threading

    with keeldb.open(str(tmp_path / "db")) as db:
        with db.transaction() as tx:
            tx.put(b"a", b"1")
        with db.transaction("snapshot") as tx:
            assert tx.get(b"a") == b"1"

        @keeldb.transactional(db)
        def incr(tx: keeldb.Transaction) -> None:
            tx.put(b"n", str(int(tx.get(b"n") or b"0") + 1).encode())

        threads = [threading.Thread(target=lambda: [incr() for _ in range(25)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with db.transaction() as tx:
            assert tx.get(b"n") == b"100"  # no lost update at serializable
    with keeldb.open(str(tmp_path / "db")) as db, db.transaction() as tx:
        assert tx.get(b"n") == b"100"


def test_the_transactional_keyspace_is_hidden_from_plain_reads_and_writes(tmp_path: Path) -> None:
    from keeldb.errors import InvalidKeyError
    from keeldb.storage.mvcc import NAMESPACE

    with keeldb.open(str(tmp_path / "db")) as db:
        db.put(b"a", b"1")
        db.put(b"\xff", b"2")
        with db.transaction() as tx:
            tx.put(b"x", b"3")
        assert list(db.scan()) == [(b"a", b"1"), (b"\xff", b"2")]
        assert list(db.scan(reverse=True)) == [(b"\xff", b"2"), (b"a", b"1")]
        assert list(db.scan(limit=1, reverse=True)) == [(b"\xff", b"2")]
        assert list(db.scan(start=NAMESPACE, end=NAMESPACE + b"\xff")) == []
        with db.snapshot() as snap:
            assert list(snap.scan()) == [(b"a", b"1"), (b"\xff", b"2")]
        with pytest.raises(InvalidKeyError, match="reserved for transactions"):
            db.put(NAMESPACE + b"vx", b"oops")
        with pytest.raises(InvalidKeyError, match="reserved"):
            db.delete(NAMESPACE + b"m")
        with pytest.raises(InvalidKeyError, match="reserved"), db.write_batch() as wb:
            wb.put(NAMESPACE + b"m", b"0")
        with db.transaction() as tx:
            assert tx.get(b"x") == b"3"

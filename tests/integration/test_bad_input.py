"""Bad input and bad environments give typed errors that name the value, the limit and the fix.

Covers: non-bytes / empty / oversized keys and values (directly and inside batches), use after
close, the directory lock between processes, a full disk (a real small tmpfs in a private
mount namespace when the machine allows one, else skipped) and a full disk / failing fsync on
the in-memory disk through the engine API.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keeldb
from keeldb import limits
from keeldb.errors import (
    ClosedError,
    DiskFullError,
    InvalidKeyError,
    InvalidValueError,
    LimitExceededError,
    LockedError,
    StorageIOError,
    UsageError,
)
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.engine import Options

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Any]:
    d = keeldb.open(str(tmp_path / "db"), sync="never")
    yield d
    d.close()


# --- keys and values ------------------------------------------------------------------------

NOT_BYTES: list[object] = ["text", 42, None, 3.5, ["a"]]


@pytest.mark.parametrize("bad", NOT_BYTES, ids=lambda b: type(b).__name__)
def test_non_bytes_key_is_refused_with_its_type_and_the_fix(db: Any, bad: object) -> None:
    for call in (lambda: db.put(bad, b"v"), lambda: db.get(bad), lambda: db.delete(bad)):
        with pytest.raises(InvalidKeyError) as info:
            call()
        msg = str(info.value)
        assert type(bad).__name__ in msg and "bytes" in msg
        assert "encode" in msg  # says how to fix it
    assert isinstance(info.value, UsageError)


@pytest.mark.parametrize("bad", NOT_BYTES, ids=lambda b: type(b).__name__)
def test_non_bytes_value_is_refused(db: Any, bad: object) -> None:
    with pytest.raises(InvalidValueError) as info:
        db.put(b"k", bad)
    assert type(bad).__name__ in str(info.value) and "encode" in str(info.value)
    assert db.get(b"k") is None


def test_empty_key_is_refused(db: Any) -> None:
    with pytest.raises(InvalidKeyError, match="empty"):
        db.put(b"", b"v")
    with pytest.raises(InvalidKeyError, match="empty"):
        db.get(b"")


def test_key_over_the_limit_names_size_and_limit(db: Any) -> None:
    at_limit = b"k" * limits.key_bytes_max
    db.put(at_limit, b"ok")  # exactly at the limit is allowed
    assert db.get(at_limit) == b"ok"
    over = b"k" * (limits.key_bytes_max + 1)
    with pytest.raises(InvalidKeyError) as info:
        db.put(over, b"v")
    msg = str(info.value)
    assert str(limits.key_bytes_max + 1) in msg and str(limits.key_bytes_max) in msg
    assert "key_bytes_max" in msg


def test_value_over_the_limit_names_size_and_limit(db: Any) -> None:
    over = b"v" * (limits.value_bytes_max + 1)
    with pytest.raises(InvalidValueError) as info:
        db.put(b"big", over)
    msg = str(info.value)
    assert str(limits.value_bytes_max + 1) in msg and "value_bytes_max" in msg
    assert db.get(b"big") is None


def test_empty_value_is_a_value(db: Any) -> None:
    db.put(b"k", b"")
    assert db.get(b"k") == b""


def test_bytearray_and_memoryview_are_accepted_as_bytes(db: Any) -> None:
    db.put(bytearray(b"ka"), memoryview(b"va"))
    assert db.get(b"ka") == b"va"
    assert db.get(bytearray(b"ka")) == b"va"


def test_bad_op_in_a_batch_applies_nothing(db: Any) -> None:
    db.put(b"before", b"1")
    with pytest.raises(InvalidKeyError):
        with db.write_batch() as wb:
            wb.put(b"good", b"v")
            wb.put("bad", b"v")
            wb.delete(b"before")
    assert db.get(b"good") is None
    assert db.get(b"before") == b"1"


def test_exception_inside_a_batch_discards_it(db: Any) -> None:
    with pytest.raises(RuntimeError):
        with db.write_batch() as wb:
            wb.put(b"a", b"1")
            raise RuntimeError("caller gave up")
    assert db.get(b"a") is None


def test_batch_over_batch_ops_max_is_refused_and_applies_nothing(db: Any) -> None:
    with pytest.raises(LimitExceededError) as info:
        with db.write_batch() as wb:
            for i in range(limits.batch_ops_max + 1):
                wb.put(b"b%06d" % i, b"")
    assert "batch_ops_max" in str(info.value) and str(limits.batch_ops_max) in str(info.value)
    assert db.get(b"b000000") is None


def test_scan_limit_over_the_maximum_is_refused(db: Any) -> None:
    with pytest.raises(LimitExceededError, match="scan_limit_max"):
        list(db.scan(limit=limits.scan_limit_max + 1))
    with pytest.raises(UsageError):
        list(db.scan(limit=-1))


# --- use after close ---------------------------------------------------------------------------


def test_use_after_close_raises_closed_error(tmp_path: Path) -> None:
    db = keeldb.open(str(tmp_path / "db"))
    db.put(b"k", b"v")
    db.close()

    def batch() -> None:
        with db.write_batch() as wb:
            wb.put(b"x", b"y")

    calls = {
        "put": lambda: db.put(b"k", b"v"),
        "get": lambda: db.get(b"k"),
        "delete": lambda: db.delete(b"k"),
        "scan": lambda: list(db.scan()),
        "snapshot": lambda: db.snapshot(),
        "write_batch": batch,
        "stats": lambda: db.stats(),
    }
    for name, call in calls.items():
        with pytest.raises(ClosedError) as info:
            call()
        assert "closed" in str(info.value).lower(), name
    db.close()  # closing twice is harmless


def test_snapshot_of_a_closed_store_raises_closed_error(tmp_path: Path) -> None:
    db = keeldb.open(str(tmp_path / "db"))
    db.put(b"k", b"v")
    snap = db.snapshot()
    assert snap.get(b"k") == b"v"
    db.close()
    with pytest.raises(ClosedError):
        snap.get(b"k")
    with pytest.raises(ClosedError):
        list(snap.scan())
    snap.close()  # releasing a snapshot of a closed store is harmless


def test_closed_error_is_a_usage_error(tmp_path: Path) -> None:
    db = keeldb.open(str(tmp_path / "db"))
    db.close()
    with pytest.raises(UsageError):
        db.get(b"k")


def test_reopen_after_close_sees_the_data(tmp_path: Path) -> None:
    with keeldb.open(str(tmp_path / "db")) as db:
        db.put(b"k", b"v")
    with keeldb.open(str(tmp_path / "db")) as db:
        assert db.get(b"k") == b"v"


def test_open_missing_store_without_create_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(keeldb.KeeldbError):
        keeldb.open(str(tmp_path / "absent"), create=False)
    assert not (tmp_path / "absent").exists()


# --- the directory lock between processes -----------------------------------------------------

HOLDER = """
import sys, keeldb
db = keeldb.open(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
db.close()
"""

OPENER = """
import os, sys, keeldb
try:
    keeldb.open(sys.argv[1]).close()
    print("opened")
except keeldb.LockedError as exc:
    print("LockedError", exc)
"""


def _python(code: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], text=True, cwd=REPO, **kw)


def test_second_process_gets_locked_error_naming_the_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    holder = _python(HOLDER, path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        # This process is the second opener.
        with pytest.raises(LockedError) as info:
            keeldb.open(path)
        assert f"pid={holder.pid}" in str(info.value) or str(holder.pid) in str(info.value)
        # So is another process.
        out = subprocess.run([sys.executable, "-c", OPENER, path], capture_output=True,
                             text=True, cwd=REPO, timeout=60)
        assert out.stdout.startswith("LockedError"), out.stdout + out.stderr
        assert str(holder.pid) in out.stdout
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=60)
        holder.stdout.close()
    # Once the holder closed, the store opens normally.
    with keeldb.open(path) as db:
        db.put(b"k", b"v")


def test_lock_of_a_killed_holder_is_released(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    holder = _python(HOLDER, path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdin is not None and holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # SIGKILL: the kernel drops the lock with the process
    holder.wait(timeout=60)
    holder.stdin.close()
    holder.stdout.close()
    with keeldb.open(path) as db:
        db.put(b"k", b"v")


# --- a full disk: a real 3 MiB tmpfs in a private mount namespace ------------------------------

FILL_CHILD = """
import json, os, sys
import keeldb
root = sys.argv[1]
ballast = os.path.join(root, "ballast")
with open(ballast, "wb") as f:
    f.write(b"x" * 1024 * 1024)  # freed later: more than recovery needs (logs -> table)
path = os.path.join(root, "db")
result = {"acked": 0}
db = keeldb.open(path, sync="always", memtable_bytes=64 * 1024, table_bytes=64 * 1024)
acked = []
try:
    for i in range(200_000):
        db.put(b"k%08d" % i, b"v" * 200)
        acked.append(i)
except keeldb.KeeldbError as exc:
    result["error_type"] = type(exc).__name__
    result["storage_io"] = isinstance(exc, keeldb.StorageIOError)
    result["message"] = str(exc)
result["acked"] = len(acked)
result["unreadable"] = [i for i in acked if db.get(b"k%08d" % i) != b"v" * 200]
try:
    db.put(b"after", b"v")
    result["second_write"] = "ok"
except keeldb.KeeldbError as exc:
    result["second_write"] = type(exc).__name__
try:
    db.close()
    result["close"] = "ok"
except keeldb.KeeldbError as exc:
    result["close"] = type(exc).__name__
try:  # reopening on the still-full disk: fine, or a typed error that changes nothing
    keeldb.open(path).close()
    result["reopen_full"] = "ok"
except keeldb.KeeldbError as exc:
    result["reopen_full"] = type(exc).__name__
os.remove(ballast)
with keeldb.open(path) as db2:
    got = dict(db2.scan())
result["lost_after_reopen"] = [i for i in acked if got.get(b"k%08d" % i) != b"v" * 200]
present = sorted(int(k[1:]) for k in got if k.startswith(b"k"))
result["prefix"] = present == list(range(len(present)))
result["survived"] = len(present)
print(json.dumps(result))
"""


def _run_in_small_tmpfs(tmp_path: Path, code: str) -> dict[str, Any]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) not found: cannot make a small filesystem without root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = 'mount -t tmpfs -o size=3m keeldb-enospc "$1" || exit 97; exec "$2" -c "$3" "$1"'
    out = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
         str(mnt), sys.executable, code],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
            str(REPO), os.environ.get("PYTHONPATH", "")]))},
    )
    if out.returncode == 97 or "unshare failed" in out.stderr or (
            out.returncode != 0 and "Operation not permitted" in out.stderr):
        pytest.skip(f"no private mount namespace here: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_enospc_on_a_real_filesystem(tmp_path: Path) -> None:
    r = _run_in_small_tmpfs(tmp_path, FILL_CHILD)
    assert "error_type" in r, f"filled 3 MiB without an error: {r}"
    assert r["storage_io"], f"ENOSPC surfaced as {r['error_type']}: {r['message']}"
    assert "space" in r["message"].lower(), r["message"]
    assert r["unreadable"] == [], "acknowledged writes unreadable after ENOSPC"
    assert r["second_write"] != "ok", "a write succeeded on a store that hit ENOSPC"
    assert r["reopen_full"] in ("ok", "DiskFullError", "StorageIOError"), r
    assert r["lost_after_reopen"] == [], f"acknowledged writes lost: {r}"
    assert r["prefix"], f"recovered keys are not a prefix: {r}"
    assert r["survived"] >= r["acked"]


# --- a full disk and a failing fsync on the in-memory disk, through the engine API -------------


def _engine(disk: MemoryDisk) -> Any:
    from keeldb.storage.lsm import LsmEngine

    return LsmEngine(disk, Options(memtable_bytes=4096, table_bytes=4096, block_bytes=512,
                                   l0_compaction_trigger=2, level1_bytes=16 * 1024))


def _ekey(i: int) -> bytes:
    return b"e%06d" % i


def _drive_until_io_error(engine: Any, acked: list[int], count: int) -> StorageIOError:
    """Write synced puts, running flushes and compactions as the embedded DB would."""
    for i in range(count):
        try:
            engine.put(_ekey(i), b"v%06d" % i * 8, sync=True)
            acked.append(i)
            while engine.flush_step():
                pass
            engine.compact_step()
        except StorageIOError as exc:
            return exc
    raise AssertionError(f"{count} writes never hit the injected fault")


def _recovered_indexes(disk: MemoryDisk) -> list[int]:
    engine = _engine(disk)
    try:
        got = dict(engine.scan())
    finally:
        engine.close()
    for k, v in got.items():
        assert v == b"v%06d" % int(k[1:]) * 8, f"wrong value for {k!r}"
    return sorted(int(k[1:]) for k in got)


def _assert_read_only_then_recovers(engine: Any, disk: MemoryDisk, acked: list[int]) -> None:
    for i in acked:  # the store stays readable
        assert engine.get(_ekey(i)) == b"v%06d" % i * 8
    with pytest.raises(StorageIOError, match="reopen"):  # and refuses writes until reopened
        engine.put(b"after", b"x", sync=True)
    with contextlib.suppress(StorageIOError):
        engine.close()
    disk.space_bytes_max = None
    disk.fail_syncs = 0
    disk.crash()  # worst case: power loss right after the error
    present = _recovered_indexes(disk)
    assert present == list(range(len(present))), "recovered writes are not a prefix"
    assert len(present) >= len(acked), "an acknowledged (synced) write was lost"
    assert len(present) <= len(acked) + 1
    # Reopened with space again, the store takes writes.
    engine = _engine(disk)
    engine.put(b"after", b"x", sync=True)
    assert engine.get(b"after") == b"x"
    engine.close()


@pytest.mark.parametrize("space", [6_000, 20_000, 60_000])
def test_enospc_on_memory_disk_is_typed_and_loses_nothing(space: int) -> None:
    disk = MemoryDisk(space_bytes_max=space)
    engine = _engine(disk)
    acked: list[int] = []
    exc = _drive_until_io_error(engine, acked, 10_000)
    assert isinstance(exc, DiskFullError), f"{type(exc).__name__}: {exc}"
    assert "space" in str(exc)
    assert acked, "the disk filled before the first write"
    _assert_read_only_then_recovers(engine, disk, acked)


@pytest.mark.parametrize("after", [0, 7, 150])
def test_fsync_failure_is_typed_and_never_retried_as_success(after: int) -> None:
    disk = MemoryDisk()
    engine = _engine(disk)
    acked: list[int] = []
    for i in range(after):
        engine.put(_ekey(i), b"v%06d" % i * 8, sync=True)
        acked.append(i)
        while engine.flush_step():
            pass
        engine.compact_step()
    disk.fail_syncs = 1
    exc = _drive_until_io_error(engine, acked, 10_000)
    assert "I/O error" in str(exc)
    _assert_read_only_then_recovers(engine, disk, acked)

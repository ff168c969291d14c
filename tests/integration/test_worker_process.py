"""Flushes and compactions in the worker process (`keeldb.open(background="process")`).

Hazards covered: the worker dies mid-compaction (the job reruns in-process and the store keeps
working), the parent is SIGKILLed mid-compaction (the worker exits, recovery deletes its
outputs), a reopen while an orphaned worker still holds the lock, close() while a job runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crash_child  # noqa: E402
from test_crash_kill import check_recovery, run_child  # noqa: E402

import keeldb  # noqa: E402
from keeldb.errors import ConfigError, LockedError  # noqa: E402
from keeldb.runtime.real import compactor  # noqa: E402
from keeldb.runtime.real.disk import RealDisk  # noqa: E402
from keeldb.storage.manifest import read_manifest, table_name  # noqa: E402

SMALL: dict[str, Any] = dict(crash_child.SMALL_OPTIONS)
WAIT_S = 60  # bound of every wait below (a hang is a failure, not a stuck suite)


def _fill(db: keeldb.DB, start: int, count: int) -> None:
    """Put keys start..start+count-1 in a scattered order (tables overlap: real merges)."""
    for j in range(count):
        i = start + j * 7919 % count
        db.put(crash_child.key(i), crash_child.value(i))


def _expected(count: int) -> dict[bytes, bytes]:
    return {crash_child.key(i): crash_child.value(i) for i in range(count)}


def _tables_on_disk_match_manifest(path: Path) -> None:
    state = read_manifest(RealDisk(str(path), create=False))
    assert state is not None
    on_disk = sorted(n for n in os.listdir(path) if n.endswith(".sst"))
    assert on_disk == sorted(table_name(t) for t in state.table_ids())


def test_background_knob_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="background"):
        keeldb.open(str(tmp_path / "db"), background="fibers")


@pytest.mark.parametrize("background", ["process", "thread"])
def test_both_backgrounds_give_the_same_store(tmp_path: Path, background: str) -> None:
    path = tmp_path / background
    with keeldb.open(str(path), background=background, **SMALL) as db:
        _fill(db, 0, 600)
        with db.snapshot() as snap:  # compaction keeps the versions a snapshot reads
            _fill(db, 0, 50)
            db.compact()
            assert snap.get(crash_child.key(1)) == crash_child.value(1)
        stats = db.stats()
        assert stats.flushes > 1 and stats.compactions > 0
        runner = db._runner
        if background == "process":
            assert runner is not None and runner.failed is None
            assert runner._workers["compact"].proc is not None  # the worker did the work
        else:
            assert runner is None
        assert dict(db.scan()) == _expected(600)
    _tables_on_disk_match_manifest(path)
    with keeldb.open(str(path)) as db:
        assert dict(db.scan()) == _expected(600)


def _kill_worker_at(db_ref: list[Any], point: str) -> Callable[[str], None]:
    """A crash hook that SIGKILLs the compaction worker the first time it reports `point`."""
    fired: list[str] = []

    def hook(name: str) -> None:
        if name == point and not fired and db_ref:
            proc = db_ref[0]._runner._workers["compact"].proc
            if proc is not None:  # None when the job already runs in-process
                fired.append(name)
                proc.kill()
                proc.wait()

    hook.fired = fired  # type: ignore[attr-defined]
    return hook


def test_worker_killed_mid_compaction_falls_back_in_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db_ref: list[Any] = []
    hook = _kill_worker_at(db_ref, "compaction-mid-output")
    path = tmp_path / "db"
    with caplog.at_level(logging.WARNING, logger="keeldb.embedded"):
        with keeldb.open(str(path), crash_hook=hook, **SMALL) as db:
            db_ref.append(db)
            _fill(db, 0, 800)
            db.compact()
            assert hook.fired == ["compaction-mid-output"]  # type: ignore[attr-defined]
            assert db._runner is not None and db._runner.failed is not None
            assert db.stats().compactions > 0
            _fill(db, 800, 200)  # the store keeps working, jobs now in-process
            db.compact()
            assert dict(db.scan()) == _expected(1000)
    assert any("in-process" in r.getMessage() for r in caplog.records)
    _tables_on_disk_match_manifest(path)
    with keeldb.open(str(path)) as db:
        assert dict(db.scan()) == _expected(1000)


def test_worker_that_cannot_start_falls_back(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compactor, "MODULE", "keeldb.no_such_worker_module")
    with keeldb.open(str(tmp_path / "db"), **SMALL) as db:
        _fill(db, 0, 300)
        db.compact()
        assert db._runner is not None and "died" in (db._runner.failed or "")
        assert dict(db.scan()) == _expected(300)


def test_close_cancels_a_running_compaction(tmp_path: Path) -> None:
    reached = threading.Event()
    release = threading.Event()

    def hook(name: str) -> None:  # holds the first compaction at its first output
        if name == "compaction-mid-output" and not reached.is_set():
            reached.set()
            assert release.wait(WAIT_S)

    path = tmp_path / "db"
    db = keeldb.open(str(path), crash_hook=hook, **SMALL)
    _fill(db, 0, 600)
    assert reached.wait(WAIT_S)
    assert db._runner is not None
    proc = db._runner._workers["compact"].proc
    assert proc is not None
    closer = threading.Thread(target=db.close)
    closer.start()
    assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL  # close() killed it mid-job
    release.set()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    assert db._bg_error is None  # a cancelled job is not a background failure
    _tables_on_disk_match_manifest(path)
    with keeldb.open(str(path)) as db2:
        assert dict(db2.scan()) == _expected(600)


@pytest.mark.parametrize("point", ["compaction-mid-output", "flush-mid-table"])
def test_parent_killed_mid_job_in_the_worker(tmp_path: Path, point: str) -> None:
    """The crash point is reported by the worker; the parent dies there, the worker follows
    (stdin EOF) and the reopen (which may find the orphan still exiting) recovers."""
    path = tmp_path / "db"
    run = run_child(path, sync="always", start=0, count=400, crash_point=point, crash_at=2)
    assert run.returncode == -signal.SIGKILL, run.stderr
    check_recovery(path, "always", 0, run)
    _tables_on_disk_match_manifest(path)


def test_reopen_waits_for_an_orphaned_worker(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with keeldb.open(str(path)) as db:
        db.put(b"k", b"v")
    # A dead parent: the pid of a process that has exited.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    fd = os.open(path / "LOCK", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid={gone.stdout.strip()} host={os.uname().nodename}\n".encode(), 0)
    orphan = subprocess.Popen([sys.executable, "-m", compactor.MODULE, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(fd,))
    os.close(fd)  # only the orphan holds the lock now
    assert orphan.stdin is not None and orphan.stdout is not None
    result: list[Any] = []
    opener = threading.Thread(target=lambda: result.append(keeldb.open(str(path))))
    opener.start()
    orphan.stdin.close()  # what the parent's death does: the worker exits, the lock frees
    orphan.wait(timeout=WAIT_S)
    orphan.stdout.close()
    opener.join(WAIT_S)
    assert len(result) == 1, "open did not wait for the orphan to exit"
    with result[0] as db:
        assert db.get(b"k") == b"v"


def test_live_holder_is_still_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with keeldb.open(str(path)):
        with pytest.raises(LockedError, match="open in another process"):
            keeldb.open(str(path))


def test_idle_store_merges_l0_into_l1_below_the_trigger(tmp_path: Path) -> None:
    options = dict(SMALL, l0_compaction_trigger=8)
    with keeldb.open(str(tmp_path / "db"), **options) as db:
        _fill(db, 0, 300)
        db.flush()
        assert 2 <= db.stats().levels[0].files < 8  # below the trigger: no regular compaction
        deadline = threading.Event()
        for _ in range(WAIT_S * 20):  # writes have paused: the idle compaction comes
            if db.stats().levels[0].files == 0:
                break
            deadline.wait(0.05)
        levels = db.stats().levels
        assert levels[0].files == 0 and sum(lv.files for lv in levels[1:]) > 0
        assert dict(db.scan()) == _expected(300)


def test_idle_workers_recycle_and_keep_serving_jobs(tmp_path: Path) -> None:
    """A worker idle after a job re-executes itself (same pid, fresh memory); its next job
    waits for the new image and runs there, nothing falls back in-process."""
    path = tmp_path / "db"
    with keeldb.open(str(path), **SMALL) as db:
        runner = db._runner
        assert runner is not None
        runner.idle_s = 3600.0  # no recycling while the first jobs run
        _fill(db, 0, 400)
        db.compact()
        workers = runner._workers
        used = {role: w.proc.pid for role, w in workers.items() if w.proc and w.used}
        assert used, "the jobs ran in worker processes"
        runner.idle_s = 0.0  # every used idle worker recycles at the next background tick
        deadline = time.monotonic() + WAIT_S
        while any(workers[role].recycles == 0 for role in used):
            assert time.monotonic() < deadline, "idle workers were not recycled"
            time.sleep(0.01)
        runner.idle_s = 3600.0
        for role, pid in used.items():
            proc = workers[role].proc
            assert proc is not None and proc.pid == pid and proc.poll() is None
            while not _runs_recycled_image(pid):  # the same process, the new image
                assert time.monotonic() < deadline, "the worker did not re-execute"
                time.sleep(0.01)
        _fill(db, 400, 400)
        db.compact()
        assert runner.failed is None, runner.failed
        for role, pid in used.items():
            proc = workers[role].proc
            assert proc is not None and proc.pid == pid, "a recycled worker runs the new jobs"
            assert workers[role].used and not workers[role].awaiting_ready
        assert dict(db.scan()) == _expected(800)
    _tables_on_disk_match_manifest(path)


def _runs_recycled_image(pid: int) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return compactor.RECYCLED.encode() in f.read().split(b"\0")

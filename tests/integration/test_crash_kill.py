"""SIGKILL crash tests on the real filesystem.

A writer child process (`crash_child.py`) performs numbered operations and acknowledges each
one on its stdout after it returns. The parent kills it with SIGKILL, (a) after a random
number of acknowledgements and (b) from inside the engine, the N-th time it passes a named
crash point (`keeldb.storage.engine.CRASH_POINTS`). After every kill the parent reopens the
store and checks:

- what survives is exactly the state after a PREFIX of the operations (the model of
  `crash_child`): never a later write without an earlier one, batches all-or-nothing;
- at most the one operation in flight (started, not acknowledged) may appear beyond the
  acknowledged ones;
- with sync="always" every acknowledged operation is present;
- nothing that survived an earlier recovery is lost later.

The default run makes 12 kills. The soak (`-m slow`) makes many more:

    python -m pytest -m slow tests/integration/test_crash_kill.py
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crash_child  # noqa: E402

import keeldb  # noqa: E402
from keeldb.storage.engine import CRASH_POINTS  # noqa: E402

CHILD = Path(crash_child.__file__).resolve()
REPO = CHILD.parent.parent.parent
CHILD_TIMEOUT_S = 120  # a hung child is a failure, not a hang of the suite


@dataclass
class Run:
    """What the parent learned from one child run."""

    acked: list[int]
    done: bool
    returncode: int
    stderr: str


def run_child(
    path: Path,
    *,
    sync: str,
    start: int,
    count: int,
    kill_after_acks: int | None = None,
    crash_point: str | None = None,
    crash_at: int = 1,
) -> Run:
    """Run the writer; SIGKILL it after `kill_after_acks` acknowledgements if given."""
    cmd = [sys.executable, str(CHILD), "--path", str(path), "--sync", sync,
           "--start", str(start), "--count", str(count)]
    if crash_point is not None:
        cmd += ["--crash-point", crash_point, "--crash-at", str(crash_at)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    acked: list[int] = []
    done = False
    killed = False
    try:
        for line in proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ack":
                acked.append(int(rest))
                if kill_after_acks is not None and len(acked) >= kill_after_acks and not killed:
                    proc.send_signal(signal.SIGKILL)
                    killed = True  # keep reading: acks already in the pipe count too
            elif word == "done":
                done = True
        returncode = proc.wait(timeout=CHILD_TIMEOUT_S)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert acked == list(range(start, start + len(acked))), "child acknowledged out of order"
    return Run(acked, done, returncode, stderr)


def recovered_state(path: Path, sync: str) -> dict[bytes, bytes]:
    """Reopen the store in this process and read everything."""
    with keeldb.open(str(path), sync=sync) as db:
        return dict(db.scan())


def check_recovery(path: Path, sync: str, start: int, run: Run) -> int:
    """Assert the recovered store is a prefix of the operations; return how many survived."""
    state = recovered_state(path, sync)
    n = crash_child.surviving_ops(state)
    acked_end = start + len(run.acked)
    context = (f"sync={sync} start={start} acked={len(run.acked)} survived={n} "
               f"rc={run.returncode} stderr={run.stderr[-2000:]!r}")
    assert state == crash_child.model(n), f"recovered state is not a prefix: {context}"
    assert n >= start, f"a write that survived an earlier recovery was lost: {context}"
    # Single-threaded writer: at most one operation was in flight when it died.
    assert n <= acked_end + 1, f"more than the in-flight op beyond the acks: {context}"
    if sync == "always":
        assert n >= acked_end, f"an acknowledged write was lost under sync=always: {context}"
    return n


# --- (a) kills at random moments --------------------------------------------------------------

RANDOM_SEED = 20261122
RANDOM_KILLS = 5
RANDOM_POLICIES = ("always", "batch", "never", "always", "batch")


def random_kill_series(path: Path, seed: int, policies: tuple[str, ...],
                       max_acks: int) -> list[tuple[str, int, int]]:
    """Kill a writer on the same store again and again; each run continues the sequence."""
    rng = random.Random(f"{seed}:random-kills")
    start = 0
    log: list[tuple[str, int, int]] = []
    for sync in policies:
        target = rng.randint(1, max_acks)
        run = run_child(path, sync=sync, start=start, count=max_acks * 4,
                        kill_after_acks=target)
        assert not run.done, f"child finished before the kill; raise --count: {run.stderr}"
        assert run.returncode == -signal.SIGKILL, run.stderr
        start = check_recovery(path, sync, start, run)
        log.append((sync, len(run.acked), start))
    return log


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    log = random_kill_series(tmp_path / "db", RANDOM_SEED, RANDOM_POLICIES, max_acks=400)
    assert len(log) == RANDOM_KILLS
    assert log[-1][2] > 0  # the store made progress across the kills


# --- (b) kills at every named crash point ----------------------------------------------------

POINT_OPS = 600  # enough operations that every flush/compaction point is passed


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_crash_point(tmp_path: Path, point: str) -> None:
    path = tmp_path / "db"
    run = run_child(path, sync="always", start=0, count=POINT_OPS, crash_point=point,
                    crash_at=2)
    assert run.returncode == -signal.SIGKILL, (
        f"the engine never passed crash point {point!r} twice in {POINT_OPS} operations "
        f"plus flush() and compact() (rc={run.returncode}, stderr={run.stderr[-2000:]!r})")
    n = check_recovery(path, "always", 0, run)
    # The store still takes writes after recovering, and recovers again.
    again = run_child(path, sync="always", start=n, count=50)
    assert again.done and again.returncode == 0, again.stderr
    check_recovery(path, "always", n, again)


# --- soak: many kills (run with -m slow) -------------------------------------------------------


def _soak_selected(config: pytest.Config) -> bool:
    return "slow" in str(config.getoption("markexpr") or "")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_soak_random_kills(tmp_path: Path, request: pytest.FixtureRequest, seed: int) -> None:
    if not _soak_selected(request.config):
        pytest.skip("soak: run with `python -m pytest -m slow`")
    policies = ("always", "batch", "never") * 8
    log = random_kill_series(tmp_path / "db", seed, policies, max_acks=1500)
    assert len(log) == len(policies)


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
@pytest.mark.parametrize("sync", ["always", "batch"])
def test_soak_crash_points(tmp_path: Path, request: pytest.FixtureRequest, point: str,
                           sync: str) -> None:
    if not _soak_selected(request.config):
        pytest.skip("soak: run with `python -m pytest -m slow`")
    for crash_at in (1, 3, 7):
        path = tmp_path / f"db-{crash_at}"
        run = run_child(path, sync=sync, start=0, count=2000, crash_point=point,
                        crash_at=crash_at)
        if run.returncode == 0:  # the point was passed fewer times than crash_at
            assert run.done
        else:
            assert run.returncode == -signal.SIGKILL, run.stderr
        check_recovery(path, sync, 0, run)

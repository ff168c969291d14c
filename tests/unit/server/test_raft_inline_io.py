"""When a Raft server runs a disk job on its event loop instead of the disk thread."""

from __future__ import annotations

from keeldb import limits
from keeldb.server.raft_apply import inline_disk_job


def test_a_leader_with_a_few_waiting_requests_runs_any_job_inline() -> None:
    big = 10 * limits.server_raft_inline_io_bytes_max
    for pending in range(1, limits.server_raft_inline_sync_pending_max + 1):
        assert inline_disk_job(pending, big)
        assert inline_disk_job(pending, 0)


def test_a_busy_leader_hands_every_job_to_the_disk_thread() -> None:
    busy = limits.server_raft_inline_sync_pending_max + 1
    assert not inline_disk_job(busy, 0)
    assert not inline_disk_job(busy, 100)


def test_a_follower_runs_only_small_jobs_inline() -> None:
    small = limits.server_raft_inline_io_bytes_max
    assert inline_disk_job(0, 0)  # a sync alone (or a hard state)
    assert inline_disk_job(0, small)
    assert not inline_disk_job(0, small + 1)  # a busy leader's batch: the loop stays free

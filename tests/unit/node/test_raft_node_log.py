"""raft_log: what a Ready writes, what survives a crash, torn tails, corruption, compaction."""

from __future__ import annotations

import pytest

from keeldb.consensus import ConfState, Entry, HardState, Ready, Snapshot, SnapshotMeta
from keeldb.errors import CorruptionError
from keeldb.node import raft_codec
from keeldb.node.raft_log import LOG_FILE, SNAP_FILE, DurableLog, Write, recover, recover_prefix
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.types import NodeId

VOTERS = (NodeId("n1"), NodeId("n2"), NodeId("n3"))


def execute(disk: MemoryDisk, writes: list[Write], sync: bool = True) -> None:
    """Run writes the way the driver runs Persist effects, then one Sync of the log."""
    for w in writes:
        if w.replace:
            f = disk.create(w.file + ".tmp")
            f.append(w.data)
            f.sync()
            f.close()
            disk.rename(w.file + ".tmp", w.file)
            disk.sync_dir()
        else:
            if not disk.exists(w.file):
                disk.create(w.file).close()
                disk.sync_dir()
            f = disk.open(w.file, append=True)
            f.append(w.data)
            f.close()
    if sync:
        disk.open(LOG_FILE, append=True).sync()


def files(disk: MemoryDisk) -> dict[str, bytes]:
    out = {}
    for name in disk.list():
        f = disk.open(name)
        out[name] = f.read_at(0, f.size())
    return out


def ents(lo: int, hi: int, term: int) -> tuple[Entry, ...]:
    return tuple(Entry(i, term, f"v{i}".encode()) for i in range(lo, hi + 1))


def booted() -> tuple[MemoryDisk, DurableLog]:
    disk = MemoryDisk()
    log, writes = DurableLog.bootstrap(VOTERS)
    execute(disk, writes)
    return disk, log


def persist(disk: MemoryDisk, log: DurableLog, rd: Ready, sync: bool = True) -> None:
    execute(disk, log.ready_writes(rd), sync)
    log.apply_ready(rd)


def test_bootstrap_recovers_the_founding_membership() -> None:
    disk, _ = booted()
    rec = recover(files(disk))
    assert rec.problem == "" and not rec.empty
    st = rec.storage
    assert st.snapshot().meta.conf_state == ConfState(VOTERS)
    assert (st.first_index(), st.last_index()) == (2, 1)
    assert st.hard_state == HardState(1, NodeId(""), 1)


def test_empty_disk_is_a_first_boot() -> None:
    assert recover({}).empty


def test_entries_and_hard_state_survive_a_crash_once_synced() -> None:
    disk, log = booted()
    persist(disk, log, Ready(entries=ents(2, 5, 2), hard_state=HardState(2, NodeId("n1"), 4)))
    disk.crash()
    st = recover(files(disk)).storage
    assert st.last_index() == 5 and st.term(5) == 2
    assert st.entries(2, 6, 1 << 30) == list(ents(2, 5, 2))
    assert st.hard_state == HardState(2, NodeId("n1"), 4)


def test_a_crash_loses_only_the_unsynced_records() -> None:
    disk, log = booted()
    persist(disk, log, Ready(entries=ents(2, 3, 2), hard_state=HardState(2, NodeId("n1"), 3)))
    persist(disk, log, Ready(entries=ents(4, 6, 2), hard_state=HardState(2, NodeId("n1"), 6)),
            sync=False)
    disk.crash()
    rec = recover(files(disk))
    assert rec.problem == ""
    assert rec.storage.last_index() == 3
    assert rec.storage.hard_state.commit == 3


def test_a_conflicting_suffix_is_truncated_on_replay() -> None:
    disk, log = booted()
    persist(disk, log, Ready(entries=ents(2, 6, 2), hard_state=HardState(2, NodeId("n2"), 3)))
    persist(disk, log, Ready(entries=ents(5, 5, 3), hard_state=HardState(3, NodeId(""), 3)))
    st = recover(files(disk)).storage
    assert st.last_index() == 5 and st.term(5) == 3 and st.term(4) == 2


def test_a_torn_tail_is_reported_and_the_prefix_recovers() -> None:
    disk, log = booted()
    persist(disk, log, Ready(entries=ents(2, 3, 2), hard_state=HardState(2, NodeId("n1"), 3)))
    good = files(disk)
    record = raft_codec.encode_record(["e", [raft_codec.entry_to_plain(e) for e in ents(4, 9, 2)]])
    for cut in (3, 8, len(record) - 1):
        torn = dict(good)
        torn[LOG_FILE] = good[LOG_FILE] + record[:cut]
        rec = recover(torn)
        assert rec.problem == "torn" and rec.log_valid == len(good[LOG_FILE])
        st = recover_prefix(torn, rec.log_valid)
        assert st.last_index() == 3


def test_a_flipped_bit_inside_the_log_is_corruption() -> None:
    disk, log = booted()
    persist(disk, log, Ready(entries=ents(2, 3, 2), hard_state=HardState(2, NodeId("n1"), 3)))
    persist(disk, log, Ready(entries=ents(4, 5, 2)))
    base_len = len(files(disk)[LOG_FILE]) - 60
    disk.flip_byte(LOG_FILE, base_len)  # inside a record that has whole records after it
    rec = recover(files(disk))
    assert rec.problem == "corrupt" and rec.where == LOG_FILE


def test_any_damage_to_the_snapshot_file_is_corruption() -> None:
    disk, _ = booted()
    disk.flip_byte(SNAP_FILE, 10)
    assert recover(files(disk)).problem == "corrupt"


def test_a_record_of_unknown_kind_raises_corruption() -> None:
    disk, _ = booted()
    f = disk.open(LOG_FILE, append=True)
    f.append(raft_codec.encode_record(["zz", 1]))
    with pytest.raises(CorruptionError, match="unknown record kind"):
        recover(files(disk))


def test_compaction_writes_a_snapshot_and_shortens_the_log() -> None:
    disk, log = booted()
    persist(disk, log, Ready(entries=ents(2, 40, 2), hard_state=HardState(2, NodeId("n1"), 40)))
    before = len(files(disk)[LOG_FILE])
    execute(disk, log.compact(30, ConfState(VOTERS), b"image@30", keep=5))
    after = files(disk)
    assert len(after[LOG_FILE]) < before
    disk.crash()
    st = recover(files(disk)).storage
    assert st.snapshot().index == 30 and st.snapshot().data == b"image@30"
    assert st.last_index() == 40 and st.first_index() == 31
    assert st.hard_state.commit == 40


def test_a_crash_between_the_snapshot_and_the_log_replace_recovers() -> None:
    disk, log = booted()
    persist(disk, log, Ready(entries=ents(2, 20, 2), hard_state=HardState(2, NodeId("n1"), 20)))
    snap_write, _log_write = log.compact(15, ConfState(VOTERS), b"img", keep=0)
    execute(disk, [snap_write], sync=False)  # the crash comes before the log's replace
    disk.crash()
    st = recover(files(disk)).storage
    assert st.snapshot().index == 15 and st.last_index() == 20 and st.term(20) == 2


def test_an_installed_snapshot_replaces_a_divergent_log() -> None:
    disk, log = booted()
    persist(disk, log, Ready(entries=ents(2, 8, 2), hard_state=HardState(2, NodeId("n1"), 3)))
    snap = Snapshot(SnapshotMeta(50, 4, ConfState(VOTERS)), b"leader image")
    rd = Ready(snapshot=snap, hard_state=HardState(4, NodeId(""), 50))
    writes = log.ready_writes(rd)
    assert [w.file for w in writes] == [SNAP_FILE, LOG_FILE] and all(w.replace for w in writes)
    # Crash after the snapshot file only: the old log (terms 2) does not hold entry 50.
    execute(disk, writes[:1], sync=False)
    disk.crash()
    st = recover(files(disk)).storage
    assert st.snapshot().index == 50 and st.last_index() == 50
    assert st.hard_state.commit == 50
    # The whole batch: a log that starts at the snapshot.
    execute(disk, writes)
    log.apply_ready(rd)
    persist(disk, log, Ready(entries=ents(51, 52, 4)))
    st = recover(files(disk)).storage
    assert (st.first_index(), st.last_index(), st.hard_state.term) == (51, 52, 4)


def test_a_missing_log_after_the_first_snapshot_write_recovers() -> None:
    disk = MemoryDisk()
    _, writes = DurableLog.bootstrap(VOTERS)
    execute(disk, writes[:1], sync=False)  # crash before the log was written
    rec = recover(files(disk))
    assert rec.problem == "" and rec.storage.snapshot().index == 1
    assert rec.storage.hard_state.commit == 1

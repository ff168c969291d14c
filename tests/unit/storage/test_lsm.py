"""LsmEngine: crash recovery at every crash point, I/O faults, corruption, stalls, files."""

from __future__ import annotations

import dataclasses

import pytest

from keeldb.errors import CorruptionError, DiskFullError, StorageIOError, WriteStallError
from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.engine import CRASH_POINTS, KIND_DELETE, KIND_PUT, STALL_STOP, Options
from keeldb.storage.lsm import LsmEngine
from keeldb.storage.manifest import read_manifest

TINY = Options(memtable_bytes=1024, block_bytes=128, table_bytes=256, level1_bytes=256,
               l0_compaction_trigger=2, l0_slowdown_files=6, l0_stop_files=8,
               level_size_ratio=3)


class Crash(Exception):
    """Stands for SIGKILL at a crash point."""


def _op(i: int) -> tuple[int, bytes, bytes]:
    key = b"k%02d" % (i * 7 % 30)
    return (KIND_DELETE, key, b"") if i % 5 == 4 else (KIND_PUT, key, b"v%d" % i)


def _prefix_states(n: int) -> list[dict[bytes, bytes]]:
    states: list[dict[bytes, bytes]] = [{}]
    cur: dict[bytes, bytes] = {}
    for i in range(n):
        kind, key, value = _op(i)
        if kind == KIND_PUT:
            cur[key] = value
        else:
            cur.pop(key, None)
        states.append(dict(cur))
    return states


def _drive(point: str, nth: int, writes: int = 400) -> tuple[MemoryDisk, int, int, int]:
    """Write until the crash hook fires at the nth pass of `point`; return what was acked."""
    disk = MemoryDisk()
    hits = 0

    def hook(name: str) -> None:
        nonlocal hits
        if name == point:
            hits += 1
            if hits == nth:
                raise Crash(name)

    acked = attempted = last_synced = 0
    try:
        engine = LsmEngine(disk, dataclasses.replace(TINY, crash_hook=hook))
        for i in range(writes):
            attempted = i + 1
            while engine.write_stall() == STALL_STOP:
                engine.flush_step() or engine.compact_step()
            engine.write([_op(i)], sync=i % 9 == 0)
            acked = i + 1
            if i % 9 == 0:
                last_synced = acked
            engine.flush_step() or engine.compact_step()
    except Crash:
        pass
    return disk, hits, attempted, last_synced


@pytest.mark.parametrize("point", CRASH_POINTS)
@pytest.mark.parametrize("nth", [1, 2, 5])
def test_crash_at_every_point_recovers_a_prefix_with_all_synced_writes(point: str, nth: int) -> None:
    disk, hits, attempted, last_synced = _drive(point, nth)
    assert hits >= 1, f"crash point {point} never reached"
    disk.crash()  # power loss: everything not fsynced is gone
    engine = LsmEngine(disk, TINY)
    state = dict(engine.scan())
    states = _prefix_states(attempted)
    matches = [j for j in range(last_synced, attempted + 1) if states[j] == state]
    assert matches, (f"after a crash at {point} #{nth} the store is not a prefix of the "
                     f"writes (synced through {last_synced}, attempted {attempted})")
    assert engine.verify().ok
    # no orphans: every table on disk is in the manifest, no stray temp manifest
    manifest = read_manifest(disk)
    assert manifest is not None
    live = {t.name for lv in manifest.levels for t in lv}
    assert {n for n in disk.list() if n.endswith(".sst")} == live
    assert "MANIFEST.tmp" not in disk.list()
    # and it keeps working
    engine.write([(KIND_PUT, b"after", b"crash")], sync=True)
    engine.close()
    disk.crash()
    assert LsmEngine(disk, TINY).get(b"after") == b"crash"


def test_crash_without_sync_loses_only_a_suffix() -> None:
    disk = MemoryDisk()
    engine = LsmEngine(disk, dataclasses.replace(TINY, memtable_bytes=64 * 1024))  # no flush
    for i in range(50):
        engine.write([_op(i)])
    engine.sync()
    for i in range(50, 60):
        engine.write([_op(i)])
    disk.crash()
    state = dict(LsmEngine(disk, TINY).scan())
    assert state == _prefix_states(50)[50]


def test_wal_is_deleted_only_after_its_table_is_in_the_manifest() -> None:
    disk = MemoryDisk()
    engine = LsmEngine(disk, TINY)
    while not engine.version.imms:
        engine.write([(KIND_PUT, b"k%04d" % engine.last_seq, b"x" * 40)])
    imm = engine.version.imms[-1]
    wal = f"{imm.wal_number:06d}.log"
    assert wal in disk.list()
    assert engine.flush_step()
    assert wal not in disk.list()
    manifest = read_manifest(disk)
    assert manifest is not None and manifest.log_number > imm.wal_number
    assert len(manifest.levels[0]) == 1


def test_disk_full_makes_the_store_read_only_and_reopen_is_consistent() -> None:
    disk = MemoryDisk()
    engine = LsmEngine(disk, TINY)
    for i in range(20):
        engine.write([(KIND_PUT, b"a%02d" % i, b"1" * 30)])
    disk.space_bytes_max = sum(disk.open(n).size() for n in disk.list()) + 300
    acked = 20
    with pytest.raises(DiskFullError):
        for i in range(20, 2000):
            while engine.write_stall() == STALL_STOP:
                engine.flush_step() or engine.compact_step()
            engine.write([(KIND_PUT, b"a%02d" % (i % 100), b"%d" % i * 10)])
            acked = i + 1
            engine.flush_step() or engine.compact_step()
    with pytest.raises(StorageIOError, match="read-only"):
        engine.write([(KIND_PUT, b"x", b"y")])
    assert engine.get(b"a00") is not None  # still readable
    expected = dict(engine.scan())
    engine.close()
    disk.space_bytes_max = None
    again = LsmEngine(disk, TINY)
    assert dict(again.scan()) == expected
    assert len(expected) == min(acked, 100)


def test_failed_fsync_is_never_retried_as_success() -> None:
    disk = MemoryDisk()
    engine = LsmEngine(disk, TINY)
    engine.write([(KIND_PUT, b"a", b"1")], sync=True)
    disk.fail_syncs = 1
    with pytest.raises(StorageIOError):
        engine.write([(KIND_PUT, b"b", b"2")], sync=True)
    with pytest.raises(StorageIOError, match="read-only"):
        engine.write([(KIND_PUT, b"c", b"3")], sync=True)
    with pytest.raises(StorageIOError, match="read-only"):
        engine.sync()
    assert engine.get(b"a") == b"1"
    engine.close()
    disk.crash()
    again = LsmEngine(disk, TINY)
    assert again.get(b"a") == b"1" and again.get(b"c") is None


def test_flipped_byte_in_a_table_is_corruption_never_wrong_data() -> None:
    disk = MemoryDisk()
    engine = LsmEngine(disk, TINY)
    for i in range(40):
        engine.write([(KIND_PUT, b"k%02d" % i, b"value-%02d" % i)])
    engine.compact_range()
    engine.close()
    table = next(n for n in disk.list() if n.endswith(".sst"))
    disk.flip_byte(table, 20)  # inside the first data block
    engine = LsmEngine(disk, TINY)
    outcomes = []
    for i in range(40):
        try:
            value = engine.get(b"k%02d" % i)
        except CorruptionError as exc:
            assert table in str(exc)
            outcomes.append("corrupt")
        else:
            assert value in (b"value-%02d" % i,), "a flipped byte returned wrong data"
            outcomes.append("ok")
    assert "corrupt" in outcomes
    report = engine.verify()
    assert not report.ok and any(table in p for p in report.problems)


def test_write_stall_stops_writes_until_background_work_runs() -> None:
    opts = dataclasses.replace(TINY, l0_compaction_trigger=1, l0_slowdown_files=1,
                               l0_stop_files=2)
    engine = LsmEngine(MemoryDisk(), opts)
    with pytest.raises(WriteStallError) as info:
        for i in range(10_000):
            engine.write([(KIND_PUT, b"k%05d" % i, b"x" * 50)])
            engine.flush_step()  # flushes but never compacts: L0 grows to the stop
    assert info.value.retryable
    assert engine.write_stall() == STALL_STOP
    assert engine.stats().write_stalls >= 1
    while engine.compact_step() or engine.flush_step():
        pass
    assert engine.write_stall() != STALL_STOP
    engine.write([(KIND_PUT, b"later", b"ok")])
    assert engine.get(b"later") == b"ok"


def test_orphans_from_an_interrupted_compaction_are_removed() -> None:
    disk = MemoryDisk()
    engine = LsmEngine(disk, TINY)
    for i in range(100):
        engine.write([(KIND_PUT, b"k%03d" % i, b"x" * 20)])
        engine.flush_step() or engine.compact_step()
    disk.create("000999.sst").append(b"junk")
    disk.create("MANIFEST.tmp").append(b"junk")
    engine.close()
    engine = LsmEngine(disk, TINY)
    assert "000999.sst" not in disk.list() and "MANIFEST.tmp" not in disk.list()
    assert len(dict(engine.scan())) == 100


def test_reads_touch_few_tables_and_bloom_filters_work() -> None:
    engine = LsmEngine(MemoryDisk(), dataclasses.replace(TINY, memtable_bytes=4096,
                                                        table_bytes=2048, level1_bytes=8192))
    for i in range(2000):
        engine.write([(KIND_PUT, b"k%05d" % (i * 2), b"x" * 20)])
        engine.flush_step() or engine.compact_step()
    for i in range(2000):
        assert engine.get(b"k%05d" % (i * 2 + 1)) is None
    stats = engine.stats()
    assert stats.bloom_checks > 0 and stats.bloom_useful > 0.9 * stats.bloom_checks
    assert stats.bloom_false_positive_rate < 0.1
    assert 0 < stats.tables_touched_per_read < 10
    assert sum(lv.files for lv in stats.levels[1:]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_crash_soak_random_points_with_snapshots_and_batches(seed: int) -> None:
    """Many seeds: random crash point and occurrence, batches, deletes and live snapshots
    (so compaction keeps old versions); recovery must give a prefix with every synced write.
    Reproduce one seed with: pytest -m slow -k 'soak and <seed>'."""
    import random

    rng = random.Random(f"{seed}:crash-soak")
    point = rng.choice(CRASH_POINTS)
    nth = rng.randint(1, 8)
    disk = MemoryDisk()
    hits = 0

    def hook(name: str) -> None:
        nonlocal hits
        if name == point:
            hits += 1
            if hits == nth:
                raise Crash(name)

    batches: list[list[tuple[int, bytes, bytes]]] = []
    attempted = last_synced = 0
    snaps = []
    try:
        engine = LsmEngine(disk, dataclasses.replace(TINY, crash_hook=hook))
        for i in range(600):
            ops = [(KIND_DELETE, b"k%02d" % rng.randrange(40), b"") if rng.random() < 0.2
                   else (KIND_PUT, b"k%02d" % rng.randrange(40), b"%d" % i)
                   for _ in range(rng.randint(1, 4))]
            batches.append(ops)
            attempted = i + 1
            while engine.write_stall() == STALL_STOP:
                engine.flush_step() or engine.compact_step()
            sync = rng.random() < 0.1
            engine.write(list(ops), sync=sync)
            if sync:
                last_synced = attempted
            if rng.random() < 0.05:
                snaps.append(engine.snapshot())
            if snaps and rng.random() < 0.05:
                snaps.pop(rng.randrange(len(snaps))).close()
            engine.flush_step() or engine.compact_step()
    except Crash:
        pass
    disk.crash()
    state = dict(LsmEngine(disk, TINY).scan())
    cur: dict[bytes, bytes] = {}
    prefixes = [dict(cur)]
    for ops in batches[:attempted]:
        for kind, key, value in ops:
            if kind == KIND_PUT:
                cur[key] = value
            else:
                cur.pop(key, None)
        prefixes.append(dict(cur))
    assert any(prefixes[j] == state for j in range(last_synced, attempted + 1)), \
        f"seed {seed}: crash at {point} #{nth} did not recover a prefix"


def test_dropped_scans_release_their_snapshot_and_pin() -> None:
    engine = LsmEngine(MemoryDisk(), dataclasses.replace(TINY, memtable_bytes=64 * 1024))
    for i in range(50):
        engine.write([(KIND_PUT, b"k%02d" % i, b"v")])
    unstarted = engine.scan()
    started = engine.scan()
    next(started)
    assert engine.live_snapshots() == [50] and engine._snapshot_count == 2
    del unstarted, started
    import gc

    gc.collect()
    assert engine.live_snapshots() == [] and not engine._pins and not engine._snapshot_count
    assert list(engine.scan(limit=2)) == [(b"k00", b"v"), (b"k01", b"v")]
    assert engine.live_snapshots() == []  # exhausted scans release at once


def test_flush_installed_while_a_compaction_runs_is_kept() -> None:
    """The embedded DB flushes and compacts on two threads: a flush that installs while a
    compaction is writing its outputs must survive the compaction's install (and vice versa)."""
    engine: LsmEngine | None = None
    flushed_midway: list[bool] = []

    def hook(name: str) -> None:
        if name == "compaction-before-manifest" and engine is not None and engine.version.imms:
            flushed_midway.append(engine.flush_step())

    # Room in L0: this schedule (a compaction every 11 writes) must not hit the write stop,
    # whatever tables the compactions cut (that depends on how the merge chunks its inputs).
    opts = dataclasses.replace(TINY, crash_hook=hook, l0_compaction_trigger=3,
                               l0_slowdown_files=12, l0_stop_files=16)
    engine = LsmEngine(MemoryDisk(), opts)
    expected: dict[bytes, bytes] = {}
    for i in range(400):
        key, value = b"k%03d" % (i * 13 % 150), b"v%d" % i
        engine.write([(KIND_PUT, key, value)])
        expected[key] = value
        if i % 7 == 0:
            engine.flush_step()  # leave frozen memtables behind for the hook to flush
        if i % 11 == 0:
            engine.compact_step()
    assert any(flushed_midway), "the interleaving never happened"
    assert dict(engine.scan()) == expected
    engine.close()
    engine = LsmEngine(engine.disk, TINY)
    assert dict(engine.scan()) == expected
    assert engine.verify().ok

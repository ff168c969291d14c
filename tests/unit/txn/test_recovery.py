"""After a power loss, every transaction is wholly there or wholly gone, in commit order."""

from __future__ import annotations

import random

import pytest

from keeldb.runtime.memdisk import MemoryDisk
from keeldb.storage.engine import Options
from keeldb.storage.lsm import LsmEngine
from keeldb.txn import SERIALIZABLE, TransactionManager

TINY = Options(memtable_bytes=1024, block_bytes=128, table_bytes=256, level1_bytes=256,
               l0_compaction_trigger=2, l0_slowdown_files=6, l0_stop_files=8,
               level_size_ratio=3, block_cache_bytes=16 * 1024, table_cache_files=8)
KEYS = [f"k{i}".encode() for i in range(6)]


@pytest.mark.parametrize("seed", range(8))
def test_crash_keeps_whole_transactions_in_commit_order(seed: int) -> None:
    rng = random.Random(f"{seed}:txn-crash")
    disk = MemoryDisk()
    engine = LsmEngine(disk, TINY)
    mgr = TransactionManager(engine, gc_every_commits=5)
    states = [{k: b"" for k in KEYS}]  # the table after each commit (b"" = absent)
    synced = 0
    for n in range(1, 40):
        with mgr.begin(SERIALIZABLE) as tx:
            for key in rng.sample(KEYS, rng.randint(2, 5)):  # every write tags the commit
                if rng.random() < 0.2:
                    tx.delete(key)
                else:
                    tx.put(key, f"t{n}".encode())
        state = dict(states[-1])
        state.update({k: (v or b"") for k, v in tx._writes.items()})
        states.append(state)
        while engine.flush_step() or engine.compact_step():
            pass
        if rng.random() < 0.3:
            engine.sync()
            synced = len(states) - 1
    disk.crash()
    engine = LsmEngine(disk, TINY)
    mgr = TransactionManager(engine)
    with mgr.begin() as tx:
        now = {k: tx.get(k) or b"" for k in KEYS}
    survived = [i for i in range(synced, len(states)) if states[i] == now]
    assert survived, f"the recovered table is no prefix of the commits: {now}"
    assert mgr.visible_ts in survived  # the clock record came back with its commit
    assert mgr.put(b"after", b"crash") == mgr.visible_ts  # the clock moves on from there
    with mgr.begin() as tx:
        assert tx.get(b"after") == b"crash"

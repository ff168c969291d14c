"""RaftKvSM: the Redis state machine as a RaftNode state machine (keeldb/node/raft_kv_sm.py)."""

from __future__ import annotations

import msgpack
import pytest

from keeldb.codec.resp import ErrorReply, SimpleString
from keeldb.errors import StateRestoreError, UsageError
from keeldb.node import kvstate as kv
from keeldb.node.raft_kv_sm import (
    SKIPPED,
    RaftKvSM,
    decode_command,
    encode_command,
    pack_applied,
    unpack_applied,
)
from keeldb.node.raft_node import Sessions
from keeldb.storage.memory import MemoryEngine

T0 = 1_700_000_000_000


def write(sm: RaftKvSM, index: int, *reqs: kv.Request, now: int = T0) -> kv.Applied:
    f, data = encode_command(kv.Batch(tuple(reqs)), now)
    cmd, read_only = sm.command(f, None, data)
    assert not read_only
    kind, value = sm.apply(index, cmd)
    assert kind == "ok"
    return unpack_applied(value)


def read(sm: RaftKvSM, *reqs: kv.Request, now: int = T0) -> tuple[kv.Reply, ...]:
    f, data = encode_command(kv.Batch(tuple(reqs)), now)
    cmd, read_only = sm.command(f, None, data)
    assert read_only
    kind, value = sm.read(cmd)
    assert kind == "ok"
    return unpack_applied(value).replies


def test_commands_round_trip_and_say_whether_they_read_only() -> None:
    batch = kv.Batch((kv.Set(b"k", b"v"), kv.Get(b"k")), (kv.WatchToken(b"k", 3, True),))
    f, data = encode_command(batch, T0)
    assert f == "write" and decode_command(data) == (T0, batch)
    assert encode_command(kv.Batch((kv.Get(b"k"),)), T0)[0] == "read"
    sm = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    with pytest.raises(UsageError, match="f='read'"):
        sm.command("cas", None, data)
    with pytest.raises(UsageError):
        sm.command("write", None, "not bytes")


def test_replies_survive_msgpack_for_the_session_table() -> None:
    applied = kv.Applied((None, 3, b"x", SimpleString("OK"), ErrorReply("ERR no"),
                          [b"a", None]), aborted=False)
    assert unpack_applied(pack_applied(applied)) == applied
    sm = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    sessions = Sessions(sm)
    _, data = encode_command(kv.Batch((kv.Set(b"k", b"v"), kv.Get(b"k"))), T0)
    _, _, result = sessions.apply(1, Sessions.encode("s", 1, 1, data))
    snap = sessions.snapshot()  # packs the kept results: they must be msgpack-able
    again = Sessions(RaftKvSM(kv.KvStateMachine(MemoryEngine())))
    again.restore(snap)
    assert again.lookup("s", 1) == (True, result)
    assert read(again.sm, kv.Get(b"k")) == (b"v",)  # type: ignore[arg-type]


def test_expiry_uses_the_proposers_time_and_log_time_never_goes_back() -> None:
    sm = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    write(sm, 1, kv.Set(b"k", b"v", expire_mode=kv.EXPIRE_IN_MS, expire_ms=100), now=T0)
    assert read(sm, kv.Get(b"k"), now=T0 + 50) == (b"v",)
    assert read(sm, kv.Get(b"k"), now=T0 + 100) == (None,)
    # A proposer whose clock is behind cannot bring the key back: log time stays at T0+200.
    write(sm, 2, kv.Set(b"j", b"w"), now=T0 + 200)
    write(sm, 3, kv.Set(b"j", b"w2"), now=T0 - 10_000)
    assert sm.last_now_ms == T0 + 200
    assert read(sm, kv.Get(b"k"), kv.Get(b"j"), now=T0) == (None, b"w2")


def test_replayed_entries_the_store_holds_are_skipped() -> None:
    engine = MemoryEngine()
    sm = RaftKvSM(kv.KvStateMachine(engine))
    for i in range(1, 4):
        write(sm, i, kv.IncrBy(b"n", 1))
    # Restart: the store kept index 3; the node replays its log from index 1.
    again = RaftKvSM(kv.KvStateMachine(engine))
    again.restore(b"")  # no Raft snapshot yet: the store stays
    for i in range(1, 4):
        assert again.apply(i, encode_command(kv.Batch((kv.IncrBy(b"n", 1),)), T0)[1]) == (
            "ok", SKIPPED)
    assert write(again, 4, kv.IncrBy(b"n", 1)).replies == (4,)
    assert again.skipped == 3


def test_snapshot_restores_a_store_behind_and_spares_one_ahead() -> None:
    leader = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    for i in range(1, 6):
        write(leader, i, kv.Set(f"k{i}".encode(), b"v"))
    snap = leader.snapshot()
    behind = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    write(behind, 1, kv.Set(b"stale", b"x"))
    behind.restore(snap)
    assert behind.kv.applied_index == 5
    assert read(behind, kv.DbSize(), kv.Get(b"stale"), kv.Get(b"k5")) == (5, None, b"v")
    ahead = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    for i in range(1, 8):
        write(ahead, i, kv.Set(f"a{i}".encode(), b"v"))
    ahead.restore(snap)  # index 7 > 5: the store is a later state of the same log
    assert ahead.kv.applied_index == 7 and read(ahead, kv.DbSize()) == (7,)
    with pytest.raises(StateRestoreError):
        ahead.restore(b"\x93\x09\x01\xc4\x00")  # format 9


def test_log_time_is_replicated_state_restart_and_snapshot_agree() -> None:
    """Entry i applies at max(now_ms of entries 1..i) on every replica: one that restarts
    (store ahead, log replayed) or is fed a snapshot computes the time the others did."""
    ttl = kv.Set(b"k", b"v", expire_mode=kv.EXPIRE_IN_MS, expire_ms=10_000)
    engine = MemoryEngine()
    a = RaftKvSM(kv.KvStateMachine(engine))
    write(a, 1, kv.Set(b"x", b"1"), now=T0 + 300_000)  # a proposer with a fast clock
    snap = a.snapshot()
    write(a, 2, kv.Set(b"y", b"1"), now=T0)
    # a restarts: store at index 2, Raft snapshot at index 1, log replays entry 2 (skipped)
    restarted = RaftKvSM(kv.KvStateMachine(engine))
    restarted.restore(snap)
    assert restarted.last_now_ms == T0 + 300_000
    assert restarted.apply(2, encode_command(kv.Batch((kv.Set(b"y", b"1"),)), T0)[1]) == (
        "ok", SKIPPED)
    fed = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    fed.restore(snap)  # a lagging follower
    write(fed, 2, kv.Set(b"y", b"1"), now=T0)
    replayed = RaftKvSM(kv.KvStateMachine(engine))  # restart with no snapshot: replay from 1
    replayed.restore(b"")
    for i, now in ((1, T0 + 300_000), (2, T0)):
        replayed.apply(i, encode_command(kv.Batch((kv.Set(b"z", b"1"),)), now)[1])
    for sm in (a, restarted, fed, replayed):
        assert sm.last_now_ms == T0 + 300_000
    for sm in (a, fed):
        write(sm, 3, ttl, now=T0 + 1_000)
    assert a.kv.snapshot() == fed.kv.snapshot(), "one log, two states: replicas diverged"
    # a snapshot of the format before log time was carried restores with log time 0
    old = msgpack.packb([1, 0, kv.KvStateMachine(MemoryEngine()).snapshot()])
    fresh = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    fresh.last_now_ms = 5
    fresh.restore(old)
    assert fresh.last_now_ms == 0


def test_commands_of_older_builds_still_decode() -> None:
    batch = kv.Batch((kv.Set(b"k", b"v"),), (), (7, 1))
    old = msgpack.packb([T0, kv.encode_batch(batch)], use_bin_type=True)
    assert decode_command(old) == (T0, batch)


def test_a_host_groups_the_entries_it_applies_in_one_turn() -> None:
    engine = MemoryEngine()
    sm = RaftKvSM(kv.KvStateMachine(engine))
    begun: list[int] = []
    sm.on_group_begun = lambda: begun.append(sm.kv.applied_index)
    write(sm, 1, kv.Set(b"a", b"1"))
    write(sm, 2, kv.Set(b"b", b"2"))
    assert begun == [0] and sm.kv.grouping
    assert read(sm, kv.MGet((b"a", b"b"))) == ([b"1", b"2"],)
    assert kv.KvStateMachine(engine).applied_index == 0  # deferred until the turn ends
    sm.kv.end_group()
    assert kv.KvStateMachine(engine).applied_index == 2
    write(sm, 3, kv.Del((b"a",)))
    assert begun == [0, 2]
    snap = sm.snapshot()  # a snapshot writes what is deferred first
    assert kv.KvStateMachine(engine).applied_index == 3 and msgpack.unpackb(snap)[1] == 3


def test_a_proposer_applies_its_remembered_batches_without_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from keeldb import limits
    from keeldb.node import raft_kv_sm
    monkeypatch.setattr(limits, "kv_proposed_batches_max", 2)
    decoded: list[bytes] = []
    real = raft_kv_sm.decode_command

    def counting(data: bytes) -> tuple[int, kv.Batch]:
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(raft_kv_sm, "decode_command", counting)
    sm = RaftKvSM(kv.KvStateMachine(MemoryEngine()))
    cmds = []
    for i in range(3):
        batch = kv.Batch((kv.Set(b"k%d" % i, b"v"),))
        cmds.append(encode_command(batch, T0)[1])
        sm.remember(cmds[-1], T0, batch)
    for i, cmd in enumerate(cmds, start=1):
        assert sm.apply(i, cmd)[0] == "ok"
    assert decoded == [cmds[0]]  # only the one forgotten past the bound was decoded
    assert read(sm, kv.MGet((b"k0", b"k1", b"k2"))) == ([b"v", b"v", b"v"],)


def test_a_write_applied_after_a_later_write_of_its_session_is_refused() -> None:
    """A retried proposal that lands after later writes of the same node applied must not
    take effect (it would reorder that node's requests); the refusal is kept for dedup and
    survives a snapshot, so every replica answers the same."""
    sessions = Sessions(RaftKvSM(kv.KvStateMachine(MemoryEngine())))

    def put(index: int, seq: int, value: bytes) -> list[object] | None:
        _, data = encode_command(kv.Batch((kv.Set(b"k", value),)), T0)
        return sessions.apply(index, Sessions.encode("s", seq, 1, data))[2]

    assert put(1, 1, b"1")[0] == "ok"  # type: ignore[index]
    assert put(2, 3, b"3")[0] == "ok"  # type: ignore[index]
    refused = put(3, 2, b"2")  # seq 2's first proposal was lost; its retry comes late
    assert refused is not None and refused[0] == "fail" and "request order" in refused[1]
    assert read(sessions.sm, kv.Get(b"k")) == (b"3",)  # type: ignore[arg-type]
    assert put(4, 2, b"2") == refused  # a duplicate gets the same answer
    again = Sessions(RaftKvSM(kv.KvStateMachine(MemoryEngine())))
    again.restore(sessions.snapshot())
    assert again.lookup("s", 2) == (True, refused)
    _, data = encode_command(kv.Batch((kv.Set(b"k", b"x"),)), T0)
    late = again.apply(5, Sessions.encode("s", 2, 1, data))[2]
    assert late == refused  # after a restore too
    assert again.apply(6, Sessions.encode("s", 4, 1, data))[2][0] == "ok"  # type: ignore[index]

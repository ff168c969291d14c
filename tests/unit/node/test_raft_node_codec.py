"""raft_codec: every consensus value survives the wire and the disk; damage is detected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keeldb.consensus import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)
from keeldb.errors import CorruptionError
from keeldb.node import raft_codec as codec
from keeldb.types import NodeId

ids = st.sampled_from(["", "n1", "n2", "n3", "node-ü"]).map(NodeId)
u64 = st.integers(min_value=0, max_value=2**63 - 1)
entries = st.builds(Entry, u64, u64, st.binary(max_size=64), st.sampled_from(list(EntryType)))
conf_states = st.sets(st.sampled_from(["n1", "n2", "n3", "n4"])).map(
    lambda s: ConfState(tuple(sorted(NodeId(x) for x in s if x != "n4")),
                        (NodeId("n4"),) if "n4" in s else ()))
metas = st.builds(SnapshotMeta, u64, u64, conf_states)
hard_states = st.builds(HardState, u64, ids, u64)
snapshots = st.builds(Snapshot, metas, st.binary(max_size=256))
messages = st.builds(
    Message, st.sampled_from(list(MsgType)), ids, ids, u64, u64, u64,
    st.lists(entries, max_size=4).map(tuple), u64, st.booleans(), u64, st.binary(max_size=16),
    st.none() | metas, u64, st.binary(max_size=32), u64, ids)


@given(messages)
def test_message_round_trip(m: Message) -> None:
    assert codec.decode_message(codec.encode_message(m)) == m


@given(entries)
def test_entry_round_trip(e: Entry) -> None:
    assert codec.entry_from_plain(codec.entry_to_plain(e)) == e


@given(hard_states)
def test_hard_state_round_trip(hs: HardState) -> None:
    assert codec.hard_state_from_plain(codec.hard_state_to_plain(hs)) == hs


@given(snapshots)
def test_snapshot_round_trip_through_a_record(s: Snapshot) -> None:
    recs, valid, problem = codec.decode_records(
        codec.encode_record(codec.snapshot_to_plain(s)), "f")
    assert problem == "" and codec.snapshot_from_plain(recs[0]) == s


@given(st.lists(st.lists(u64, max_size=5), min_size=1, max_size=6), st.data())
def test_records_cut_anywhere_are_torn_never_corrupt(recs: list[list[int]],
                                                     data: st.DataObject) -> None:
    blob = b"".join(codec.encode_record(r) for r in recs)
    cut = data.draw(st.integers(min_value=0, max_value=len(blob)))
    got, valid, problem = codec.decode_records(blob[:cut], "f")
    assert got == recs[:len(got)]
    assert problem in ("", "torn")
    assert (problem == "") == (valid == cut)


@given(messages, st.data())
def test_a_flipped_bit_in_a_message_is_detected(m: Message, data: st.DataObject) -> None:
    wire = bytearray(codec.encode_message(m))
    bit = data.draw(st.integers(min_value=0, max_value=len(wire) * 8 - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CorruptionError):
        codec.decode_message(bytes(wire))


def test_short_and_wrong_version_messages_are_refused() -> None:
    with pytest.raises(CorruptionError, match="shorter"):
        codec.decode_message(b"\x01")
    wire = bytearray(codec.encode_message(Message(MsgType.HEARTBEAT)))
    wire[0] = 9
    with pytest.raises(CorruptionError, match="version 9"):
        codec.decode_message(bytes(wire))


def test_a_bad_record_before_good_ones_is_corrupt() -> None:
    a, b = codec.encode_record([1, 2]), codec.encode_record([3])
    bad = bytearray(a)
    bad[-1] ^= 0x01
    _, valid, problem = codec.decode_records(bytes(bad) + b, "f")
    assert (valid, problem) == (0, "corrupt")


def test_a_zero_filled_tail_is_torn() -> None:
    good = codec.encode_record([1, 2])
    for zeros in (3, 8, 9, 64):
        recs, valid, problem = codec.decode_records(good + bytes(zeros), "f")
        assert (recs, valid, problem) == ([[1, 2]], len(good), "torn")

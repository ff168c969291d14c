"""InstallSnapshot in chunks: the leader's chunking and the follower's reassembly.

The leader slices the snapshot data into chunks of at most `snapshot_chunk_bytes` and keeps one
chunk in flight: each chunk is acknowledged with SNAP_RESP(index = bytes held), which releases
the next one; a heartbeat interval without an answer resends the chunk at the acknowledged
offset (so lost chunks are retried and a restarted follower starts over). The follower accepts
only the chunk at its current length, reassembles the data up to
`limits.raft_snapshot_bytes_max`, and after the last chunk restores the snapshot and answers
with an APP_RESP at the snapshot index, which moves the leader back to replicating.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keeldb import limits
from keeldb.consensus.messages import Message, MsgType, Snapshot, SnapshotMeta
from keeldb.types import NodeId

if TYPE_CHECKING:
    from keeldb.consensus.raft import Raft


def chunk_message(snap: Snapshot, to: NodeId, offset: int, chunk_bytes: int) -> Message:
    assert 0 <= offset <= len(snap.data), f"chunk offset {offset} past {len(snap.data)}"
    return Message(MsgType.SNAP, to=to, snapshot_meta=snap.meta, snap_offset=offset,
                   snap_data=snap.data[offset:offset + chunk_bytes], snap_total=len(snap.data))


class Receiver:
    """A follower's partly received snapshot."""

    def __init__(self) -> None:
        self.meta: SnapshotMeta | None = None
        self.total = 0
        self.buf = bytearray()

    def start(self, meta: SnapshotMeta, total: int) -> None:
        self.meta = meta
        self.total = total
        self.buf = bytearray()

    def clear(self) -> None:
        self.meta = None
        self.total = 0
        self.buf = bytearray()


def _ack(m: Message, held: int, reject: bool = False) -> Message:
    assert m.snapshot_meta is not None
    return Message(MsgType.SNAP_RESP, to=m.frm, index=held, reject=reject,
                   reject_hint=m.snapshot_meta.index)


def receive_chunk(r: Raft, m: Message) -> list[Message]:
    """Take one SNAP chunk; returns the answers to send."""
    meta = m.snapshot_meta
    assert meta is not None, "SNAP message without snapshot_meta"
    rs = r.recv_snap
    if meta.index <= r.log.committed:
        rs.clear()  # we already have everything it covers
        return [Message(MsgType.APP_RESP, to=m.frm, index=r.log.committed)]
    if m.snap_total > limits.raft_snapshot_bytes_max:
        rs.clear()  # refuse: the leader keeps retrying and an operator must raise the limit
        return []
    if m.snap_offset == 0 and (rs.meta != meta or not rs.buf):
        rs.start(meta, m.snap_total)
    if rs.meta != meta:
        return [_ack(m, 0, reject=True)]  # we hold a different snapshot: start over
    if m.snap_offset > len(rs.buf):
        return [_ack(m, len(rs.buf), reject=True)]  # a chunk went missing
    if m.snap_offset < len(rs.buf):
        return [_ack(m, len(rs.buf))]  # a duplicate
    rs.buf += m.snap_data
    assert len(rs.buf) <= rs.total, f"snapshot chunks overrun: {len(rs.buf)} > {rs.total}"
    if len(rs.buf) < rs.total:
        return [_ack(m, len(rs.buf))]
    snap = Snapshot(meta, bytes(rs.buf))
    rs.clear()
    if restore(r, snap):
        return [Message(MsgType.APP_RESP, to=m.frm, index=r.log.last_index())]
    return [Message(MsgType.APP_RESP, to=m.frm, index=r.log.committed)]


def restore(r: Raft, snap: Snapshot) -> bool:
    """Install `snap` into the log. False if it brings nothing new (then the commit index may
    still move forward to it)."""
    if snap.index <= r.log.committed:
        return False
    # A snapshot may predate our joining (its membership lacks us): the conf changes after
    # it, replayed as they apply, add us.
    if r.log.match_term(snap.index, snap.term):
        r.log.commit_to(snap.index)  # our log already has it: just fast-forward the commit
        return False
    r.log.restore(snap)
    r.restore_conf(snap.meta.conf_state)
    return True

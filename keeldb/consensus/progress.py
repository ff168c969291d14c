"""What a leader knows about each follower: how far it matches and how to feed it.

A follower's `Progress` is in one of three states:

- PROBE: we do not know where its log matches; send one MsgApp per heartbeat interval until
  an answer says where (fast backtracking narrows it down by whole terms).
- REPLICATE: it matches up to `match`; stream entries optimistically (pipelining), at most
  `inflights` unacknowledged messages/bytes at once (flow control).
- SNAPSHOT: the entries it needs are compacted away; an InstallSnapshot is under way, sent in
  chunks, one chunk in flight at a time.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum

from keeldb.consensus.messages import Snapshot


class ProgressState(StrEnum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The sliding window of unacknowledged MsgApp to one follower (bounded in count and bytes)."""

    def __init__(self, max_msgs: int, max_bytes: int) -> None:
        assert max_msgs > 0 and max_bytes > 0
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self._q: deque[tuple[int, int]] = deque()  # (last index of the message, bytes)
        self.bytes = 0

    def add(self, last_index: int, size: int) -> None:
        assert not self.full(), "inflights full: check full() before sending"
        assert not self._q or last_index > self._q[-1][0], "inflight indexes must increase"
        self._q.append((last_index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Forget messages acknowledged by an ack of `index`."""
        while self._q and self._q[0][0] <= index:
            self.bytes -= self._q.popleft()[1]

    def free_first(self) -> None:
        if self._q:
            self.bytes -= self._q.popleft()[1]

    def full(self) -> bool:
        return len(self._q) >= self.max_msgs or self.bytes >= self.max_bytes

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()
        self.bytes = 0


class Progress:
    def __init__(self, next_index: int, max_msgs: int, max_bytes: int,
                 is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: one MsgApp is out, wait for an answer or a heartbeat
        self.recent_active = False  # heard from since the last check-quorum
        self.lease_tick = -(1 << 62)  # leader's tick at sending the newest answered heartbeat
        self.is_learner = is_learner
        self.pending_snapshot = 0  # SNAPSHOT: index of the snapshot being sent
        self.snapshot: Snapshot | None = None  # SNAPSHOT: the image being sent
        self.snap_acked = 0  # SNAPSHOT: data bytes the follower confirmed
        self.inflights = Inflights(max_msgs, max_bytes)
        # The first index of an entry this follower forwarded (a proposal of its client)
        # whose commit it was not told yet (0: none): the leader tells it at once, see
        # Raft._bcast_commit. `forwarded_last` is the newest such index.
        self.forwarded_first = 0
        self.forwarded_last = 0
        # For skipping the periodic heartbeat to a follower that streams (Raft._bcast_heartbeat):
        self.acked_since_beat = False  # it acknowledged an append since the last beat
        self.beat_tick = -(1 << 62)  # leader's tick at the last periodic heartbeat to it

    def __repr__(self) -> str:
        return (f"Progress({self.state.value} match={self.match} next={self.next}"
                f"{' learner' if self.is_learner else ''} inflight={self.inflights.count()})")

    def _reset(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot = None
        self.snap_acked = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snap: Snapshot) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snap.index
        self.snapshot = snap

    def is_paused(self) -> bool:
        """May the leader send another MsgApp now?"""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_index: int | None, size: int) -> None:
        """Account for a MsgApp just sent (last_index None: it carried no entries)."""
        if self.state == ProgressState.REPLICATE:
            if last_index is not None:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True
        else:
            raise AssertionError(f"sending entries in state {self.state}")

    def maybe_update(self, index: int) -> bool:
        """An ack of `index`: move match/next forward. False if it was stale."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A reject of the MsgApp after `rejected`: step `next` back to match_hint + 1.
        False if the reject is stale (answers an older message)."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we sent last
        if match_hint < self.match:
            # It lost entries it had acknowledged (a wiped disk). Lowering match only makes
            # commit counting more conservative; the commit index itself never moves back.
            self.match = match_hint
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

"""Durable Raft storage for `RaftNode`: what goes into the node's files, and recovery from them.

Sans-IO like the node: this module turns `Ready` batches into `Write`s (the node emits them as
`Persist` effects, then one `Sync`) and turns the files handed over in `Start` back into a
`MemoryStorage` for the core. Two files:

- `raft.log`: append-only checksummed records (`raft_codec.encode_record`):
  `["b", index, term]` the base: entries of this file follow entry (index, term);
  `["e", [entry, ...]]` entries, the first one truncating any suffix it conflicts with;
  `["h", term, vote, commit]` the hard state. One Ready = one append + one fsync (group commit).
- `raft.snap`: one record, the latest snapshot (meta and state-machine image).

Compaction (after the node snapshots its state machine) replaces `raft.snap`, then replaces
`raft.log` with a base, the hard state and the entries kept. A replace is write-temp, sync,
rename, sync-dir (the driver does it), so each file is always either old or new; recovery
accepts any combination a crash between the two can leave (see `recover`).

Damage. A power loss can leave a torn last record (`problem == "torn"`): it was never synced,
so nothing acknowledged is in it and the node cuts it off. A record that is complete but fails
its checksum anywhere else is corruption (`"corrupt"`): the node refuses to start
(CorruptionError) rather than silently lose acknowledged entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import crc32c

from keeldb.consensus import ConfState, Entry, HardState, MemoryStorage, Ready, Snapshot
from keeldb.errors import CorruptionError
from keeldb.node import raft_codec as codec
from keeldb.types import NodeId

LOG_FILE = "raft.log"
SNAP_FILE = "raft.snap"

_BASE, _ENTRIES, _HARD = "b", "e", "h"


@dataclass(frozen=True, slots=True)
class Write:
    """Append `data` to `file`, or replace the whole file atomically."""

    file: str
    data: bytes
    replace: bool = False


@dataclass(frozen=True, slots=True)
class Recovered:
    """What `recover` found. `problem` is "", "torn" or "corrupt" (see the module docstring);
    `log_valid` is the length of the intact prefix of `raft.log`; `fingerprint` names the exact
    bytes read (to tell a transient read error from damage that is really on the disk)."""

    storage: MemoryStorage
    problem: str
    where: str
    log_valid: int
    fingerprint: bytes
    empty: bool


def fingerprint(files: Mapping[str, bytes]) -> bytes:
    parts = []
    for name in (SNAP_FILE, LOG_FILE):
        data = files.get(name, b"")
        parts.append(f"{name}:{len(data)}:{crc32c.crc32c(data)}")
    return ";".join(parts).encode()


def _log_records(base: tuple[int, int], hs: HardState) -> bytes:
    return (codec.encode_record([_BASE, base[0], base[1]])
            + codec.encode_record([_HARD, *codec.hard_state_to_plain(hs)]))


def _entries_record(entries: tuple[Entry, ...] | list[Entry]) -> bytes:
    return codec.encode_record([_ENTRIES, [codec.entry_to_plain(e) for e in entries]])


def recover(files: Mapping[str, bytes]) -> Recovered:
    """Rebuild the durable Raft state from the node's files (see the module docstring)."""
    snap_data = files.get(SNAP_FILE, b"")
    log_data = files.get(LOG_FILE, b"")
    fp = fingerprint(files)
    storage = MemoryStorage()
    if not snap_data and not log_data:
        return Recovered(storage, "", "", 0, fp, True)
    snap_recs, _, snap_problem = codec.decode_records(snap_data, SNAP_FILE)
    if snap_problem or len(snap_recs) != 1:
        # A replace is atomic, so any damage to the snapshot file is corruption.
        return Recovered(storage, "corrupt", SNAP_FILE, 0, fp, False)
    snap = codec.snapshot_from_plain(snap_recs[0])
    recs, valid, problem = codec.decode_records(log_data, LOG_FILE)
    if problem:
        return Recovered(storage, problem, LOG_FILE, valid, fp, False)
    return Recovered(_rebuild(snap, recs), "", "", valid, fp, False)


def recover_prefix(files: Mapping[str, bytes], log_valid: int) -> MemoryStorage:
    """Recovery from the intact prefix of `raft.log` (after a torn tail was confirmed)."""
    snap_recs, _, _ = codec.decode_records(files[SNAP_FILE], SNAP_FILE)
    recs, valid, problem = codec.decode_records(files[LOG_FILE][:log_valid], LOG_FILE)
    assert not problem and valid == log_valid, (problem, valid, log_valid)
    return _rebuild(codec.snapshot_from_plain(snap_recs[0]), recs)


def _rebuild(snap: Snapshot, recs: list[object]) -> MemoryStorage:
    base: tuple[int, int] | None = None
    ents: list[Entry] = []
    hs = HardState()
    for rec in recs:
        if not isinstance(rec, list) or not rec:
            raise CorruptionError(f"{LOG_FILE}: record {rec!r} has no kind", path=LOG_FILE)
        kind = rec[0]
        if kind == _BASE:
            base = (int(rec[1]), int(rec[2]))
            ents = []
        elif kind == _ENTRIES:
            new = [codec.entry_from_plain(p) for p in rec[1]]
            if not new:
                continue
            if base is None:
                raise CorruptionError(f"{LOG_FILE}: entries before the base record",
                                      path=LOG_FILE)
            first = new[0].index
            last = ents[-1].index if ents else base[0]
            if first > last + 1:
                raise CorruptionError(f"{LOG_FILE}: entries jump from {last} to {first}",
                                      path=LOG_FILE)
            ents = [e for e in ents if e.index < first] + new
        elif kind == _HARD:
            hs = codec.hard_state_from_plain(rec[1:])
        else:
            raise CorruptionError(f"{LOG_FILE}: unknown record kind {kind!r}", path=LOG_FILE)
    if base is None:
        if recs:
            raise CorruptionError(f"{LOG_FILE}: no base record", path=LOG_FILE)
        # No log at all: the crash came between writing the first snapshot and the first log
        # (a bootstrap). Nothing was ever promised from a log that never existed.
        base = (snap.index, snap.term)
        hs = HardState(snap.term, hs.vote, snap.index)
    if base[0] > snap.index:
        raise CorruptionError(f"{LOG_FILE}: base {base[0]} is past the snapshot {snap.index}",
                              path=LOG_FILE)
    storage = MemoryStorage()
    if snap.index > 0:
        storage.apply_snapshot(snap)
    # Entries after the snapshot count only if the log holds the snapshot's own entry (or
    # starts right at it); otherwise the log predates a snapshot installed from the leader.
    at = {e.index: e.term for e in ents}
    at[base[0]] = base[1]
    if at.get(snap.index) == snap.term:
        storage.append([e for e in ents if e.index > snap.index])
    commit = max(hs.commit, snap.index)
    if commit > storage.last_index():
        raise CorruptionError(f"{LOG_FILE}: commit {commit} past the last entry "
                              f"{storage.last_index()}", path=LOG_FILE)
    storage.set_hard_state(HardState(hs.term, hs.vote, commit))
    return storage


class DurableLog:
    """The core's `MemoryStorage` plus the writes that make it durable."""

    def __init__(self, storage: MemoryStorage) -> None:
        self.storage = storage

    @classmethod
    def bootstrap(cls, voters: tuple[NodeId, ...]) -> tuple[DurableLog, list[Write]]:
        """A founding member's first state, and the writes that make it durable."""
        log = cls(MemoryStorage.bootstrap(voters))
        return log, log.rewrite()

    def rewrite(self) -> list[Write]:
        """Both files from scratch: the snapshot, then the log (base, hard state, entries)."""
        snap = self.storage.snapshot()
        return [Write(SNAP_FILE, codec.encode_record(codec.snapshot_to_plain(snap)), True),
                Write(LOG_FILE, self.log_image(), True)]

    def log_image(self) -> bytes:
        """`raft.log` as it should be for the current storage: base, hard state, entries."""
        st = self.storage
        base = st.first_index() - 1
        data = _log_records((base, st.term(base)), st.hard_state)
        if st.last_index() > base:
            data += _entries_record(st.entries(base + 1, st.last_index() + 1, 1 << 62))
        return data

    def ready_writes(self, rd: Ready) -> list[Write]:
        """The writes of one Ready (the node follows them with one Sync of `LOG_FILE`)."""
        if rd.snapshot is not None:
            snap = rd.snapshot
            hs = rd.hard_state if rd.hard_state is not None else self.storage.hard_state
            data = _log_records((snap.index, snap.term), hs)
            after = [e for e in rd.entries if e.index > snap.index]
            if after:
                data += _entries_record(after)
            return [Write(SNAP_FILE, codec.encode_record(codec.snapshot_to_plain(snap)), True),
                    Write(LOG_FILE, data, True)]
        data = b""
        if rd.entries:
            data += _entries_record(rd.entries)
        if rd.hard_state is not None:
            data += codec.encode_record([_HARD, *codec.hard_state_to_plain(rd.hard_state)])
        return [Write(LOG_FILE, data)] if data else []

    def apply_ready(self, rd: Ready) -> None:
        """The Ready's writes are durable: let the core read them from storage."""
        st = self.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)

    def compact(self, applied: int, conf: ConfState, data: bytes, keep: int) -> list[Write]:
        """Snapshot the state machine image `data` taken at `applied`, keep `keep` entries
        before it, and return the writes (snapshot file first, then the shortened log)."""
        st = self.storage
        st.create_snapshot(applied, conf, data)
        st.compact(max(applied - keep, st.first_index() - 1))
        return self.rewrite()

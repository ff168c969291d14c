"""The manifest: which tables are live at which level, replaced atomically as a whole.

Layout of the file `MANIFEST`: ``u32 length | u32 crc32c(payload) | payload`` where payload is
msgpack of a map (format, next_file, last_seq, log_number, levels). An update writes the whole
state to `MANIFEST.tmp`, fsyncs it, renames it over `MANIFEST` and fsyncs the directory, so a
crash leaves either the old or the new state, never a mix: recovery can never see a
half-applied flush or compaction. The state is small (a few hundred bytes per table), so
rewriting it whole is cheaper than the log-plus-CURRENT scheme of LevelDB and simpler to check.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
from crc32c import crc32c

from keeldb import limits
from keeldb.errors import CorruptionError
from keeldb.ports import Disk
from keeldb.storage.cache import BlockCache
from keeldb.storage.engine import Options, VerifyReport
from keeldb.storage.sstable import ReadStats, TableReader
from keeldb.storage.wal import parse_wal

MANIFEST = "MANIFEST"
MANIFEST_TMP = "MANIFEST.tmp"
FORMAT = 1
_HEADER = struct.Struct("<II")


def file_number(name: str) -> int | None:
    """The number of a table (`N.sst`) or log (`N.log`) file, else None."""
    stem, _, ext = name.partition(".")
    if ext in ("log", "sst") and stem.isdigit():
        return int(stem)
    return None


def table_name(number: int) -> str:
    return f"{number:06d}.sst"


@dataclass(frozen=True, slots=True)
class TableMeta:
    """What the manifest records about one live table."""

    id: int
    file_bytes: int
    smallest: bytes
    largest: bytes
    entries: int
    tombstones: int
    seq_min: int
    seq_max: int
    raw_key_bytes: int = 0
    raw_value_bytes: int = 0

    @property
    def name(self) -> str:
        return table_name(self.id)

    def to_list(self) -> list[object]:
        return [
            self.id,
            self.file_bytes,
            self.smallest,
            self.largest,
            self.entries,
            self.tombstones,
            self.seq_min,
            self.seq_max,
            self.raw_key_bytes,
            self.raw_value_bytes,
        ]


@dataclass(frozen=True, slots=True)
class ManifestState:
    """The durable part of the engine's state."""

    next_file: int
    last_seq: int
    log_number: int  # WALs numbered below this are fully in tables and may be deleted
    levels: tuple[tuple[TableMeta, ...], ...] = field(
        default_factory=lambda: tuple(() for _ in range(limits.level_count_max))
    )

    def check(self) -> None:
        """Assert the invariants every manifest state keeps."""
        assert len(self.levels) == limits.level_count_max, len(self.levels)
        ids: set[int] = set()
        for level, tables in enumerate(self.levels):
            for t in tables:
                assert t.id not in ids, f"table {t.id} listed twice"
                assert t.id < self.next_file, f"table {t.id} >= next_file {self.next_file}"
                assert t.smallest <= t.largest, f"table {t.id} has smallest > largest"
                ids.add(t.id)
            if level == 0:
                assert all(
                    a.seq_max >= b.seq_max for a, b in zip(tables, tables[1:], strict=False)
                ), "L0 not ordered newest first"
            else:
                for a, b in zip(tables, tables[1:], strict=False):
                    assert a.largest < b.smallest, f"L{level} tables {a.id} and {b.id} overlap"
        assert self.log_number < self.next_file or self.log_number == 0

    def table_ids(self) -> set[int]:
        return {t.id for tables in self.levels for t in tables}


def encode_manifest(state: ManifestState) -> bytes:
    payload = msgpack.packb(
        {
            "format": FORMAT,
            "next_file": state.next_file,
            "last_seq": state.last_seq,
            "log_number": state.log_number,
            "levels": [[t.to_list() for t in tables] for tables in state.levels],
        },
        use_bin_type=True,
    )
    return _HEADER.pack(len(payload), crc32c(payload)) + payload


def decode_manifest(data: bytes, name: str = MANIFEST) -> ManifestState:
    if len(data) < _HEADER.size:
        raise CorruptionError(
            f"{name} is {len(data)} bytes, shorter than its header; restore it from a backup",
            path=name,
            offset=0,
        )
    length, crc = _HEADER.unpack_from(data)
    payload = data[_HEADER.size : _HEADER.size + length]
    if len(payload) != length or crc32c(payload) != crc:
        raise CorruptionError(
            f"{name} fails its checksum (length {length}, file "
            f"{len(data)} bytes); restore it from a backup",
            path=name,
            offset=0,
        )
    try:
        raw = msgpack.unpackb(payload, raw=False)
        if raw["format"] != FORMAT:
            raise ValueError(f"format {raw['format']} is not {FORMAT}")
        levels = [tuple(TableMeta(*t) for t in tables) for tables in raw["levels"]]
        levels += [() for _ in range(limits.level_count_max - len(levels))]
        state = ManifestState(
            next_file=raw["next_file"],
            last_seq=raw["last_seq"],
            log_number=raw["log_number"],
            levels=tuple(levels),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptionError(
            f"{name} has a valid checksum but a bad body ({exc}); restore it from a backup",
            path=name,
            offset=_HEADER.size,
        ) from exc
    state.check()
    return state


def read_manifest(disk: Disk) -> ManifestState | None:
    """The durable state, or None when the directory holds no manifest yet."""
    if not disk.exists(MANIFEST):
        return None
    file = disk.open(MANIFEST)
    try:
        return decode_manifest(file.read_at(0, file.size()))
    finally:
        file.close()


def write_manifest(
    disk: Disk, state: ManifestState, crash_hook: Callable[[str], None] | None = None
) -> int:
    """Replace the manifest atomically by `state`; return the bytes written."""
    state.check()
    data = encode_manifest(state)
    file = disk.create(MANIFEST_TMP)
    try:
        file.append(data)
        file.sync()
    finally:
        file.close()
    if crash_hook is not None:
        crash_hook("manifest-after-write-before-rename")
    disk.rename(MANIFEST_TMP, MANIFEST)
    if crash_hook is not None:
        crash_hook("manifest-after-rename-before-dirsync")
    disk.sync_dir()
    return len(data)


def verify_store(disk: Disk, options: Options | None = None) -> VerifyReport:
    """Check every checksum of the store in `disk` without changing anything.

    Used by `engine.verify()` and `keeldb check-store`; a torn WAL tail is reported as a note
    (recovery truncates it), not a problem.
    """
    options = options or Options()
    problems: list[str] = []
    files = blocks = entries = 0
    try:
        state = read_manifest(disk)
    except CorruptionError as exc:
        return VerifyReport(
            files_checked=1, blocks_checked=0, entries_checked=0, problems=(str(exc),)
        )
    if state is None:
        return VerifyReport(0, 0, 0, ("no MANIFEST: not a keeldb store",))
    files += 1
    stats = ReadStats()
    cache = BlockCache(0)
    for level, tables in enumerate(state.levels):
        for t in tables:
            files += 1
            try:
                file = disk.open(t.name)
            except FileNotFoundError:
                problems.append(f"L{level} table {t.name} is listed in MANIFEST but missing")
                continue
            try:
                reader = TableReader.open(file, t.id, cache, stats)
                blocks += reader.verify()
                entries += reader.props.entries
                if reader.props.entries != t.entries or reader.props.smallest != t.smallest:
                    problems.append(f"table {t.name} does not match its MANIFEST entry")
            except CorruptionError as exc:
                problems.append(str(exc))
            finally:
                file.close()
    for name in disk.list():
        number = file_number(name)
        if name.endswith(".log") and number is not None and number >= state.log_number:
            files += 1
            file = disk.open(name)
            try:
                batches, valid = parse_wal(file.read_at(0, file.size()), name)
                entries += sum(len(ops) for _, ops in batches)
            except CorruptionError as exc:
                problems.append(str(exc))
            finally:
                file.close()
    return VerifyReport(
        files_checked=files,
        blocks_checked=blocks,
        entries_checked=entries,
        problems=tuple(problems),
    )

"""Sorted string tables: immutable files of (key, seq, kind, value) entries.

Layout (docs/design/sstable-format.md has the details and the reasons):

    data block 0 | ... | data block n-1 | index block | bloom block | props block | footer

Every block is `body | u8 compression | u32 crc32c(body + compression byte)`; the footer holds
the meta blocks' handles, the format version, its own crc32c and a magic number. Data blocks
are columnar (lengths, seqs, kinds, keys blob, values blob), so encoding and decoding are a few
C-level calls per block rather than Python work per entry. A reader keeps the index in memory
and caches checked raw blocks in the shared `BlockCache` (keeldb/storage/block.py): a point
read is one bisect in the index, one cache lookup and one `bytes.find` in the block.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate, chain, compress, islice, repeat
from operator import add, itemgetter, lt, ne, neg
from typing import Any

import zstandard
from crc32c import crc32c
from xxhash import xxh3_64_intdigest

from keeldb import limits
from keeldb.errors import ClosedError, ConfigError, CorruptionError
from keeldb.ports import File
from keeldb.storage.block import (
    _HEADER_BYTES,
    _STRUCT_FIELDS_MAX,
    _U64,
    BLOCK_HEADER,
    DELETED,
    MISS,
    CachedBlock,
    _check_block,
    _entries,
    _entry_at,
    _find_first,
    _fixed_parser,
    _keys,
    _kinds,
    _layout,
    _seqs,
    _struct_cache,
    _values,
    cached_block_bytes,
    newest_fixed,
)
from keeldb.storage.bloom import BloomFilter
from keeldb.storage.cache import BlockCache, pack_key
from keeldb.storage.engine import KIND_DELETE, KIND_PUT

Entry = tuple[bytes, int, int, bytes]

FORMAT_VERSION = 1
MAGIC = 0x3154_5353_4C45_454B  # b"KEELSST1" read as a little-endian u64

COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
COMPRESSIONS = {"none": COMPRESSION_NONE, "zstd": COMPRESSION_ZSTD}
ZSTD_LEVEL = 1  # fastest; blocks are small, the ratio gain of higher levels is small
_DCTX_POOL_MAX = 8  # idle zstd decompression contexts kept for reuse
_dctx_pool: list[zstandard.ZstdDecompressor] = []
# Keep a compressed block only if it saves at least 1/8 (as RocksDB does).
COMPRESS_MIN_SAVING_DIVISOR = 8

_TRAILER = struct.Struct("<BI")  # compression type, crc32c
TRAILER_BYTES = _TRAILER.size
# index (offset, size), bloom (offset, size), props (offset, size), version, crc, magic
_FOOTER = struct.Struct("<QIQIQIIIQ")
FOOTER_BYTES = _FOOTER.size
_FOOTER_CRC_AT = FOOTER_BYTES - 12  # crc covers the footer bytes before it
_BLOCK_HEADER = struct.Struct("<Iii")
assert _BLOCK_HEADER.format == BLOCK_HEADER.format, "one block header format"
_INDEX_HEADER = struct.Struct("<I")
_PROPS = struct.Struct("<QQQQQQQII")
# Bytes a data block spends per entry beside key and value (two u32 lengths, seq, kind).
ENTRY_OVERHEAD_BYTES = 17
# Entries add_many takes from its iterable at a time: bounds the writer's transient lists.
ADD_MANY_CHUNK_ENTRIES = 8192
SEQ_MAX = (1 << 64) - 1

_LITTLE = sys.byteorder == "little"
_FIELDS_MAX = _STRUCT_FIELDS_MAX
_parsers = _struct_cache
assert array("I").itemsize == 4 and array("Q").itemsize == 8, "unsupported platform"


@dataclass(frozen=True, slots=True)
class TableProps:
    smallest: bytes  # user keys
    largest: bytes
    entries: int
    tombstones: int
    seq_min: int
    seq_max: int
    file_bytes: int
    raw_key_bytes: int
    raw_value_bytes: int
    data_blocks: int = 0


@dataclass(slots=True)
class ReadStats:
    """Shared read counters, one per engine, passed to every reader.

    tables_touched counts `get` calls on a table whose key range holds the key;
    bloom_false_positives counts probes the filter passed although the table held no version
    of the key; block_reads counts data blocks read from the file (cache misses).
    Every such `get` probes the bloom filter, so `bloom_checks` is `tables_touched`; each
    probe that passes looks its block up in the cache: a miss counts in `find_misses`, the
    rest are `find_hits` (kept out of `BlockCache.hits`: one counter less per read).
    """

    bloom_useful: int = 0
    bloom_false_positives: int = 0
    tables_touched: int = 0
    block_reads: int = 0
    find_misses: int = 0

    @property
    def bloom_checks(self) -> int:
        return self.tables_touched

    @property
    def find_hits(self) -> int:
        """Cache hits of point reads' first block lookups (not in `BlockCache.hits`)."""
        return self.tables_touched - self.bloom_useful - self.find_misses


# --- column helpers ---------------------------------------------------------------------


def _pack(code: str, values: Iterable[int]) -> bytes:
    arr = array(code, values)
    if not _LITTLE:
        arr.byteswap()
    return arr.tobytes()


def _read_array(code: str, data: bytes, start: int, count: int) -> list[int]:
    arr = array(code)
    arr.frombytes(data[start : start + count * arr.itemsize])
    if not _LITTLE:
        arr.byteswap()
    return arr.tolist()


def _split(blob: bytes, width: int, lengths: list[int] | None, count: int) -> list[bytes]:
    """Cut `blob` into `count` pieces: all `width` long, or of the given `lengths`."""
    if lengths is None:
        if width == 0:
            return [b""] * count
        if count > _STRUCT_FIELDS_MAX:
            return [blob[at : at + width] for at in range(0, count * width, width)]
        return list(_fixed_parser(width, count).unpack(blob))
    ends = list(accumulate(lengths))
    return [blob[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _width(lengths: list[int]) -> int:
    """The common length of all items, or -1 if they differ (or there are none)."""
    return lengths[0] if lengths and lengths.count(lengths[0]) == len(lengths) else -1


# --- writer -----------------------------------------------------------------------------

_COLUMN_GETTERS = tuple(map(itemgetter, range(4)))


def _columns(entries: list[Entry]) -> list[list[Any]]:
    """Entries as (keys, seqs, kinds, values) columns: four C-level maps, about twice as
    fast as `zip(*entries)` (which passes every entry as an argument)."""
    return [list(map(get, entries)) for get in _COLUMN_GETTERS]


class TableWriter:
    """Writes one table to a fresh `File`; entries must come sorted by (key asc, seq desc)."""

    def __init__(
        self,
        file: File,
        *,
        block_bytes: int,
        bloom_bits_per_key: int,
        compression: str = "none",
        expected_entries: int = 0,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ConfigError(
                f"unknown compression {compression!r}; use one of {sorted(COMPRESSIONS)}"
            )
        for name, value, low, high, default in (
            ("block_bytes", block_bytes, 64, limits.block_bytes_max, limits.block_bytes_target),
            ("bloom_bits_per_key", bloom_bits_per_key, 1, 64, limits.bloom_bits_per_key),
        ):
            if not low <= value <= high:
                raise ConfigError(f"{name}={value} is outside {low}..{high}; default {default}")
        assert file.size() == 0, f"table file {file.name} must be empty, has {file.size()} bytes"
        assert expected_entries >= 0
        self._file = file
        self._block_bytes = block_bytes
        self._bloom_bits = bloom_bits_per_key
        self._compression = COMPRESSIONS[compression]
        zstd = self._compression == COMPRESSION_ZSTD
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL) if zstd else None
        self._buf: list[Entry] = []  # entries from add() not yet processed
        # pending (not yet written) block as columns: keys, seqs, kinds, values, key and
        # value lengths
        self._pending: tuple[list, list, list, list, list, list] = ([], [], [], [], [], [])
        self._pending_bytes = 0
        # index
        self._last_keys: list[bytes] = []
        self._offsets: list[int] = []
        self._sizes: list[int] = []
        # xxh3 of every key added (duplicates allowed): 8 bytes each, not a Python int's 40
        self._hashes = array("Q")
        self._distinct = 0  # distinct keys added
        self._offset = 0
        self._out: list[bytes] = []  # blocks not yet written to the file
        self._out_at = 0  # file offset where `_out` starts
        self._entries = 0
        self._tombstones = 0
        self._seq_min = SEQ_MAX
        self._seq_max = 0
        self._raw_keys = 0
        self._raw_values = 0
        self._smallest: bytes | None = None
        self._prev: tuple[bytes, int] | None = None  # (key, -seq) of the last entry
        self._finished = False

    # -- adding entries

    def add(self, key: bytes, seq: int, kind: int, value: bytes) -> None:
        """Add one entry. Buffered: order is asserted when the buffer is drained."""
        buf = self._buf
        buf.append((key, seq, kind, value))
        if len(buf) >= ADD_MANY_CHUNK_ENTRIES:
            self._drain()

    def add_many(self, entries: Iterable[Entry]) -> None:
        """Add many sorted entries; per chunk the work is C-level column operations."""
        self._drain()
        if isinstance(entries, list):
            for at in range(0, len(entries), ADD_MANY_CHUNK_ENTRIES):
                self._add_columns(*_columns(entries[at : at + ADD_MANY_CHUNK_ENTRIES]))
            return
        it = iter(entries)
        while chunk := list(islice(it, ADD_MANY_CHUNK_ENTRIES)):
            self._add_columns(*_columns(chunk))

    def _drain(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, []
            self._add_columns(*_columns(buf))

    def _check_order(self, keys: Sequence[bytes], seqs: Sequence[int]) -> None:
        prev = self._prev
        if (prev is None or prev[0] < keys[0]) and all(map(lt, keys, islice(keys, 1, None))):
            self._distinct += len(keys)  # strictly ascending: one version each, seqs unchecked
        else:
            self._distinct += sum(map(ne, keys, islice(keys, 1, None))) + (
                prev is None or prev[0] != keys[0]
            )
            order = list(zip(keys, map(neg, seqs), strict=True))
            if prev is not None:
                order.insert(0, prev)
            assert all(map(lt, order, islice(order, 1, None))), (
                "entries must arrive sorted by (key ascending, seq descending), no duplicates"
            )
        self._prev = (keys[-1], -seqs[-1])

    def _add_columns(
        self, keys: Sequence[bytes], seqs: Sequence[int], kinds: Sequence[int],
        values: Sequence[bytes],
    ) -> None:  # fmt: skip
        assert not self._finished, "table already finished"
        self._check_order(keys, seqs)
        count = len(keys)
        key_lens = list(map(len, keys))
        value_lens = list(map(len, values))
        seq_min, seq_max = min(seqs), max(seqs)
        assert keys[0] and max(key_lens) <= limits.key_bytes_max, "empty or too long key"
        assert max(value_lens) <= limits.value_bytes_max, "value too long"
        assert 0 <= seq_min and seq_max <= SEQ_MAX, f"seq out of range {seq_min}..{seq_max}"
        assert set(kinds) <= {KIND_PUT, KIND_DELETE}, f"unknown kinds {set(kinds)}"
        if self._smallest is None:
            self._smallest = keys[0]
        self._entries += count
        self._tombstones += count - sum(kinds)
        self._seq_min = min(self._seq_min, seq_min)
        self._seq_max = max(self._seq_max, seq_max)
        self._raw_keys += sum(key_lens)
        self._raw_values += sum(value_lens)
        self._hashes.extend(map(xxh3_64_intdigest, keys))
        # cum[i] = bytes of the pending block after taking the first i new entries
        sizes = map(add, map(add, key_lens, value_lens), repeat(ENTRY_OVERHEAD_BYTES))
        cum = list(accumulate(sizes, initial=self._pending_bytes))
        cols = (keys, seqs, kinds, values, key_lens, value_lens)
        pending = self._pending
        start = 0
        block_start = 0  # cum value at which the current block began
        while (cut := bisect_left(cum, block_start + self._block_bytes, start + 1)) <= count:
            if pending[0]:  # entries from an earlier call open this block
                for column, new in zip(pending, cols, strict=True):
                    column += new[start:cut]
                self._encode_block(*pending)
                pending = self._pending = ([], [], [], [], [], [])
            else:
                self._encode_block(*[column[start:cut] for column in cols])  # type: ignore[arg-type]
            block_start = cum[cut]
            start = cut
        for column, new in zip(pending, cols, strict=True):
            column += new[start:]
        self._pending_bytes = cum[-1] - block_start

    # -- writing blocks

    def _write_block(self, body: bytes, compress: bool) -> tuple[int, int]:
        """Append `body` as a checksummed block; return its (offset, size incl. trailer)."""
        kind = COMPRESSION_NONE
        if compress and self._compressor is not None:
            packed = self._compressor.compress(body)
            if len(packed) <= len(body) - len(body) // COMPRESS_MIN_SAVING_DIVISOR:
                body, kind = packed, COMPRESSION_ZSTD
        crc = crc32c(bytes((kind,)), crc32c(body))
        offset = self._offset
        out = self._out
        out.append(body)
        out.append(_TRAILER.pack(kind, crc))
        size = len(body) + TRAILER_BYTES
        self._offset += size
        if self._offset - self._out_at >= limits.table_write_buffer_bytes:
            self._write_out()
        return offset, size

    def _write_out(self) -> None:
        """Append the gathered blocks with one write (a write per 4 KiB block cost ~10 % of a
        flush, and each one hands the GIL to the foreground and back)."""
        if self._out:
            self._file.append(b"".join(self._out))
            self._out = []
        self._out_at = self._offset

    def _encode_block(
        self, keys: Sequence[bytes], seqs: Sequence[int], kinds: Sequence[int],
        values: Sequence[bytes], key_lens: list[int], value_lens: list[int],
    ) -> None:  # fmt: skip
        count = len(keys)
        assert count > 0
        kw, vw = _width(key_lens), _width(value_lens)
        parts = [_BLOCK_HEADER.pack(count, kw, vw)]
        if kw < 0:
            parts.append(_pack("I", key_lens))
        if vw < 0:
            parts.append(_pack("I", value_lens))
        parts += [_pack("Q", seqs), bytes(kinds), b"".join(keys), b"".join(values)]
        body = b"".join(parts)
        assert len(body) <= limits.block_bytes_max, f"block of {len(body)} bytes"
        offset, size = self._write_block(body, compress=True)
        self._last_keys.append(keys[-1])
        self._offsets.append(offset)
        self._sizes.append(size)

    def _flush_pending(self) -> None:
        if self._pending[0]:
            self._encode_block(*self._pending)
            self._pending = ([], [], [], [], [], [])
        self._pending_bytes = 0

    def estimated_bytes(self) -> int:
        """Bytes the table would have if finished now (index and bloom estimated)."""
        self._drain()
        index = sum(map(len, self._last_keys)) + 16 * len(self._last_keys)
        bloom = self._distinct * self._bloom_bits // 8
        return self._offset + self._pending_bytes + index + bloom + FOOTER_BYTES

    def finish(self) -> TableProps:
        """Write the last data block, index, bloom, props and footer; sync. Not closed."""
        assert not self._finished, "table already finished"
        self._drain()
        self._flush_pending()
        self._finished = True
        n = len(self._last_keys)
        lengths = map(len, self._last_keys)
        index_body = _INDEX_HEADER.pack(n) + b"".join(
            [_pack("I", lengths), _pack("Q", self._offsets), _pack("I", self._sizes)]
            + self._last_keys
        )
        index = self._write_block(index_body, compress=False)
        bloom_body = BloomFilter.build_from_hashes(
            self._hashes, self._bloom_bits, distinct=self._distinct
        ).to_bytes()
        bloom = self._write_block(bloom_body, compress=False)
        largest = self._prev[0] if self._prev is not None else b""
        props = TableProps(
            smallest=self._smallest or b"", largest=largest, entries=self._entries,
            tombstones=self._tombstones, seq_min=self._seq_min if self._entries else 0,
            seq_max=self._seq_max, file_bytes=0, raw_key_bytes=self._raw_keys,
            raw_value_bytes=self._raw_values, data_blocks=n,
        )  # fmt: skip
        meta = (index, bloom, self._write_block(_encode_props(props), compress=False))
        footer = _FOOTER.pack(*chain(*meta), FORMAT_VERSION, 0, MAGIC)
        crc = crc32c(footer[:_FOOTER_CRC_AT])
        self._out.append(_FOOTER.pack(*chain(*meta), FORMAT_VERSION, crc, MAGIC))
        self._offset += FOOTER_BYTES
        self._write_out()
        self._file.sync()
        assert self._file.size() == self._offset, (self._file.size(), self._offset)
        self._hashes = array("Q")
        return replace(props, file_bytes=self._offset)


def _encode_props(p: TableProps) -> bytes:
    head = _PROPS.pack(
        p.entries, p.tombstones, p.seq_min, p.seq_max, p.raw_key_bytes, p.raw_value_bytes,
        p.data_blocks, len(p.smallest), len(p.largest),
    )  # fmt: skip
    return head + p.smallest + p.largest


def _decode_props(body: bytes, file_bytes: int) -> TableProps:
    """ValueError or struct.error if `body` is not a props block."""
    entries, tombstones, seq_min, seq_max, raw_keys, raw_values, nblocks, ls, ll = (
        _PROPS.unpack_from(body, 0)
    )
    if len(body) != _PROPS.size + ls + ll:
        raise ValueError("lengths do not match")
    return TableProps(
        smallest=body[_PROPS.size : _PROPS.size + ls], largest=body[_PROPS.size + ls :],
        entries=entries, tombstones=tombstones, seq_min=seq_min, seq_max=seq_max,
        file_bytes=file_bytes, raw_key_bytes=raw_keys, raw_value_bytes=raw_values,
        data_blocks=nblocks,
    )  # fmt: skip


# --- reader -----------------------------------------------------------------------------


def _corrupt(name: str, offset: int, what: str) -> CorruptionError:
    return CorruptionError(
        f"table file {name!r} is corrupt at offset {offset}: {what}; the data of this "
        "table is lost on this node: restore it from a replica or a backup",
        path=name,
        offset=offset,
    )


class TableReader:
    """Reads one table; open with `TableReader.open`. Not for use after `close()` except by
    iterators already running (they keep the file open until they finish)."""

    props: TableProps
    table_id: int
    _file: File
    _name: str
    _cache: BlockCache
    _stats: ReadStats
    _last_keys: list[bytes]
    _offsets: list[int]
    _sizes: list[int]
    _cache_keys: list[int]
    _slots: list[Any]
    _refs: bytearray
    _bloom: BloomFilter
    _nblocks: int
    _pins: int
    _closed: bool
    _file_closed: bool
    _reopen: Callable[[], File] | None
    _meta: tuple[tuple[int, int], ...]
    _smallest: bytes
    _largest: bytes
    _bloom_blocks: list[int] | array[int]  # 512-bit ints (filter kind 1) or u64 words (2)
    _bloom_n: int
    _mask_a: list[int] | array[int]
    _mask_b: list[int] | array[int]

    def __init__(self) -> None:
        raise TypeError("use TableReader.open(...)")

    @classmethod
    def open(
        cls, file: File, table_id: int, block_cache: BlockCache, stats: ReadStats, *,
        reopen: Callable[[], File] | None = None,
    ) -> TableReader:  # fmt: skip
        """Read and verify footer, index, bloom and props; CorruptionError if anything is off.

        `reopen` (optional) opens the same file again: a reader closed by a cache eviction
        while someone still holds it then serves reads by reopening the file per block read
        instead of failing with ClosedError.
        """
        self = object.__new__(cls)
        self._reopen = reopen
        self.table_id = table_id
        self._file = file
        self._name = file.name
        self._cache = block_cache
        self._stats = stats
        self._pins = 0
        self._closed = False
        self._file_closed = False
        file_bytes = file.size()
        footer = self._read_footer(file_bytes)
        index_handle, bloom_handle, props_handle = footer
        self._meta = footer
        self._load_index(*index_handle)
        bloom_body = self._read_checked(*bloom_handle, "bloom block")
        try:
            self._bloom = BloomFilter.from_bytes(bloom_body)
        except ValueError as exc:
            raise _corrupt(self._name, bloom_handle[0], f"bloom block: {exc}") from exc
        self.props = self._load_props(*props_handle, file_bytes)
        # empty table: largest b"" is below every (non-empty) key, so get() returns at once
        self._smallest, self._largest = self.props.smallest, self.props.largest
        self._bloom_blocks, self._bloom_n, self._mask_a, self._mask_b = self._bloom.probe_parts()
        # Cached blocks are keyed by block number, so that the cache can keep them in this
        # table's `_slots` too (BlockCache.register): a hit is `_slots[i]`, no hashing.
        self._cache_keys = [pack_key(table_id, i) for i in range(self._nblocks)]
        self._slots, self._refs = block_cache.register(table_id, self._nblocks)
        return self

    # -- opening

    def _read_footer(self, file_bytes: int) -> tuple[tuple[int, int], ...]:
        name = self._name
        if file_bytes < FOOTER_BYTES:
            what = f"{file_bytes} bytes is less than a footer: truncated or not a keeldb table"
            raise _corrupt(name, 0, what)
        at = file_bytes - FOOTER_BYTES
        raw = self._read_at(at, FOOTER_BYTES)
        if len(raw) != FOOTER_BYTES:
            raise _corrupt(name, at, "short read of the footer")
        fields = _FOOTER.unpack(raw)
        if fields[8] != MAGIC:
            raise _corrupt(name, at + FOOTER_BYTES - 8, "bad magic: truncated or not a table")
        if crc32c(raw[:_FOOTER_CRC_AT]) != fields[7]:
            raise _corrupt(name, at, "footer checksum mismatch")
        if fields[6] != FORMAT_VERSION:
            what = f"format version {fields[6]} is not {FORMAT_VERSION}: upgrade keeldb"
            raise _corrupt(name, at, what)
        handles = ((fields[0], fields[1]), (fields[2], fields[3]), (fields[4], fields[5]))
        for offset, size in handles:
            if size < TRAILER_BYTES or offset + size > at:
                raise _corrupt(name, at, f"footer points at bytes {offset}+{size} past the data")
        return handles

    def _read_at(self, offset: int, size: int) -> bytes:
        if not self._file_closed:
            return self._file.read_at(offset, size)
        if self._reopen is None:
            raise ClosedError(f"table {self._name!r} was closed; reopen it")
        try:
            file = self._reopen()
        except FileNotFoundError as exc:  # deleted after a compaction: the caller may retry
            raise _corrupt(self._name, offset, "the table file is gone") from exc
        try:
            return file.read_at(offset, size)
        finally:
            file.close()

    def _read_checked(self, offset: int, size: int, what: str) -> bytes:
        """Read a block, verify its checksum, undo its compression; return the body."""
        raw = self._read_at(offset, size)
        if len(raw) != size or size < TRAILER_BYTES:
            raise _corrupt(self._name, offset, f"{what}: short read ({len(raw)} of {size} bytes)")
        kind, crc = _TRAILER.unpack_from(raw, size - TRAILER_BYTES)
        body = raw[: size - TRAILER_BYTES]
        if crc32c(raw[size - TRAILER_BYTES : size - TRAILER_BYTES + 1], crc32c(body)) != crc:
            raise _corrupt(self._name, offset, f"{what}: checksum mismatch")
        if kind == COMPRESSION_NONE:
            return body
        if kind == COMPRESSION_ZSTD:
            # A decompression context is costly to make (~as much as decompressing a block);
            # reuse them. list.pop/append are atomic, so threads never share one at a time.
            try:
                dctx = _dctx_pool.pop()
            except IndexError:
                dctx = zstandard.ZstdDecompressor()
            try:
                return dctx.decompress(body, max_output_size=limits.block_bytes_max)
            except zstandard.ZstdError as exc:
                raise _corrupt(self._name, offset, f"{what}: zstd: {exc}") from exc
            finally:
                if len(_dctx_pool) < _DCTX_POOL_MAX:
                    _dctx_pool.append(dctx)
        raise _corrupt(self._name, offset, f"{what}: unknown compression type {kind}")

    def _load_index(self, offset: int, size: int) -> None:
        body = self._read_checked(offset, size, "index block")
        try:
            (n,) = _INDEX_HEADER.unpack_from(body, 0)
            pos = _INDEX_HEADER.size
            key_lens = _read_array("I", body, pos, n)
            pos += 4 * n
            offsets = _read_array("Q", body, pos, n)
            pos += 8 * n
            sizes = _read_array("I", body, pos, n)
            pos += 4 * n
            if len(key_lens) != n or len(sizes) != n or pos + sum(key_lens) != len(body):
                raise ValueError("lengths do not add up")
            last_keys = _split(body[pos:], -1, key_lens, n) if n else []
            end = offset
            for off, sz in zip(offsets, sizes, strict=True):
                if off + sz > end or sz < TRAILER_BYTES:
                    raise ValueError(f"block handle {off}+{sz} overlaps the index")
            if any(map(lt, islice(last_keys, 1, None), last_keys)):
                raise ValueError("last keys are not sorted")
        except (ValueError, struct.error) as exc:
            raise _corrupt(self._name, offset, f"index block: {exc}") from exc
        self._last_keys = last_keys
        self._offsets = offsets
        self._sizes = sizes
        self._nblocks = n

    def _load_props(self, offset: int, size: int, file_bytes: int) -> TableProps:
        body = self._read_checked(offset, size, "props block")
        try:
            props = _decode_props(body, file_bytes)
        except (ValueError, struct.error) as exc:
            raise _corrupt(self._name, offset, f"props block: {exc}") from exc
        if props.data_blocks != self._nblocks or (
            self._nblocks and props.largest != self._last_keys[-1]
        ):
            raise _corrupt(self._name, offset, "props block disagrees with the index")
        return props

    # -- blocks

    def _load_block(self, i: int) -> CachedBlock:
        """Read data block `i` from the file, verify and check it; the cache is not used."""
        offset = self._offsets[i]
        body = self._read_checked(offset, self._sizes[i], "data block")
        try:
            block = _check_block(body)
        except (ValueError, struct.error) as exc:
            raise _corrupt(self._name, offset, f"data block: {exc}") from exc
        self._stats.block_reads += 1
        return block

    def _block(self, i: int) -> CachedBlock:
        block: CachedBlock | None = self._slots[i]
        cache = self._cache
        if block is not None:
            self._refs[i] = 1
            cache.hits += 1
            return block
        cache.misses += 1
        block = self._load_block(i)
        cache.put_packed(self._cache_keys[i], block, cached_block_bytes(block))
        return block

    # -- reads

    def may_contain(self, key: bytes) -> bool:
        return self._bloom.may_contain(key)

    def get(self, key: bytes, seq_max: int, h: int | None = None) -> tuple[int, int, bytes] | None:
        """Newest version of `key` with seq <= `seq_max`, as (seq, kind, value), or None.

        `h` is `xxh3_64_intdigest(key)` if the caller has it (one hash serves every table).
        """
        found = self.find(key, seq_max, xxh3_64_intdigest(key) if h is None else h)
        return self.find_uncached(key, seq_max) if found is MISS else found

    def find(self, key: bytes, seq_max: int, h: int) -> Any:
        """`get` from cached blocks only: returns MISS, without any I/O, when the block to
        search is not cached (then call `find_uncached`, with the lock that guards cache
        fills held). Counts the read in the stats either way.

        Hot path: the bloom probe, the cache lookup and, for blocks of fixed-width keys and
        values, the search inside the raw block are inlined (each saved Python call is
        ~5-10 % of a read): `bytes.find` of the key in the keys column, kept only at an
        entry boundary, then the seq, kind and value are read at the entry's offsets.
        The cache lookup is this table's slot list (BlockCache.register) and a CLOCK byte.
        """
        if key > self._largest or key < self._smallest:
            return None
        stats = self._stats
        stats.tables_touched += 1
        m = self._mask_a[h & 0xFFF] | self._mask_b[(h >> 12) & 0xFFF]
        if self._bloom_blocks[((h >> 32) * self._bloom_n) >> 32] & m != m:
            stats.bloom_useful += 1
            return None
        i = bisect_left(self._last_keys, key)  # < nblocks: key <= largest = last key
        block: Any = self._slots[i]
        if block is None:
            stats.find_misses += 1
            return MISS
        self._refs[i] = 1
        if block.__class__ is not bytes:
            return self._search(key, seq_max, i, block, False)
        n, kw, vw = _BLOCK_HEADER.unpack_from(block, 0)
        if kw != len(key):  # every key of the block has kw bytes: the key is not here
            stats.bloom_false_positives += 1
            return None
        key_at = _HEADER_BYTES + 9 * n
        end = key_at + kw * n
        p = block.find(key, key_at, end)
        while p >= 0:
            r = (p - key_at) % kw
            if not r:
                break
            p = block.find(key, p + kw - r, end)  # a match across two keys: look further
        else:
            stats.bloom_false_positives += 1
            return None
        j = (p - key_at) // kw
        (seq,) = _U64.unpack_from(block, _HEADER_BYTES + 8 * j)
        if seq <= seq_max:
            return seq, block[key_at - n + j], block[end + j * vw : end + (j + 1) * vw]
        return self._search(key, seq_max, i, block, False)  # older versions follow

    def find_value(self, key: bytes, h: int) -> Any:
        """`find` of the newest version (no snapshot), for the engine's `get`: the value,
        DELETED (a tombstone), None (no version here) or MISS (block not cached: call
        `find_uncached(key, SEQ_MAX)`). Any version is visible, so the entry's seq is never
        read (one memory line less) and no tuple is built; counts like `find`."""
        if key > self._largest or key < self._smallest:
            return None
        stats = self._stats
        stats.tables_touched += 1
        m = self._mask_a[h & 0xFFF] | self._mask_b[(h >> 12) & 0xFFF]
        if self._bloom_blocks[((h >> 32) * self._bloom_n) >> 32] & m != m:
            stats.bloom_useful += 1
            return None
        i = bisect_left(self._last_keys, key)
        block: Any = self._slots[i]
        if block is None:
            stats.find_misses += 1
            return MISS
        self._refs[i] = 1
        if block.__class__ is not bytes:
            found = self._search(key, SEQ_MAX, i, block, False)
            return found if found is None or found is MISS else found[2] if found[1] else DELETED
        n, kw, vw = _BLOCK_HEADER.unpack_from(block, 0)
        if kw != len(key):
            stats.bloom_false_positives += 1
            return None
        key_at = _HEADER_BYTES + 9 * n
        end = key_at + kw * n
        p = block.find(key, key_at, end)
        while p >= 0:
            r = (p - key_at) % kw
            if not r:
                break
            p = block.find(key, p + kw - r, end)
        else:
            stats.bloom_false_positives += 1
            return None
        j = (p - key_at) // kw  # the key's first entry: its newest version
        if block[key_at - n + j]:
            return block[end + j * vw : end + (j + 1) * vw]
        return DELETED

    def find_value_uncached(self, key: bytes) -> Any:
        """The rest of a `find_value` that returned MISS (not counted again): reads, checks
        and caches the block (call with the lock that guards cache fills held), then searches
        it in place; the value, DELETED or None. Cheaper than `find_uncached` + tuple: at a
        cold cache (just after a compaction) a quarter of reads end here."""
        if key > self._largest or key < self._smallest:
            return None
        i = bisect_left(self._last_keys, key)
        block = self._block(i)
        if block.__class__ is bytes:
            value = newest_fixed(block, key)  # type: ignore[arg-type]
        else:
            found = self._search(key, SEQ_MAX, i, block)
            return None if found is None else found[2] if found[1] else DELETED
        if value is None:
            self._stats.bloom_false_positives += 1
        return value

    def find_uncached(self, key: bytes, seq_max: int) -> tuple[int, int, bytes] | None:
        """The rest of a `find` that returned MISS: reads the block (not counted again)."""
        if key > self._largest or key < self._smallest:
            return None
        found: tuple[int, int, bytes] | None = self._search(
            key, seq_max, bisect_left(self._last_keys, key), None
        )
        return found

    def _search(
        self, key: bytes, seq_max: int, i: int, block: CachedBlock | None, fill: bool = True
    ) -> Any:
        """The general search from block `i` on: any widths, versions across blocks.
        With `fill` false (lock-free callers) a block not cached ends it with MISS."""
        seen = False
        while i < self._nblocks:
            if block is None:
                if fill:
                    block = self._block(i)
                else:
                    block = self._slots[i]
                    if block is None:
                        return MISS
                    self._refs[i] = 1
            lay = _layout(block)
            block = None
            n = lay[1]
            j = _find_first(lay, key)
            while j < n and _keys(lay, j, j + 1)[0] == key:
                seen = True
                found = _entry_at(lay, j)
                if found[0] <= seq_max:
                    return found
                j += 1
            if j < n or not seen:
                break
            i += 1  # the key's older versions continue in the next block
        if not seen:
            self._stats.bloom_false_positives += 1
        return None

    def iter(
        self, start: bytes | None = None, end: bytes | None = None, reverse: bool = False
    ) -> Iterator[Entry]:
        """Every version with start <= key < end in (key asc, seq desc) order, or exactly
        the reverse of that order. Lazy, one block at a time; keeps working if the reader
        is closed meanwhile (the file stays open until the iterator is done or dropped)."""
        if self._file_closed and self._reopen is None:
            raise ClosedError(f"table {self._name!r} was closed; reopen it")
        if start is not None and end is not None and start >= end:
            return iter(())
        runs = self._runs_reverse(start, end) if reverse else self._runs_forward(start, end)
        next(runs)  # run to the pin, so that dropping the iterator always unpins
        # chain pulls one zip per block; entries then flow without a Python frame each
        return chain.from_iterable(runs)

    def read_page(
        self, start: bytes | None, end: bytes | None, reverse: bool, want: int, seq: int,
        keys_out: list[bytes], values_out: list[Any],
    ) -> tuple[int, bytes | None, int, bool]:  # fmt: skip
        """Read the first `want` entries in [start, end) in scan order as one source of a
        page scan (`merge.merge_page`): returns `(count, last, more, tombs)`.

        Appends to `keys_out`/`values_out` the key and value of each entry read with
        seq <= `seq` (value None for a tombstone), in file order (key ascending, a key's
        versions newest first) whatever the direction. `count`: entries read (filtered
        or not); `last`: key of the last one in scan order (None if none); `more`: 0 if
        the table holds nothing more in range, else 1 when `last` is complete (forward, and
        nothing here is newer than `seq`: its newest version was read first) or 2 when
        versions of `last` may still follow; `tombs`: some value appended may be None.
        Blocks of fixed-width columns are cut with one struct call per column and no
        entry tuple is built. Call with the read lock held: blocks not cached are read
        and cached.
        """
        if self._file_closed and self._reopen is None:
            raise ClosedError(f"table {self._name!r} was closed; reopen it")
        slots, refs = self._slots, self._refs
        nblocks = self._nblocks
        has_tombs = self.props.tombstones > 0
        newer = seq < self.props.seq_max  # versions newer than the snapshot may be here
        parts: list[tuple[Sequence[bytes], Sequence[Any]]] = []  # reverse: blocks, last first
        last: bytes | None = None
        count = hits = 0
        tombs = more = False
        if reverse:
            i = nblocks - 1 if end is None else min(nblocks - 1, bisect_left(self._last_keys, end))
        else:
            i = 0 if start is None else bisect_left(self._last_keys, start)
        while 0 <= i < nblocks:
            block: Any = slots[i]
            if block is None:
                block = self._block(i)  # read, checked and cached (and counted) there
            else:
                hits += 1
                refs[i] = 1  # CLOCK: referenced since the evictor's last pass
            if block.__class__ is bytes and (
                    head := _BLOCK_HEADER.unpack_from(block, 0))[0] <= _FIELDS_MAX:
                lay: Any = None
                body: bytes = block
                n, kw, vw = head
                kind_at = _HEADER_BYTES + 8 * n
                keys: Sequence[bytes] = (_parsers.get((kw, n)) or _fixed_parser(kw, n)
                                         ).unpack_from(block, kind_at + n)
            else:
                lay = _layout(block)
                body, n, kind_at = lay[0], lay[1], lay[4]
                keys = _keys(lay, 0, n)
            if reverse:
                hi = n if end is None else bisect_left(keys, end)
                lo = 0 if start is None or keys[0] >= start else bisect_left(keys, start, 0, hi)
                a, b = max(lo, hi - (want - count)), hi
            else:
                lo = 0 if start is None else bisect_left(keys, start)
                hi = n if end is None or keys[-1] < end else bisect_left(keys, end, lo)
                a, b = lo, (hi if hi - lo <= want - count else lo + want - count)
            if b > a:
                if lay is None:
                    values: Sequence[Any] = (_parsers.get((vw, b - a)) or _fixed_parser(vw, b - a)
                                             ).unpack_from(block, kind_at + n + kw * n + vw * a)
                else:
                    values = _values(lay, a, b)
                ks = keys[a:b] if b - a < n else keys
                if has_tombs and 0 in body[kind_at + a : kind_at + b]:
                    tombs = True
                    values = [v if kd else None
                              for v, kd in zip(values, body[kind_at + a : kind_at + b], strict=True)]
                if newer:
                    seqs = array("Q", body[kind_at - 8 * (n - a) : kind_at - 8 * (n - b)])
                    if not _LITTLE:
                        seqs.byteswap()
                    if max(seqs) > seq:
                        ks = list(compress(ks, map(seq.__ge__, seqs)))
                        values = list(compress(values, map(seq.__ge__, seqs)))
                if reverse:
                    parts.append((ks, values))
                    last = keys[a]
                else:
                    keys_out += ks
                    values_out += values
                    last = keys[b - 1]
                count += b - a
            if reverse:
                if a > lo:
                    more = True
                    break
                if lo > 0 or i == 0:
                    break
                end = None
                i -= 1
            else:
                if b < hi:
                    more = True
                    break
                if hi < n or i == nblocks - 1:
                    break
                start = None
                i += 1
            if count >= want:
                more = True  # the next block may hold more in range
                break
        self._cache.hits += hits
        for ks, values in reversed(parts):  # a key's versions may span blocks: newest first
            keys_out += ks
            values_out += values
        return count, last, (2 if reverse or newer else 1) if more else 0, tombs

    def _unpin(self) -> None:
        self._pins -= 1
        assert self._pins >= 0
        if self._closed and not self._pins:
            self._close_file()

    def _runs_forward(self, start: bytes | None, end: bytes | None) -> Iterator[Iterable[Entry]]:
        """Yields (), then one iterator of entries per block, ascending. Only the entries
        in range are cut out of each raw block."""
        self._pins += 1
        try:
            yield ()
            nblocks = self._nblocks
            i = 0 if start is None else bisect_left(self._last_keys, start)
            while i < nblocks:
                lay = _layout(self._block(i))
                n = lay[1]
                keys = _keys(lay, 0, n)
                lo = 0 if start is None else bisect_left(keys, start)
                hi = n if end is None or keys[-1] < end else bisect_left(keys, end, lo)
                yield _entries(lay, keys, lo, hi)
                if hi < n:
                    return
                start = None
                i += 1
        finally:
            self._unpin()

    def _runs_reverse(self, start: bytes | None, end: bytes | None) -> Iterator[Iterable[Entry]]:
        """Yields (), then one iterator of entries per block, descending."""
        self._pins += 1
        try:
            yield ()
            i = self._nblocks - 1
            if end is not None:
                i = min(i, bisect_left(self._last_keys, end))
            while i >= 0:
                lay = _layout(self._block(i))
                n = lay[1]
                keys = _keys(lay, 0, n)
                hi = n if end is None else bisect_left(keys, end)
                lo = 0 if start is None or keys[0] >= start else bisect_left(keys, start, 0, hi)
                yield zip(
                    reversed(keys[lo:hi]), reversed(_seqs(lay, lo, hi)),
                    reversed(_kinds(lay, lo, hi)), reversed(_values(lay, lo, hi)), strict=True,
                )  # fmt: skip
                if lo > 0:
                    return
                end = None
                i -= 1
        finally:
            self._unpin()

    def verify(self) -> int:
        """Read every block from the file (not the cache) and check it; return blocks checked."""
        if self._file_closed:
            raise ClosedError(f"table {self._name!r} was closed; reopen it")
        self._read_footer(self._file.size())
        for handle, what in zip(
            self._meta, ("index block", "bloom block", "props block"), strict=True
        ):
            self._read_checked(*handle, what)
        for i in range(self._nblocks):
            self._load_block(i)
        return self._nblocks + len(self._meta)

    def close(self) -> None:
        """Close the file now, or when the last running iterator finishes."""
        self._closed = True
        if not self._pins:
            self._close_file()

    def _close_file(self) -> None:
        if not self._file_closed:
            self._file_closed = True
            self._file.close()

"""Sorted string tables: immutable files of (key, seq, kind, value) entries.

Layout (docs/design/sstable-format.md has the details and the reasons):

    data block 0 | ... | data block n-1 | index block | bloom block | props block | footer

Every block is `body | u8 compression | u32 crc32c(body + compression byte)`; the footer holds
the meta blocks' handles, the format version, its own crc32c and a magic number. Data blocks
are columnar (lengths, seqs, kinds, keys blob, values blob), so encoding and decoding are a few
C-level calls per block rather than Python work per entry. A reader keeps the index in memory
and caches checked raw blocks in the shared `BlockCache` (keeldb/storage/block.py): a point
read is one bisect in the index, one cache lookup and one `bytes.find` in the block.

This module holds the format (structs, constants, `TableProps`) and the reader; tables are
written by `TableWriter` in keeldb/storage/sstable_writer.py, which imports the format from
here (never the other way round).
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, compress, islice
from operator import lt
from typing import Any

import zstandard
from crc32c import crc32c
from xxhash import xxh3_64_intdigest

from keeldb import limits
from keeldb.errors import ClosedError, CorruptionError
from keeldb.ports import File
from keeldb.storage.block import (
    _HEADER_BYTES,
    _STRUCT_FIELDS_MAX,
    _U64,
    BLOCK_CHARGE_BYTES,
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
from keeldb.storage.cache import OFFSET_BITS, BlockCache

Entry = tuple[bytes, int, int, bytes]

FORMAT_VERSION = 1
MAGIC = 0x3154_5353_4C45_454B  # b"KEELSST1" read as a little-endian u64

COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
COMPRESSIONS = {"none": COMPRESSION_NONE, "zstd": COMPRESSION_ZSTD}
_DCTX_POOL_MAX = 8  # idle zstd decompression contexts kept for reuse
_AHEAD = limits.block_readahead_blocks
_dctx_pool: list[zstandard.ZstdDecompressor] = []

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
    blocks_prefetched: int = 0  # read ahead of a point read's miss (not in block_reads)

    @property
    def bloom_checks(self) -> int:
        return self.tables_touched

    @property
    def find_hits(self) -> int:
        """Cache hits of point reads' first block lookups (not in `BlockCache.hits`)."""
        return self.tables_touched - self.bloom_useful - self.find_misses


# --- column helpers ---------------------------------------------------------------------


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
    _key_base: int
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
        assert table_id >= 0 and self._nblocks < 1 << OFFSET_BITS, (table_id, self._nblocks)
        self._key_base = table_id << OFFSET_BITS  # cache key of block i: base | i (pack_key)
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
        return body if kind == COMPRESSION_NONE else self._decompress(kind, body, offset, what)

    def _decompress(self, kind: int, body: bytes, offset: int, what: str) -> bytes:
        """The body of a checked block stored with compression `kind`."""
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
        offset, size = self._offsets[i], self._sizes[i]
        raw = self._read_at(offset, size)
        if len(raw) != size:
            what = f"data block: short read ({len(raw)} of {size} bytes)"
            raise _corrupt(self._name, offset, what)
        block = self._data_block(raw, offset)
        self._stats.block_reads += 1
        return block

    def _data_block(self, raw: bytes, offset: int) -> CachedBlock:
        """A data block as read from the file (`raw`: body + trailer), checksum and structure
        verified: what the cache keeps. An uncompressed block is kept as `raw` itself,
        trailer included (readers locate columns from the header): no copy of the body."""
        size = len(raw)
        if size < TRAILER_BYTES:
            raise _corrupt(self._name, offset, f"data block: {size} bytes is below a trailer")
        body_end = size - TRAILER_BYTES
        kind, crc = _TRAILER.unpack_from(raw, body_end)
        view = memoryview(raw)
        if crc32c(view[body_end : body_end + 1], crc32c(view[:body_end])) != crc:
            raise _corrupt(self._name, offset, "data block: checksum mismatch")
        body = raw
        if kind != COMPRESSION_NONE:  # checked above: decompress these very bytes
            body = self._decompress(kind, bytes(view[:body_end]), offset, "data block")
            body_end = len(body)
        try:
            return _check_block(body, body_end)
        except (ValueError, struct.error) as exc:
            raise _corrupt(self._name, offset, f"data block: {exc}") from exc

    def _block(self, i: int) -> CachedBlock:
        block: CachedBlock | None = self._slots[i]
        cache = self._cache
        if block is not None:
            self._refs[i] = 1
            cache.hits += 1
            return block
        cache.misses += 1
        block = self._load_block(i)
        cache.put_packed(self._key_base | i, block, cached_block_bytes(block))
        return block

    def _block_ahead(self, i: int) -> CachedBlock:
        """`_block(i)` for the point-read miss path, reading ahead into free cache room.

        When the cache has free room for all of block i's aligned group of
        `limits.block_readahead_blocks` blocks, the group is read with one pread and its
        uncached blocks are verified and cached (counted in `ReadStats.blocks_prefetched`;
        block i alone counts as the miss). A compaction's new tables are all cold while the
        blocks of the tables they replaced were just evicted: this refills that room at a
        fraction of the per-block cost (one syscall and one call chain per ~256 KiB).
        Never evicts a block for a prefetched one; a neighbour that fails its checks is
        skipped (a read of it raises as usual). Call with the cache-fill lock held.
        """
        cache = self._cache
        lo = i - i % _AHEAD
        hi = min(lo + _AHEAD, self._nblocks)
        offsets, sizes = self._offsets, self._sizes
        start = offsets[lo]
        span = offsets[hi - 1] + sizes[hi - 1] - start
        if (hi - lo < 2 or self._slots[i] is not None or span <= 0
                or span + (hi - lo) * BLOCK_CHARGE_BYTES > cache.bytes_max - cache.bytes):
            return self._block(i)
        raw = self._read_at(start, span)
        at = offsets[i] - start
        if len(raw) != span or not 0 <= at <= span - sizes[i]:
            return self._block(i)  # short read or blocks out of order: read i alone
        cache.misses += 1
        block = self._data_block(raw[at : at + sizes[i]], offsets[i])
        self._stats.block_reads += 1
        base, slots = self._key_base, self._slots
        cache.put_packed(base | i, block, cached_block_bytes(block))
        loaded = 0
        for j in range(lo, hi):
            at = offsets[j] - start
            if slots[j] is not None or not 0 <= at <= span - sizes[j]:
                continue
            try:
                other = self._data_block(raw[at : at + sizes[j]], offsets[j])
            except CorruptionError:
                continue
            charge = cached_block_bytes(other)
            if cache.bytes + charge > cache.bytes_max:
                break
            cache.put_packed(base | j, other, charge)
            loaded += 1
        self._stats.blocks_prefetched += loaded
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
        block = self._block_ahead(i)
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

"""Data blocks of a table as the block cache keeps them: checked raw bodies read in place.

A block body (docs/design/sstable-format.md) is `u32 n | i32 key_width | i32 value_width |
[u32 key_lengths] | [u32 value_lengths] | u64 seqs | u8 kinds | keys | values`. Readers
never decode a whole block into objects: a point read finds its key with `bytes.find` in the
keys column, a scan cuts the columns of the entries in range with one C-level call each.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate, islice
from operator import sub
from typing import Any

Entry = tuple[bytes, int, int, bytes]

BLOCK_HEADER = struct.Struct("<Iii")  # n, key width, value width (-1: lengths stored)
_BLOCK_HEADER = BLOCK_HEADER
_LITTLE = sys.byteorder == "little"
assert array("I").itemsize == 4 and array("Q").itemsize == 8, "unsupported platform"

# Fixed-width struct parsers cached by (width, count); bounded, cleared when full.
# Scans cut any count of items out of a block, so parsers of every count up to the max are
# wanted: 512 of at most 256 fields take at most ~3 MB.
_STRUCT_CACHE_MAX = 512  # a parser of n fields takes ~24n bytes
_STRUCT_FIELDS_MAX = 256  # more fixed-width items are cut by slicing
_struct_cache: dict[tuple[int, int], struct.Struct] = {}


def _fixed_parser(width: int, count: int) -> struct.Struct:
    parser = _struct_cache.get((width, count))
    if parser is None:
        if len(_struct_cache) >= _STRUCT_CACHE_MAX:
            _struct_cache.clear()
        parser = _struct_cache[(width, count)] = struct.Struct(f"{width}s" * count)
    return parser


# A data block in the block cache is its checked body, searched in place: `bytes` when its
# keys and its values each have one width (the common case), else `(body, key_offs,
# value_offs)` with the absolute offsets in `body` of the n + 1 bounds of each
# variable-width column (None for a fixed-width one), computed once when it is cached.
CachedBlock = bytes | tuple[bytes, "array[int] | None", "array[int] | None"]
# Where a block's columns are: (body, n, key_width, value_width, kind_at, key_at, value_at,
# key_offs, value_offs); the seqs end where the kinds start.
Layout = tuple[bytes, int, int, int, int, int, int, "array[int] | None", "array[int] | None"]
_HEADER_BYTES = _BLOCK_HEADER.size
_U64 = struct.Struct("<Q")
_MISALIGNED_FINDS_MAX = 8  # in-place search gives up on repeated substrings and bisects


class _Miss:
    """`TableReader.find`'s answer when the block it needs is not cached (no I/O done)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


MISS: Any = _Miss()


class _Deleted:
    """`TableReader.find_value`'s answer when the newest version of the key is a tombstone."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DELETED"


DELETED: Any = _Deleted()


def _offsets(body: bytes, at: int, count: int, first: int) -> tuple[array[int], int]:
    """The count + 1 absolute bounds of a column whose u32 lengths are at `at`."""
    lens = array("I", body[at : at + 4 * count])
    if len(lens) != count:
        raise ValueError("block too short for its length columns")
    if not _LITTLE:
        lens.byteswap()
    total = sum(lens)
    if first + total > len(body):
        raise ValueError(f"column of {total} bytes does not fit the {len(body)}-byte block")
    return array("I", accumulate(lens, initial=first)), total


def _check_block(body: bytes, end: int | None = None) -> CachedBlock:
    """Check a data block body's structure once (it passed its checksum); return what the
    cache keeps. `end`: where the body ends in `body` (default: its length; an uncompressed
    block is cached with its 5-byte trailer, which no reader looks at: columns are located
    from the header). ValueError or struct.error if the block is not well formed."""
    if end is None:
        end = len(body)
    n, kw, vw = _BLOCK_HEADER.unpack_from(body, 0)
    if n == 0 or kw == 0:
        raise ValueError(f"block header holds {n} entries of key width {kw}")
    key_at = _HEADER_BYTES + 4 * n * ((kw < 0) + (vw < 0)) + 9 * n
    key_offs = value_offs = None
    if kw < 0:
        key_offs, key_total = _offsets(body, _HEADER_BYTES, n, key_at)
        if 0 in map(sub, islice(key_offs, 1, None), key_offs):
            raise ValueError("empty key")
    else:
        key_total = kw * n
    value_at = key_at + key_total
    if vw < 0:
        value_offs, value_total = _offsets(body, _HEADER_BYTES + 4 * n * (kw < 0), n, value_at)
    else:
        value_total = vw * n
    if value_at + value_total != end:
        raise ValueError(f"{n} entries do not fill the {end}-byte block")
    if key_offs is None and value_offs is None:
        return body
    return body, key_offs, value_offs


def _layout(block: CachedBlock) -> Layout:
    if isinstance(block, bytes):
        body, key_offs, value_offs = block, None, None
    else:
        body, key_offs, value_offs = block
    n, kw, vw = _BLOCK_HEADER.unpack_from(body, 0)
    kind_at = _HEADER_BYTES + 4 * n * ((kw < 0) + (vw < 0)) + 8 * n
    key_at = kind_at + n
    value_at = key_offs[-1] if key_offs is not None else key_at + kw * n
    return body, n, kw, vw, kind_at, key_at, value_at, key_offs, value_offs


def _column(
    body: bytes, at: int, width: int, offs: array[int] | None, lo: int, hi: int
) -> Sequence[bytes]:
    """Items lo..hi of a column of fixed `width` starting at `at`, or bounded by `offs`."""
    if offs is not None:
        return list(map(body.__getitem__, map(slice, offs[lo:hi], offs[lo + 1 : hi + 1])))
    count = hi - lo
    start = at + lo * width
    if count > _STRUCT_FIELDS_MAX:
        return [body[p : p + width] for p in range(start, start + count * width, width)]
    return _fixed_parser(width, count).unpack_from(body, start)


def _keys(lay: Layout, lo: int, hi: int) -> Sequence[bytes]:
    return _column(lay[0], lay[5], lay[2], lay[7], lo, hi)


def _values(lay: Layout, lo: int, hi: int) -> Sequence[bytes]:
    return _column(lay[0], lay[6], lay[3], lay[8], lo, hi)


def _seqs(lay: Layout, lo: int, hi: int) -> array[int]:
    seq_at = lay[4] - 8 * lay[1]
    seqs = array("Q", lay[0][seq_at + 8 * lo : seq_at + 8 * hi])
    if not _LITTLE:
        seqs.byteswap()
    return seqs


def _kinds(lay: Layout, lo: int, hi: int) -> bytes:
    return lay[0][lay[4] + lo : lay[4] + hi]


def _entries(lay: Layout, keys: Sequence[bytes], lo: int, hi: int) -> Iterator[Entry]:
    """Entries lo..hi as one zip of their columns (`keys` = the block's keys from 0)."""
    return zip(keys[lo:hi], _seqs(lay, lo, hi), _kinds(lay, lo, hi), _values(lay, lo, hi),
               strict=True)


def _entry_at(lay: Layout, j: int) -> tuple[int, int, bytes]:
    """(seq, kind, value) of entry j."""
    body, n, _, vw, kind_at, _, value_at, _, value_offs = lay
    (seq,) = _U64.unpack_from(body, kind_at - 8 * n + 8 * j)
    if value_offs is not None:
        value = body[value_offs[j] : value_offs[j + 1]]
    else:
        value = body[value_at + j * vw : value_at + (j + 1) * vw]
    return seq, body[kind_at + j], value


# Cache charge per block beside the body's bytes: the bytes object header plus the cache's
# slot (packed key int, (block, size) tuple, size int, OrderedDict link and table share).
# Checked against tracemalloc in tests/unit/storage/test_cache.py.
_BYTES_OBJ = sys.getsizeof(b"")
_CACHE_SLOT_BYTES = 240
# The least a cached block takes beside its body (a fixed-width block's whole overhead).
BLOCK_CHARGE_BYTES = _BYTES_OBJ + _CACHE_SLOT_BYTES
_ARRAY_OBJ = sys.getsizeof(array("I"))
_TUPLE3_BYTES = sys.getsizeof((1, 2, 3))


def cached_block_bytes(block: CachedBlock) -> int:
    """Bytes of heap a cached block takes, including its slot in the cache."""
    if isinstance(block, bytes):
        return len(block) + _BYTES_OBJ + _CACHE_SLOT_BYTES
    body, key_offs, value_offs = block
    extra = sum(_ARRAY_OBJ + 4 * len(o) for o in (key_offs, value_offs) if o is not None)
    return len(body) + _BYTES_OBJ + _CACHE_SLOT_BYTES + _TUPLE3_BYTES + extra


def newest_fixed(block: bytes, key: bytes) -> Any:
    """The newest version of `key` in a block of fixed-width keys and values (a `bytes`
    block): its value, DELETED for a tombstone, or None if the block does not hold the key.
    `TableReader.find_value` inlines this same search on its hot path."""
    n, kw, vw = _BLOCK_HEADER.unpack_from(block, 0)
    if kw != len(key):
        return None
    key_at = _HEADER_BYTES + 9 * n
    end = key_at + kw * n
    p = block.find(key, key_at, end)
    while p >= 0:
        r = (p - key_at) % kw
        if not r:
            j = (p - key_at) // kw  # the key's first entry: its newest version
            return block[end + j * vw : end + (j + 1) * vw] if block[key_at - n + j] else DELETED
        p = block.find(key, p + kw - r, end)  # a match across two keys: look further
    return None


def _find_first(lay: Layout, key: bytes) -> int:
    """Index of the first entry of `key` in the block, or n if the block does not hold it."""
    body, n, kw, _, _, key_at, value_at, key_offs, _ = lay
    size = len(key)
    if key_offs is None:
        if kw != size:
            return n
        p = body.find(key, key_at, value_at)
        while p >= 0:
            r = (p - key_at) % kw
            if not r:
                return (p - key_at) // kw
            p = body.find(key, p + kw - r, value_at)
        return n
    p = body.find(key, key_at, value_at)
    for _ in range(_MISALIGNED_FINDS_MAX):
        if p < 0:
            return n
        j = bisect_left(key_offs, p)
        if key_offs[j] == p and key_offs[j + 1] == p + size:
            return j
        p = body.find(key, p + 1, value_at)
    keys = _keys(lay, 0, n)  # the key's bytes occur inside many other keys: bisect instead
    j = bisect_left(keys, key)
    return j if j < n and keys[j] == key else n

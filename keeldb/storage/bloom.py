"""A cache-line-blocked bloom filter with one xxh3 call per key.

Layout (format kind 1): the filter is `nblocks` blocks of 512 bits. A key's 64-bit
`xxh3_64` hash picks one block with its high 32 bits (multiply-shift "fastrange") and a bit
mask inside that block with its low 24 bits: `MASK_A[h & 0xFFF] | MASK_B[(h >> 12) & 0xFFF]`,
where MASK_A/MASK_B are two fixed tables of 4,096 masks of `ka`/`kb` bits each. The tables are
derived from xxh3 itself (see `_mask_table`), so the format depends on nothing but xxh3 and
is identical in every process and on every machine (Python's `hash()` is salted per process
and must never be used here).

Why this shape: in Python the cost of a probe is the number of interpreter operations, not
memory traffic. Keeping each block as a Python int lets a probe be one hash call, one list
index, one table-OR and one `&`/`==` on a 512-bit int, instead of k separate bit tests. The
price of blocking is a slightly higher false-positive rate than a classic bloom filter of the
same size (RocksDB's FastLocalBloom makes the same trade); `false_positive_rate` measures it.

Serialised form: `u8 kind | u8 ka | u8 kb | u32 nblocks | nblocks * 64 bytes` (little endian).
Checksums are the caller's job (the SSTable wraps the filter in a checksummed block).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from xxhash import xxh3_64_intdigest

FILTER_KIND_BLOCKED512 = 1
BLOCK_BITS = 512
BLOCK_BYTES = BLOCK_BITS // 8
MASK_TABLE_SIZE = 4096  # entries per mask table; 12 bits of the hash index each table
K_MAX = 16  # most bits set per key; more only costs time at >20 bits/key
_HEADER = struct.Struct("<BBBI")

_mask_tables: dict[tuple[int, int], list[int]] = {}


_mask_position_tables: dict[tuple[int, int], Any] = {}


def _mask_positions(table: int, bits: int) -> Any:
    """`_mask_table` as a (MASK_TABLE_SIZE, bits) array of the set bit positions."""
    cached = _mask_position_tables.get((table, bits))
    if cached is None:
        raw = b"".join(m.to_bytes(BLOCK_BYTES, "little") for m in _mask_table(table, bits))
        matrix = np.unpackbits(np.frombuffer(raw, dtype=np.uint8).reshape(MASK_TABLE_SIZE, -1),
                               axis=1, bitorder="little")
        cached = np.nonzero(matrix)[1].astype(np.int64).reshape(MASK_TABLE_SIZE, bits)
        _mask_position_tables[(table, bits)] = cached
    return cached


def _mask_table(table: int, bits: int) -> list[int]:
    """The fixed table `table` of MASK_TABLE_SIZE masks with `bits` distinct bits each.

    Bit positions come from xxh3 of (table, entry, attempt) so the table is part of the
    format, reproducible anywhere; entries with colliding positions re-draw until distinct.
    """
    cached = _mask_tables.get((table, bits))
    if cached is not None:
        return cached
    masks: list[int] = []
    for entry in range(MASK_TABLE_SIZE):
        mask = 0
        attempt = 0
        while bin(mask).count("1") < bits:
            seed = struct.pack("<BHI", table, entry, attempt)
            mask |= 1 << (xxh3_64_intdigest(seed) % BLOCK_BITS)
            attempt += 1
        masks.append(mask)
    _mask_tables[(table, bits)] = masks
    return masks


def probes_for(bits_per_key: int) -> int:
    """Bits set per key: ~ln2 * bits/key, a little less because blocks are not independent."""
    return max(1, min(K_MAX, round(bits_per_key * 0.62)))


def blocks_for(keys: int, bits_per_key: int) -> int:
    """Blocks of 512 bits for `keys` distinct keys at `bits_per_key` (at least one)."""
    return max(1, -(-keys * bits_per_key // BLOCK_BITS))


class BloomFilter:
    """An immutable bloom filter over byte keys; build with `build`, load with `from_bytes`."""

    __slots__ = ("_blocks", "_nblocks", "_ka", "_kb", "_mask_a", "_mask_b")

    def __init__(self, blocks: list[int], ka: int, kb: int) -> None:
        assert blocks, "a filter has at least one block"
        assert 1 <= ka <= K_MAX and 0 <= kb <= K_MAX, (ka, kb)
        self._blocks = blocks
        self._nblocks = len(blocks)
        self._ka = ka
        self._kb = kb
        self._mask_a = _mask_table(0, ka)
        self._mask_b = _mask_table(1, kb)

    @classmethod
    def build(cls, keys: Iterable[bytes], bits_per_key: int) -> BloomFilter:
        """A filter holding `keys` (duplicates are fine) with ~`bits_per_key` bits per key."""
        return cls.build_from_hashes(map(xxh3_64_intdigest, keys), bits_per_key)

    @classmethod
    def build_from_hashes(
        cls, hashes: Iterable[int], bits_per_key: int, *, distinct: int | None = None
    ) -> BloomFilter:
        """Like `build` but from `xxh3_64_intdigest(key)` values (the writer hashes as it goes).

        `distinct` (the number of different keys, if the caller knows it) sizes the filter
        without building a set; duplicate hashes then only cost time.
        """
        assert bits_per_key >= 1, f"bits_per_key must be >= 1, got {bits_per_key}"
        if distinct is None:
            hashes = set(hashes)
            distinct = len(hashes)
        k = probes_for(bits_per_key)
        ka, kb = k - k // 2, k // 2
        nblocks = blocks_for(distinct, bits_per_key)
        # numpy sets each key's bits in a flat bit array (bit j of block i is bit i*512+j):
        # the same bits as `blocks[i] |= MASK_A[..] | MASK_B[..]` on 512-bit ints, several
        # times faster (a flush adds ~200k keys; the int loop was a quarter of its CPU).
        h = (np.frombuffer(hashes, dtype=np.uint64) if isinstance(hashes, array)
             and hashes.typecode == "Q" else np.fromiter(hashes, dtype=np.uint64))
        bits = np.zeros(nblocks * BLOCK_BITS, dtype=np.bool_)
        if len(h):
            base = ((h >> np.uint64(32)) * np.uint64(nblocks) >> np.uint64(32)).astype(np.int64)
            base *= BLOCK_BITS
            for table, count, shift in ((0, ka, 0), (1, kb, 12)):
                if count:
                    pos = _mask_positions(table, count)[
                        ((h >> np.uint64(shift)) & np.uint64(0xFFF)).astype(np.intp)]
                    bits[(pos + base[:, None]).ravel()] = True
        raw = np.packbits(bits, bitorder="little").tobytes()
        blocks = [int.from_bytes(raw[i:i + BLOCK_BYTES], "little")
                  for i in range(0, len(raw), BLOCK_BYTES)]
        return cls(blocks, ka, kb)

    def may_contain(self, key: bytes) -> bool:
        """False only if `key` was certainly not added."""
        h = xxh3_64_intdigest(key)
        m = self._mask_a[h & 0xFFF] | self._mask_b[(h >> 12) & 0xFFF]
        return self._blocks[((h >> 32) * self._nblocks) >> 32] & m == m

    def may_contain_hash(self, h: int) -> bool:
        """`may_contain` for a precomputed `xxh3_64_intdigest(key)`."""
        m = self._mask_a[h & 0xFFF] | self._mask_b[(h >> 12) & 0xFFF]
        return self._blocks[((h >> 32) * self._nblocks) >> 32] & m == m

    def probe_parts(self) -> tuple[list[int], int, list[int], list[int]]:
        """(blocks, nblocks, mask_a, mask_b) for callers that inline the probe in a hot loop."""
        return self._blocks, self._nblocks, self._mask_a, self._mask_b

    @property
    def nbytes(self) -> int:
        """Size of the bit array in bytes."""
        return self._nblocks * BLOCK_BYTES

    def to_bytes(self) -> bytes:
        body = b"".join(b.to_bytes(BLOCK_BYTES, "little") for b in self._blocks)
        return _HEADER.pack(FILTER_KIND_BLOCKED512, self._ka, self._kb, self._nblocks) + body

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> BloomFilter:
        """Load a filter written by `to_bytes`; ValueError if the bytes are not one."""
        if len(data) < _HEADER.size:
            raise ValueError(f"bloom filter of {len(data)} bytes is shorter than its header")
        kind, ka, kb, nblocks = _HEADER.unpack_from(data, 0)
        if kind != FILTER_KIND_BLOCKED512:
            raise ValueError(f"unknown bloom filter kind {kind}")
        if not (1 <= ka <= K_MAX and 0 <= kb <= K_MAX and nblocks >= 1):
            raise ValueError(f"bad bloom filter header ka={ka} kb={kb} nblocks={nblocks}")
        if len(data) != _HEADER.size + nblocks * BLOCK_BYTES:
            raise ValueError(
                f"bloom filter of {len(data)} bytes does not match its {nblocks} blocks"
            )
        body = bytes(data[_HEADER.size :])
        blocks = [
            int.from_bytes(body[o : o + BLOCK_BYTES], "little")
            for o in range(0, len(body), BLOCK_BYTES)
        ]
        return cls(blocks, ka, kb)


def false_positive_rate(bloom: BloomFilter, absent_keys: Sequence[bytes]) -> float:
    """Fraction of `absent_keys` (keys never added) that the filter says it may contain."""
    assert absent_keys, "need at least one absent key to measure a rate"
    may = bloom.may_contain
    return sum(map(may, absent_keys)) / len(absent_keys)


def measure_false_positive_rate(
    keys: int, absent: int, bits_per_key: int, *, seed: int = 0
) -> float:
    """Build a filter over `keys` synthetic keys and probe `absent` different ones.

    Keys are `b"k:<seed>:<i>"` and `b"a:<seed>:<i>"`, so the result is deterministic.
    """
    present = [f"k:{seed}:{i}".encode() for i in range(keys)]
    probes = [f"a:{seed}:{i}".encode() for i in range(absent)]
    return false_positive_rate(BloomFilter.build(present, bits_per_key), probes)

"""Bloom filter: no false negatives, a bounded false-positive rate, a stable format."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keeldb.storage.bloom import (
    BloomFilter,
    blocks_for,
    false_positive_rate,
    measure_false_positive_rate,
)


def test_false_positive_rate_at_10_bits_per_key() -> None:
    # 100k present, 100k absent keys: kind 2 (64-bit words, the default up to 12 bits/key)
    # measures ~1.8 % here, kind 1 (512-bit blocks) ~1.1 %.
    rate = measure_false_positive_rate(100_000, 100_000, 10)
    assert 0.001 < rate < 0.02, rate


@pytest.mark.parametrize(("bits", "bound"), [(4, 0.2), (8, 0.04), (16, 0.002)])
def test_rate_falls_with_more_bits(bits: int, bound: float) -> None:
    assert measure_false_positive_rate(20_000, 50_000, bits, seed=1) < bound


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.binary(min_size=1, max_size=30), max_size=300), bits=st.integers(1, 20))
def test_no_false_negatives_and_round_trip(keys: list[bytes], bits: int) -> None:
    bloom = BloomFilter.build(keys, bits)
    assert all(map(bloom.may_contain, keys))
    loaded = BloomFilter.from_bytes(bloom.to_bytes())
    assert loaded.to_bytes() == bloom.to_bytes()
    assert all(map(loaded.may_contain, keys))


def test_size_follows_bits_per_key() -> None:
    bloom = BloomFilter.build([b"%d" % i for i in range(10_000)], 10)
    assert bloom.nbytes == blocks_for(10_000, 10) * 64
    assert 10_000 * 10 // 8 <= bloom.nbytes < 10_000 * 10 // 8 + 64


def test_empty_filter_contains_nothing() -> None:
    bloom = BloomFilter.build([], 10)
    assert false_positive_rate(bloom, [b"a", b"b", b"c"]) == 0.0


@pytest.mark.parametrize(
    "data", [b"", b"\x02\x03\x03\x01\x00\x00\x00" + bytes(64), b"\x01\x03\x03\x02\x00\x00\x00"]
)
def test_bad_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(ValueError):
        BloomFilter.from_bytes(data)


_CHILD = (
    "import sys, xxhash\n"
    "from keeldb.storage.bloom import BloomFilter\n"
    "b = BloomFilter.build([b'k%d' % i for i in range(2000)], 10).to_bytes()\n"
    "sys.stdout.write(xxhash.xxh3_64_hexdigest(b))\n"
)


def test_same_bytes_in_processes_with_different_hash_seeds() -> None:
    digests = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout)
    keys = [b"k%d" % i for i in range(2000)]
    import xxhash

    digests.add(xxhash.xxh3_64_hexdigest(BloomFilter.build(keys, 10).to_bytes()))
    assert len(digests) == 1, digests


@pytest.mark.parametrize("bits", [1, 3, 10, 20])
@pytest.mark.parametrize("count", [1, 5, 2000])
def test_vectorised_build_sets_the_same_bits_as_the_int_loop(bits: int, count: int) -> None:
    """The numpy build is the format's reference loop (`blocks[i] |= MASK_A | MASK_B`)."""
    from xxhash import xxh3_64_intdigest

    from keeldb.storage import bloom

    hashes = [xxh3_64_intdigest(b"key-%d" % i) for i in range(count)]
    built = BloomFilter.build_from_hashes(hashes, bits, distinct=count)
    words = bits <= bloom.WORD_KIND_BITS_MAX  # kind 2: 64-bit words, mask tables 2 and 3
    assert built.kind == (bloom.FILTER_KIND_WORD64 if words else bloom.FILTER_KIND_BLOCKED512)
    k = bloom.word_probes_for(bits) if words else bloom.probes_for(bits)
    ka, kb = k - k // 2, k // 2
    nblocks = blocks_for(count, bits) * (8 if words else 1)
    mask_a = bloom._mask_table(2 if words else 0, ka)
    mask_b = bloom._mask_table(3 if words else 1, kb)
    want = [0] * nblocks
    for h in hashes:
        want[((h >> 32) * nblocks) >> 32] |= mask_a[h & 0xFFF] | mask_b[(h >> 12) & 0xFFF]
    assert list(built.probe_parts()[0]) == want
    assert all(m < 1 << (64 if words else 512) for m in mask_a)


def test_build_from_a_hash_array_equals_build_from_an_int_list() -> None:
    """TableWriter keeps its key hashes in an array('Q') (8 bytes a key): the filter built
    from it must be the one built from the same hashes as Python ints."""
    from array import array

    from xxhash import xxh3_64_intdigest

    hashes = [xxh3_64_intdigest(b"key%d" % i) for i in range(3000)]
    from_list = BloomFilter.build_from_hashes(hashes, 10, distinct=3000)
    from_array = BloomFilter.build_from_hashes(array("Q", hashes), 10, distinct=3000)
    assert from_array.to_bytes() == from_list.to_bytes()
    assert all(map(from_array.may_contain, (b"key%d" % i for i in range(3000))))


def test_kind_1_filters_of_older_tables_still_load_and_answer() -> None:
    """Tables written before kind 2 hold kind-1 filters at 10 bits/key: still readable."""
    from xxhash import xxh3_64_intdigest

    from keeldb.storage import bloom

    keys = [b"old-%d" % i for i in range(3000)]
    nblocks, k = blocks_for(len(keys), 10), bloom.probes_for(10)
    ka, kb = k - k // 2, k // 2
    mask_a, mask_b = bloom._mask_table(0, ka), bloom._mask_table(1, kb)
    blocks = [0] * nblocks
    for h in map(xxh3_64_intdigest, keys):  # the kind-1 reference loop
        blocks[((h >> 32) * nblocks) >> 32] |= mask_a[h & 0xFFF] | mask_b[(h >> 12) & 0xFFF]
    data = BloomFilter(blocks, ka, kb).to_bytes()
    assert data[0] == bloom.FILTER_KIND_BLOCKED512
    loaded = BloomFilter.from_bytes(data)
    assert loaded.kind == bloom.FILTER_KIND_BLOCKED512 and loaded.to_bytes() == data
    assert all(map(loaded.may_contain, keys))
    assert false_positive_rate(loaded, [b"new-%d" % i for i in range(20_000)]) < 0.02


def test_kind_2_header_is_checked() -> None:
    from keeldb.storage import bloom

    good = BloomFilter.build([b"k%d" % i for i in range(100)], 10).to_bytes()
    assert good[0] == bloom.FILTER_KIND_WORD64
    with pytest.raises(ValueError):
        BloomFilter.from_bytes(good[:-8])  # one word short
    odd = bytearray(good)
    struct.pack_into("<I", odd, 3, (len(good) - 7) // 8 - 1)  # not a multiple of 8 words
    with pytest.raises(ValueError):
        BloomFilter.from_bytes(bytes(odd[:-8]))

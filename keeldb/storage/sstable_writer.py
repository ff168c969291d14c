"""Writing sorted string tables: `TableWriter` and the column encoding only it needs.

The format (block layout, footer, props) is defined in keeldb/storage/sstable.py beside the
reader; this module imports those structs from there, and the reader never imports this one.
Entries arrive sorted and are cut into blocks with C-level column operations per chunk
(`add_many`), not Python work per entry.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import replace
from itertools import accumulate, chain, islice, repeat
from operator import add, itemgetter, lt, ne, neg
from typing import Any

import zstandard
from crc32c import crc32c
from xxhash import xxh3_64_intdigest

from keeldb import limits
from keeldb.errors import ConfigError
from keeldb.ports import File
from keeldb.storage.bloom import BloomFilter
from keeldb.storage.engine import KIND_DELETE, KIND_PUT
from keeldb.storage.sstable import (
    _BLOCK_HEADER,
    _FOOTER,
    _FOOTER_CRC_AT,
    _INDEX_HEADER,
    _LITTLE,
    _PROPS,
    _TRAILER,
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    COMPRESSIONS,
    FOOTER_BYTES,
    FORMAT_VERSION,
    MAGIC,
    SEQ_MAX,
    TRAILER_BYTES,
    Entry,
    TableProps,
)

ZSTD_LEVEL = 1  # fastest; blocks are small, the ratio gain of higher levels is small
# Keep a compressed block only if it saves at least 1/8 (as RocksDB does).
COMPRESS_MIN_SAVING_DIVISOR = 8
# Bytes a data block spends per entry beside key and value (two u32 lengths, seq, kind).
ENTRY_OVERHEAD_BYTES = 17
# Entries add_many takes from its iterable at a time: bounds the writer's transient lists.
ADD_MANY_CHUNK_ENTRIES = 8192


# --- column helpers ---------------------------------------------------------------------


def _pack(code: str, values: Iterable[int]) -> bytes:
    arr = array(code, values)
    if not _LITTLE:
        arr.byteswap()
    return arr.tobytes()


def _width(lengths: list[int]) -> int:
    """The common length of all items, or -1 if they differ (or there are none)."""
    return lengths[0] if lengths and lengths.count(lengths[0]) == len(lengths) else -1


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

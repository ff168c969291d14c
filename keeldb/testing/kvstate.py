"""The state machine both reference systems serve, and the log record format they persist.

Commands use the history vocabulary (`keeldb.check.history`):

- `read k` -> the value; `write k v`; `cas k [old, new]` (fail when the value is not `old`);
- `txn [[f, k, v], ...]` with micro-ops `r` (read), `w` (write), `append` (to a list);
- `transfer [from, to, amount]` between bank accounts (each starts at `BANK_INITIAL`; fails
  when `from` would go negative); `read-accounts [a, b, ...]` -> {account: balance}.

Log record: length (4 bytes, big-endian) + crc32c of the payload (4 bytes) + msgpack payload.
"""

from __future__ import annotations

import struct
from typing import Any

import crc32c
import msgpack

from keeldb.errors import UsageError

BANK_INITIAL = 100
READ_ONLY = frozenset({"read", "read-accounts"})
FUNCTIONS = frozenset({"read", "write", "cas", "txn", "transfer", "read-accounts"})
_HEADER = struct.Struct(">II")
RECORD_BYTES_MAX = 1024 * 1024


def apply_command(state: dict[Any, Any], f: str, key: Any, value: Any) -> tuple[str, Any]:
    """Apply one command to `state` in place; return (`ok` or `fail`, result value)."""
    if f == "read":
        v = state.get(key)
        return "ok", list(v) if isinstance(v, list) else v
    if f == "write":
        state[key] = value
        return "ok", value
    if f == "cas":
        old, new = value
        if state.get(key) != old:
            return "fail", value
        state[key] = new
        return "ok", value
    if f == "txn":
        done = []
        for mf, k, v in value:
            if mf == "r":
                cur = state.get(k)
                done.append([mf, k, list(cur) if isinstance(cur, list) else cur])
            elif mf == "w":
                state[k] = v
                done.append([mf, k, v])
            elif mf == "append":
                state[k] = [*state.get(k, []), v]  # a new list: results never alias state
                done.append([mf, k, v])
            else:
                raise UsageError(f"unknown micro-op {mf!r} in txn; use r, w or append")
        return "ok", done
    if f == "transfer":
        src, dst, amount = value
        have = state.get(src, BANK_INITIAL)
        if amount <= 0 or src == dst or have < amount:
            return "fail", value
        state[src] = have - amount
        state[dst] = state.get(dst, BANK_INITIAL) + amount
        return "ok", value
    if f == "read-accounts":
        return "ok", {a: state.get(a, BANK_INITIAL) for a in value}
    raise UsageError(f"unknown function {f!r}; known: {', '.join(sorted(FUNCTIONS))}")


def encode_record(obj: Any) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    assert len(payload) <= RECORD_BYTES_MAX, f"record of {len(payload)} bytes"
    return _HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def decode_records(data: bytes) -> tuple[list[Any], int]:
    """Decode records from the start of `data`; return them and the length of the valid prefix
    (shorter than `data` when the tail is torn or corrupt)."""
    out: list[Any] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        size, crc = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + size
        if size > RECORD_BYTES_MAX or end > len(data):
            break
        payload = data[pos + _HEADER.size: end]
        if crc32c.crc32c(payload) != crc:
            break
        out.append(msgpack.unpackb(payload, raw=False, strict_map_key=False))
        pos = end
    return out, pos

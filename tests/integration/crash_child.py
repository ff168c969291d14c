"""The writer process of the SIGKILL crash tests (`test_crash_kill.py`).

Run as a script: it opens a store, performs the numbered operations `--start` .. `--start +
--count - 1` of the workload below and, after each one returns, prints `ack <i>` and flushes
stdout, so the parent knows exactly which operations were acknowledged. With
`--crash-point NAME --crash-at N` it installs a crash hook that SIGKILLs this very process the
N-th time the engine passes the point `NAME`. After the last operation it calls `db.flush()`
and `db.compact()` (so the flush and compaction crash points are reached even if the
background thread has not got there yet), prints `done` and exits 0.

The workload (operation i), chosen so that recovery can be judged exactly:
- every operation writes `key(i) = value(i)`;
- when i % 3 == 0 it is one atomic batch that also writes `b"last" = i` and deletes
  `key(i - 2)`; otherwise it is a single put.
Only keys with index = 1 (mod 3) are ever deleted, and only by a later operation, so the
highest index present after recovery is n - 1 where n is the number of operations that
survived; the recovered store must then equal `model(n)` exactly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

# Small sizes so that flushes (and with them compactions) happen every few dozen operations.
SMALL_OPTIONS: dict[str, int] = {
    "memtable_bytes": 8 * 1024,
    "table_bytes": 8 * 1024,
    "block_bytes": 1024,
    "l0_compaction_trigger": 2,
    "level1_bytes": 32 * 1024,
}
VALUE_PAD_BYTES = 100


def key(i: int) -> bytes:
    return b"k%08d" % i


def value(i: int) -> bytes:
    """A value that names its operation, padded so memtables fill quickly."""
    head = b"v%d:" % i
    return head + bytes([97 + i % 26]) * VALUE_PAD_BYTES


def apply_op(state: dict[bytes, bytes], i: int) -> None:
    """Apply operation `i` of the workload to a model dict."""
    state[key(i)] = value(i)
    if i % 3 == 0:
        state[b"last"] = str(i).encode()
        if i >= 2:
            state.pop(key(i - 2), None)


def model(n: int) -> dict[bytes, bytes]:
    """The store's contents after operations 0 .. n-1."""
    state: dict[bytes, bytes] = {}
    for i in range(n):
        apply_op(state, i)
    return state


def surviving_ops(state: dict[bytes, bytes]) -> int:
    """How many operations a recovered store holds: 1 + the highest index present."""
    indexes = [int(k[1:]) for k in state if k.startswith(b"k")]
    return max(indexes) + 1 if indexes else 0


def _kill_hook(point: str, at: int) -> Callable[[str], None]:
    hits = 0

    def hook(name: str) -> None:
        nonlocal hits
        if name != point:
            return
        hits += 1
        if hits == at:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--path", required=True)
    ap.add_argument("--sync", default="always", choices=["always", "batch", "never"])
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--crash-point", default=None)
    ap.add_argument("--crash-at", type=int, default=1)
    args = ap.parse_args(argv)

    import keeldb

    options: dict[str, Any] = dict(SMALL_OPTIONS)
    if args.crash_point:
        options["crash_hook"] = _kill_hook(args.crash_point, args.crash_at)
    db = keeldb.open(args.path, sync=args.sync, **options)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for i in range(args.start, args.start + args.count):
        if i % 3 == 0:
            with db.write_batch() as wb:
                wb.put(key(i), value(i))
                wb.put(b"last", str(i).encode())
                if i >= 2:
                    wb.delete(key(i - 2))
        else:
            db.put(key(i), value(i))
        out.write(f"ack {i}\n")
        out.flush()
    db.flush()
    db.compact()
    db.close()
    out.write("done\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

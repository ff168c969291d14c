"""The db_bench-style workloads, run for ONE engine inside ONE fresh child process.

The runner (`keeldb.bench.storage`) starts `python -m keeldb.bench.workloads SPEC_JSON` once
per engine and repeat; this module runs the selected workloads in a fixed order and prints one
JSON line per finished workload and a last line with versions, settings, stats and peak RSS.

Data (db_bench conventions): key i is `b"%016d" % (2*i)` (16 bytes), so the odd numbers in
between are absent keys that no min/max check can rule out; a value is 100 bytes sliced from a
seeded random buffer at an offset that depends on the key and on a version (incompressible,
and checkable after the run). Keys and values are made inside the timed loops (as db_bench
does) so the harness holds no per-key lists and the peak RSS is the engine's.

Each timed loop is followed by an untimed check that reads back what was written, so a
benchmark of a broken engine fails loudly instead of printing a fast number.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from keeldb.bench.engines import ENGINES, BenchEngine, LmdbEngine

KEY_FORMAT = b"%016d"
KEY_BYTES = 16
VALUE_BYTES = 100
VALUE_BUF_BYTES = 4 * 1024 * 1024
VALUE_OFFSET_MUL = 104_729  # prime: neighbouring keys get far-apart value slices
VERSION_OFFSET = 7_919_993  # shifts every slice when a key is overwritten
BATCH_OPS = 1000  # pairs per write batch (db_bench fillbatch)
READ_CHUNK_OPS = 1000  # reads per read view (an LMDB read txn is renewed per chunk)
SCAN_NEXT = 100  # seekrandom: seek, then this many next()s
VERIFY_SAMPLE_MAX = 2000  # keys read back after each workload (untimed)

WORKLOADS: tuple[str, ...] = (
    "fillseq", "fillrandom", "fillrandom-single", "overwrite", "readrandom", "readmissing",
    "seekrandom", "readwhilewriting", "fillsync",
)
WRITE_WORKLOADS = ("fillseq", "fillrandom", "fillrandom-single", "overwrite", "fillsync")
# Workloads that run on the database loaded by fillrandom (run untimed when not selected).
ON_BASE = ("overwrite", "readrandom", "readmissing", "seekrandom", "readwhilewriting")
# Order of execution inside a child: fresh-database workloads first, then the base database.
RUN_ORDER = ("fillseq", "fillrandom-single", "fillsync", "fillrandom", "overwrite",
             "readrandom", "readmissing", "seekrandom", "readwhilewriting")
assert sorted(RUN_ORDER) == sorted(WORKLOADS)

# Operations per workload as a divisor of N (documented in docs/benchmarks.md).
COUNT_DIVISOR: dict[str, int] = {
    "fillseq": 1, "fillrandom": 1, "fillrandom-single": 5, "overwrite": 1, "readrandom": 1,
    "readmissing": 1, "seekrandom": 50, "readwhilewriting": 10, "fillsync": 100,
}
assert set(COUNT_DIVISOR) == set(WORKLOADS)

VERSION_FILL = 0
VERSION_OVERWRITE = 1
VERSION_RWW = 2  # what the writer thread of readwhilewriting writes


def op_count(workload: str, n: int) -> int:
    """How many operations `workload` does for a database of `n` keys."""
    return max(1, n // COUNT_DIVISOR[workload])


@dataclass(frozen=True)
class ChildSpec:
    engine: str
    workloads: tuple[str, ...]
    n: int
    seed: int
    dir: str
    repeat: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> ChildSpec:
        raw = json.loads(text)
        raw["workloads"] = tuple(raw["workloads"])
        return ChildSpec(**raw)


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


TREE_SAMPLE_S = 0.02  # how often the process tree's resident memory is sampled


def _status_kib(pid: str, field: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children() -> list[str]:
    out: list[str] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                out += f.read().decode().split()
    except OSError:
        pass
    return out


class TreeRss:
    """Samples the resident memory of this process plus its child processes (keeldb's
    flush/compaction workers) every TREE_SAMPLE_S and keeps the largest sum: what the engine
    held at once. (A child's own `ru_maxrss` cannot be used: Linux starts it at the parent's
    size when the child is created, so it would count the parent twice.) Linux only; elsewhere
    it reports 0 and the process's own peak stands alone."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self.children_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-rss", daemon=True)
        if os.path.isdir("/proc/self/task"):
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TREE_SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        kids = sum(_status_kib(pid, b"VmRSS:") for pid in _children())
        self.children_peak_kib = max(self.children_peak_kib, kids)
        self.peak_kib = max(self.peak_kib, _status_kib("self", b"VmRSS:") + kids)

    def stop(self) -> None:
        self._stop.set()


def peak_rss_bytes(who: int = resource.RUSAGE_SELF) -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS, where this slightly over-reports).
    return resource.getrusage(who).ru_maxrss * 1024


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Data:
    """The deterministic key/value material of one run."""

    def __init__(self, n: int, seed: int) -> None:
        assert n >= 1
        self.n = n
        self.seed = seed
        self.vbuf = random.Random(f"{seed}:values").randbytes(VALUE_BUF_BYTES)
        self.span = VALUE_BUF_BYTES - VALUE_BYTES

    def order(self, name: str) -> array[int]:
        """A seeded permutation of 0..n-1 (4 bytes per key, no per-key objects kept)."""
        perm = array("I", range(self.n))
        random.Random(f"{self.seed}:{name}").shuffle(perm)
        return perm

    def key(self, i: int) -> bytes:
        return KEY_FORMAT % (i + i)

    def missing_key(self, i: int) -> bytes:
        return KEY_FORMAT % (i + i + 1)

    def value(self, i: int, version: int) -> bytes:
        o = (i * VALUE_OFFSET_MUL + version * VERSION_OFFSET) % self.span
        return self.vbuf[o:o + VALUE_BYTES]


# --- timed loops (kept flat: locals only, one engine call per operation) --------------------

def _fill_batched(eng: BenchEngine, data: Data, order: array[int] | range, count: int,
                  version: int) -> float:
    write, vb, span = eng.write_batch, data.vbuf, data.span
    mul, add, fmt = VALUE_OFFSET_MUL, version * VERSION_OFFSET, KEY_FORMAT
    t0 = time.perf_counter()
    for s in range(0, count, BATCH_OPS):
        write([(fmt % (i + i), vb[o:o + 100])
               for i in order[s:min(s + BATCH_OPS, count)] for o in ((i * mul + add) % span,)])
    return time.perf_counter() - t0


def _fill_single(put: Callable[[bytes, bytes], None], data: Data, order: array[int],
                 count: int, version: int) -> float:
    vb, span = data.vbuf, data.span
    mul, add, fmt = VALUE_OFFSET_MUL, version * VERSION_OFFSET, KEY_FORMAT
    t0 = time.perf_counter()
    for i in order[:count]:
        o = (i * mul + add) % span
        put(fmt % (i + i), vb[o:o + 100])
    return time.perf_counter() - t0


def _read(eng: BenchEngine, order: array[int], count: int, odd: int) -> tuple[float, int]:
    """Point-read `count` keys (odd=1: the absent keys between them); return (secs, found)."""
    fmt, found = KEY_FORMAT, 0
    t0 = time.perf_counter()
    for s in range(0, count, READ_CHUNK_OPS):
        get = eng.reader()
        for i in order[s:min(s + READ_CHUNK_OPS, count)]:
            if get(fmt % (i + i + odd)) is not None:
                found += 1
    secs = time.perf_counter() - t0
    eng.end_reads()
    return secs, found


def _seek(eng: BenchEngine, order: array[int], count: int) -> tuple[float, int]:
    scan, fmt, entries = eng.scan, KEY_FORMAT, 0
    t0 = time.perf_counter()
    for i in order[:count]:
        entries += len(scan(fmt % (i + i), SCAN_NEXT))
    return time.perf_counter() - t0, entries


# --- untimed checks ---------------------------------------------------------------------------

def _verify(eng: BenchEngine, data: Data, idxs: array[int] | range, versions: tuple[int, ...],
            ) -> dict[str, int]:
    """Read back a sample of written keys; count values that are not one of `versions`."""
    get = eng.reader()
    sample = idxs[:VERIFY_SAMPLE_MAX]
    bad = 0
    for i in sample:
        got = get(data.key(i))
        if got is None or bytes(got) not in {data.value(i, v) for v in versions}:
            bad += 1
    eng.end_reads()
    return {"verified": len(sample), "mismatches": bad}


def _verify_scans(eng: BenchEngine, data: Data, starts: array[int], versions: tuple[int, ...],
                  ) -> dict[str, int]:
    """Check a few scans pair by pair: the right keys, ascending, with a written value."""
    bad = 0
    sample = starts[:max(1, VERIFY_SAMPLE_MAX // SCAN_NEXT)]
    for i in sample:
        got = eng.scan(data.key(i), SCAN_NEXT)
        want = range(i, min(i + SCAN_NEXT, data.n))
        if len(got) != len(want):
            bad += 1
            continue
        for (k, v), j in zip(got, want, strict=True):
            if bytes(k) != data.key(j) or bytes(v) not in {data.value(j, x) for x in versions}:
                bad += 1
                break
    return {"scans_verified": len(sample), "scan_mismatches": bad}


# --- the child run -----------------------------------------------------------------------------

class Child:
    """Runs the selected workloads for one engine and emits JSON lines."""

    def __init__(self, spec: ChildSpec, emit: Callable[[dict[str, Any]], None]) -> None:
        assert spec.engine in ENGINES, spec.engine
        assert set(spec.workloads) <= set(WORKLOADS), spec.workloads
        self.spec = spec
        self.emit = emit
        self.data = Data(spec.n, spec.seed)
        self.root = Path(spec.dir) / f"{spec.engine}-r{spec.repeat}"
        self.settings: dict[str, dict[str, str]] = {}
        self.versions: dict[str, str] = {}
        self.stats: dict[str, Any] | None = None
        self.version = VERSION_FILL  # what the base database holds now

    def _open(self, name: str, sync: bool) -> BenchEngine:
        eng = ENGINES[self.spec.engine]()
        if isinstance(eng, LmdbEngine):
            eng.size_for(self.spec.n)
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        eng.open(path, sync)
        self.settings["fillsync" if sync else "default"] = eng.settings()
        return eng

    def _close(self, eng: BenchEngine, remove: bool = True) -> None:
        self.versions = eng.versions()
        stats = eng.stats()
        if stats is not None:
            self.stats = stats
        eng.close()
        if remove and eng.path is not None:
            shutil.rmtree(eng.path, ignore_errors=True)

    def _record(self, workload: str, ops: int, secs: float, cpu0: float,
                checks: dict[str, Any], eng: BenchEngine | None = None) -> None:
        assert secs > 0, (workload, secs)
        row: dict[str, Any] = {
            "workload": workload, "ops": ops, "seconds": secs, "ops_per_sec": ops / secs,
            "cpu_seconds": time.process_time() - cpu0, "rss_bytes": rss_bytes(),
            "checks": checks,
        }
        if eng is not None and eng.path is not None and workload in WRITE_WORKLOADS:
            row["disk_bytes"] = tree_bytes(eng.path)
        self.emit({"event": "workload", "engine": self.spec.engine,
                   "repeat": self.spec.repeat, "result": row})

    def _fresh_fill(self, workload: str) -> None:
        data, n = self.data, self.spec.n
        count = op_count(workload, n)
        eng = self._open(workload, sync=workload == "fillsync")
        cpu0 = time.process_time()
        if workload == "fillseq":
            idxs: array[int] | range = range(count)
            secs = _fill_batched(eng, data, idxs, count, VERSION_FILL)
        else:
            idxs = data.order(workload)[:count]
            secs = _fill_single(eng.putter(), data, idxs, count, VERSION_FILL)
        checks = _verify(eng, data, idxs, (VERSION_FILL,))
        self._record(workload, count, secs, cpu0, checks, eng)
        self._close(eng)

    def run(self) -> None:
        selected = set(self.spec.workloads)
        harness_rss = rss_bytes()
        self.tree = TreeRss()
        for w in ("fillseq", "fillrandom-single", "fillsync"):
            if w in selected:
                self._fresh_fill(w)
        if selected & set(ON_BASE) or "fillrandom" in selected:
            self._run_base(selected)
        self.emit({
            "event": "done", "engine": self.spec.engine, "repeat": self.spec.repeat,
            "versions": self.versions, "settings": self.settings, "stats": self.stats,
            "harness_rss_bytes": harness_rss, "peak_rss_bytes": peak_rss_bytes(),
            # The sampled peak of this process + its worker processes at once (TreeRss).
            "tree_peak_rss_bytes": self.tree.peak_kib * 1024,
            "children_peak_rss_bytes": self.tree.children_peak_kib * 1024,
        })
        self.tree.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run_base(self, selected: set[str]) -> None:
        data, n = self.data, self.spec.n
        eng = self._open("base", sync=False)
        fill_order = data.order("fillrandom")
        cpu0 = time.process_time()
        secs = _fill_batched(eng, data, fill_order, n, VERSION_FILL)
        if "fillrandom" in selected:
            self._record("fillrandom", n, secs, cpu0,
                         _verify(eng, data, fill_order, (VERSION_FILL,)), eng)
        del fill_order
        if "overwrite" in selected:
            order = data.order("overwrite")
            cpu0 = time.process_time()
            secs = _fill_batched(eng, data, order, n, VERSION_OVERWRITE)
            self.version = VERSION_OVERWRITE
            self._record("overwrite", n, secs, cpu0,
                         _verify(eng, data, order, (VERSION_OVERWRITE,)), eng)
        for w in ("readrandom", "readmissing", "seekrandom", "readwhilewriting"):
            if w in selected:
                self._read_workload(eng, w)
        self._close(eng)

    def _read_workload(self, eng: BenchEngine, workload: str) -> None:
        data, count = self.data, op_count(workload, self.spec.n)
        order = data.order(workload)
        cpu0 = time.process_time()
        checks: dict[str, Any]
        if workload == "readrandom":
            secs, found = _read(eng, order, count, 0)
            checks = {"found": found, "expected_found": count,
                      **_verify(eng, data, order, (self.version,))}
        elif workload == "readmissing":
            secs, found = _read(eng, order, count, 1)
            checks = {"found": found, "expected_found": 0}
        elif workload == "seekrandom":
            secs, entries = _seek(eng, order, count)
            want = sum(min(SCAN_NEXT, data.n - i) for i in order[:count])
            checks = {"entries": entries, "expected_entries": want,
                      **_verify_scans(eng, data, order, (self.version,))}
        else:
            secs, checks = self._read_while_writing(eng, order, count)
        self._record(workload, count, secs, cpu0, checks)

    def _read_while_writing(self, eng: BenchEngine, order: array[int], count: int,
                            ) -> tuple[float, dict[str, Any]]:
        """Reads in this thread while one writer thread overwrites random keys."""
        data = self.data
        worder = data.order("readwhilewriting-writer")
        stop = threading.Event()
        started = threading.Event()
        out: dict[str, Any] = {"writer_ops": 0, "writer_seconds": 0.0, "writer_error": None}

        def writer() -> None:
            put, release = eng.thread_putter()
            vb, span, n = data.vbuf, data.span, data.n
            add, fmt, j = VERSION_RWW * VERSION_OFFSET, KEY_FORMAT, 0
            t0 = time.perf_counter()
            try:
                started.set()
                while not stop.is_set():
                    i = worder[j % n]
                    o = (i * VALUE_OFFSET_MUL + add) % span
                    put(fmt % (i + i), vb[o:o + 100])
                    j += 1
            except Exception as exc:  # reported by the main thread
                out["writer_error"] = repr(exc)
            finally:
                out["writer_ops"], out["writer_seconds"] = j, time.perf_counter() - t0
                release()

        thread = threading.Thread(target=writer, name="bench-writer", daemon=True)
        thread.start()
        started.wait()
        secs, found = _read(eng, order, count, 0)
        stop.set()
        thread.join()
        if out["writer_error"] is not None:
            raise RuntimeError(f"readwhilewriting writer failed: {out['writer_error']}")
        wsecs = out["writer_seconds"]
        checks = {"found": found, "expected_found": count, "writer_ops": out["writer_ops"],
                  "writer_ops_per_sec": out["writer_ops"] / wsecs if wsecs > 0 else 0.0,
                  **_verify(eng, data, order, (self.version, VERSION_RWW))}
        return secs, checks


def _emit_stdout(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    """Child entry: `python -m keeldb.bench.workloads SPEC_JSON`."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m keeldb.bench.workloads SPEC_JSON\n")
        return 2
    spec = ChildSpec.from_json(argv[0])
    try:
        Child(spec, _emit_stdout).run()
    except Exception as exc:
        _emit_stdout({"event": "error", "engine": spec.engine, "repeat": spec.repeat,
                      "error": f"{type(exc).__name__}: {exc}"})
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`keeldb bench storage`: run every engine in fresh child processes and compare them.

For each repeat, each engine runs once in a new `python -m keeldb.bench.workloads` process
(engines interleaved, so slow drift of the machine hits all of them alike). The parent reads
the child's JSON lines, takes the child's peak RSS from `os.wait4`, and reports per workload
the median ops/s over repeats, the ratio to rocksdict and to SQLite, and whether keeldb meets
the targets of the storage issue. Presentation lives in the CLI; this module returns data.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keeldb.bench.engines import ENGINES, available
from keeldb.bench.workloads import (
    BATCH_OPS,
    KEY_BYTES,
    SCAN_NEXT,
    VALUE_BYTES,
    WORKLOADS,
    WRITE_WORKLOADS,
    ChildSpec,
    op_count,
)

SCHEMA = "keeldb.bench.storage/1"
DEFAULT_ENGINES: tuple[str, ...] = ("keeldb-lsm", "rocksdict", "lmdb", "sqlite3")
REFERENCES: tuple[str, ...] = ("rocksdict", "sqlite3")  # ratio columns
KEELDB = "keeldb-lsm"
CHILD_TIMEOUT_S_DEFAULT = 3600.0
STDERR_TAIL_BYTES = 2000  # of a failed child's stderr, quoted in the report
RSS_TARGET_BYTES = 500 * 1000 * 1000
RSS_TARGET_N = 1_000_000  # the RSS target is judged only at this N
LIBRARIES = ("rocksdict", "lmdb", "xxhash", "crc32c", "zstandard", "sortedcontainers",
             "msgpack", "rich", "typer")


@dataclass(frozen=True)
class Target:
    """One goal of the storage issue: keeldb ops/s / `versus` ops/s >= `min_ratio`."""

    workload: str
    versus: str
    min_ratio: float
    why: str = ""


TARGETS: tuple[Target, ...] = (
    Target("fillrandom", "rocksdict", 1.0),
    Target("fillrandom-single", "rocksdict", 1.0),
    Target("readrandom", "rocksdict", 1.5),
    Target("readrandom", "lmdb", 0.5),
    Target("readmissing", "rocksdict", 1.0, "bloom filters work"),
    Target("seekrandom", "rocksdict", 2.0, "scan100"),
    Target("fillsync", "rocksdict", 0.9, "the disk is the limit"),
    # "every write workload >= 10x SQLite"; fillsync is fsync-bound for every engine and has
    # its own target above.
    Target("fillseq", "sqlite3", 10.0),
    Target("fillrandom", "sqlite3", 10.0),
    Target("fillrandom-single", "sqlite3", 10.0),
    Target("overwrite", "sqlite3", 10.0),
)


@dataclass(frozen=True)
class RunConfig:
    n: int = 1_000_000
    repeats: int = 3
    engines: tuple[str, ...] = DEFAULT_ENGINES
    workloads: tuple[str, ...] = WORKLOADS
    seed: int = 42
    dir: Path | None = None  # where databases are created; a fresh temp dir when None
    child_timeout_s: float = CHILD_TIMEOUT_S_DEFAULT
    command: str = ""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n={self.n} must be >= 1")
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats} must be >= 1")
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown:
            raise ValueError(f"unknown engine(s) {unknown}; choose from {sorted(ENGINES)}")
        unknown = [w for w in self.workloads if w not in WORKLOADS]
        if unknown:
            raise ValueError(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")


@dataclass
class Event:
    """Progress reported to the caller: a workload finished, or a child started/ended."""

    kind: str  # "start" | "workload" | "done" | "error" | "skip"
    engine: str
    repeat: int
    workload: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def default_out_path(now: dt.datetime | None = None) -> Path:
    day = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    return Path("benchmarks") / "results" / f"storage-{day}.json"


# --- machine --------------------------------------------------------------------------------

def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _fs_type(path: Path) -> str:
    """The filesystem type of the mount holding `path` (Linux), e.g. ext4 or tmpfs."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    for line in _read_text("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/")
                                                                       + "/")):
            if len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def machine_info(db_dir: Path) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                _read_text("/proc/cpuinfo").splitlines() if line.startswith("model name")),
               platform.processor() or "unknown")
    mem_kib = next((int(line.split()[1]) for line in _read_text("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    libs: dict[str, str] = {}
    for lib in LIBRARIES:
        try:
            libs[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            libs[lib] = "not installed"
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "ram_bytes": mem_kib * 1024,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "db_filesystem": _fs_type(db_dir),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "libraries": libs,
    }


# --- children -------------------------------------------------------------------------------

def run_child(spec: ChildSpec, on_event: Callable[[Event], None],
              timeout_s: float = CHILD_TIMEOUT_S_DEFAULT) -> dict[str, Any]:
    """Run one engine x repeat in a fresh process; return its workloads, summary and RSS."""
    cmd = [sys.executable, "-m", "keeldb.bench.workloads", spec.to_json()]
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    error: str | None = None
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        killer = threading.Timer(timeout_s, proc.kill)  # kills only this child, by handle
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                msg = json.loads(line)
                if msg["event"] == "workload":
                    rows.append(msg["result"])
                    on_event(Event("workload", spec.engine, spec.repeat,
                                   msg["result"]["workload"], msg["result"]))
                elif msg["event"] == "done":
                    summary = msg
                elif msg["event"] == "error":
                    error = msg["error"]
        finally:
            killer.cancel()
            # wait4 gives this child's own rusage (peak RSS), unlike RUSAGE_CHILDREN.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 and error is None:
            err.seek(0, os.SEEK_END)
            err.seek(max(0, err.tell() - STDERR_TAIL_BYTES))
            tail = err.read().decode(errors="replace").strip().splitlines()
            error = (f"exit code {proc.returncode}"
                     + (" (killed: timeout)" if proc.returncode == -9 else "")
                     + (f": {tail[-1]}" if tail else ""))
    return {
        "engine": spec.engine, "repeat": spec.repeat, "workloads": rows, "error": error,
        # The engine process's own peak, or the sampled peak of it plus its worker processes
        # at one moment, whichever is larger (see workloads.TreeRss).
        "peak_rss_bytes": max(usage.ru_maxrss * 1024, summary.get("tree_peak_rss_bytes") or 0),
        "process_peak_rss_bytes": usage.ru_maxrss * 1024,
        "tree_peak_rss_bytes": summary.get("tree_peak_rss_bytes"),
        "children_peak_rss_bytes": summary.get("children_peak_rss_bytes"),
        "harness_rss_bytes": summary.get("harness_rss_bytes"),
        "versions": summary.get("versions", {}), "settings": summary.get("settings", {}),
        "stats": summary.get("stats"),
        "user_cpu_seconds": usage.ru_utime, "system_cpu_seconds": usage.ru_stime,
    }


# --- aggregation ----------------------------------------------------------------------------

def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(runs: Sequence[dict[str, Any]], engines: Sequence[str],
              workloads: Sequence[str]) -> dict[str, Any]:
    """Median ops/s per workload x engine, ratios to the references, RSS per engine."""
    results: dict[str, dict[str, Any]] = {}
    for w in workloads:
        row: dict[str, Any] = {}
        for e in engines:
            samples = [r["ops_per_sec"] for run in runs if run["engine"] == e
                       for r in run["workloads"] if r["workload"] == w]
            if samples:
                row[e] = {"ops_per_sec": statistics.median(samples), "samples": samples}
        for cell in row.values():
            for ref in REFERENCES:
                ref_cell = row.get(ref)
                cell[f"ratio_to_{ref}"] = _ratio(cell["ops_per_sec"],
                                                 ref_cell["ops_per_sec"] if ref_cell else None)
        results[w] = row
    rss: dict[str, Any] = {}
    for e in engines:
        peaks = [run["peak_rss_bytes"] for run in runs if run["engine"] == e]
        if peaks:
            harness = [run["harness_rss_bytes"] for run in runs
                       if run["engine"] == e and run["harness_rss_bytes"]]
            rss[e] = {"peak_rss_bytes_median": statistics.median(peaks),
                      "peak_rss_bytes_max": max(peaks), "samples": peaks,
                      "harness_rss_bytes": max(harness) if harness else None}
    return {"results": results, "peak_rss": rss}


def check_targets(results: dict[str, dict[str, Any]], rss: dict[str, Any],
                  n: int) -> list[dict[str, Any]]:
    """keeldb against the issue's goals: met / not met / not measured (None)."""
    out: list[dict[str, Any]] = []
    for t in TARGETS:
        row = results.get(t.workload, {})
        ratio = _ratio(row.get(KEELDB, {}).get("ops_per_sec"),
                       row.get(t.versus, {}).get("ops_per_sec"))
        out.append({"target": f"{t.workload} >= {t.min_ratio:g}x {t.versus}",
                    "workload": t.workload, "versus": t.versus, "min_ratio": t.min_ratio,
                    "ratio": ratio, "met": None if ratio is None else ratio >= t.min_ratio,
                    "note": t.why})
    peak = rss.get(KEELDB, {}).get("peak_rss_bytes_max")
    comparable = n == RSS_TARGET_N
    note = "" if comparable else f"stated for N={RSS_TARGET_N:,}; this run has N={n:,}"
    out.append({"target": "peak RSS <= 500 MB", "workload": "", "versus": "",
                "min_ratio": None, "ratio": None, "value_bytes": peak,
                "met": None if peak is None or not comparable else peak <= RSS_TARGET_BYTES,
                "note": note})
    return out


def keeldb_stats_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The engine statistics of keeldb's last successful run, headline numbers first."""
    for run in reversed(runs):
        if run["engine"] == KEELDB and run["stats"]:
            st = run["stats"]
            keys = ("write_amplification", "space_amplification", "bloom_false_positive_rate",
                    "block_cache_hit_rate", "tables_touched_per_read", "flushes",
                    "compactions", "write_stalls", "write_stall_seconds")
            return {"headline": {k: st.get(k) for k in keys}, "all": st}
    return None


# --- the run --------------------------------------------------------------------------------

def run(config: RunConfig, on_event: Callable[[Event], None] = lambda e: None,
        ) -> dict[str, Any]:
    """Run the benchmark; return the JSON-ready result (see docs/benchmarks.md)."""
    notes: list[str] = []
    engines: list[str] = []
    for e in config.engines:
        ok, why = available(e)
        if ok:
            engines.append(e)
        else:
            notes.append(why)
            on_event(Event("skip", e, -1, detail={"note": why}))
    made_dir = config.dir is None
    db_dir = Path(tempfile.mkdtemp(prefix="keeldb-bench-")) if config.dir is None \
        else Path(config.dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(db_dir)
    if machine["db_filesystem"] in ("tmpfs", "ramfs"):
        notes.append(f"databases are on {machine['db_filesystem']}: fsync costs nothing there; "
                     "pass --dir on a real disk for meaningful fillsync figures")
    started = dt.datetime.now(dt.UTC)
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(config.repeats):
            for e in engines:
                spec = ChildSpec(engine=e, workloads=tuple(config.workloads), n=config.n,
                                 seed=config.seed, dir=str(db_dir), repeat=rep)
                on_event(Event("start", e, rep))
                result = run_child(spec, on_event, config.child_timeout_s)
                runs.append(result)
                if result["error"]:
                    notes.append(f"{e} repeat {rep}: {result['error']}")
                    on_event(Event("error", e, rep, detail={"error": result["error"]}))
                else:
                    on_event(Event("done", e, rep, detail=result))
    finally:
        if made_dir:
            shutil.rmtree(db_dir, ignore_errors=True)
    if hasattr(os, "getloadavg"):
        machine["loadavg_at_end"] = list(os.getloadavg())
    summary = summarize(runs, engines, config.workloads)
    versions: dict[str, dict[str, str]] = {}
    settings: dict[str, Any] = {}
    for r in runs:
        versions.setdefault(r["engine"], {}).update(r["versions"])
        settings.setdefault(r["engine"], {}).update(r["settings"])
    return {
        "schema": SCHEMA,
        "command": config.command,
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {
            "n": config.n, "repeats": config.repeats, "seed": config.seed,
            "engines": list(config.engines), "engines_run": engines,
            "workloads": list(config.workloads), "key_bytes": KEY_BYTES,
            "value_bytes": VALUE_BYTES, "batch_ops": BATCH_OPS, "scan_next": SCAN_NEXT,
            "ops": {w: op_count(w, config.n) for w in config.workloads},
            "write_workloads": [w for w in WRITE_WORKLOADS if w in config.workloads],
        },
        "machine": machine,
        "versions": versions,
        "settings": settings,
        "results": summary["results"],
        "peak_rss": summary["peak_rss"],
        "targets": check_targets(summary["results"], summary["peak_rss"], config.n),
        "keeldb_stats": keeldb_stats_summary(runs),
        "runs": runs,
        "notes": notes,
    }


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, out)

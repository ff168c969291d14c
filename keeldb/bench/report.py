"""Render a `keeldb bench storage` JSON result as Markdown (the tables of docs/benchmarks.md).

    python benchmarks/storage.py report benchmarks/results/storage-<date>.json
"""

from __future__ import annotations

import math
import statistics
from typing import Any


def _ops(cell: dict[str, Any] | None) -> str:
    return "–" if not cell else f"{cell['ops_per_sec']:,.0f}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _share(runs: list[dict[str, Any]], engine: str, workload: str) -> str:
    shares = [r["cpu_seconds"] / r["seconds"] for run in runs if run["engine"] == engine
              for r in run["workloads"] if r["workload"] == workload and r["seconds"] > 0]
    return "–" if not shares else f"{statistics.median(shares):.2f}"


def _load(v: list[float] | None) -> str:
    return "–" if not v else "/".join(f"{x:.2f}" for x in v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def markdown(result: dict[str, Any]) -> str:
    """Machine, ops/s with ratios, targets, peak RSS and keeldb stats as Markdown."""
    cfg, m = result["config"], result["machine"]
    engines: list[str] = cfg["engines_run"]
    lines = [
        f"Command: `{result['command'] or 'keeldb bench storage'}` "
        f"(N = {cfg['n']:,}, median of {cfg['repeats']}, seed {cfg['seed']}; "
        f"{result['started_utc']} – {result['finished_utc']}).",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_bytes'] / 2**30:.1f} GiB RAM, "
        f"kernel {m['kernel']}, {m['python']}, databases on {m['db_filesystem']}; "
        f"load average (1/5/15 min) at start {_load(m.get('loadavg_at_start'))}, "
        f"at end {_load(m.get('loadavg_at_end'))}.",
        "",
        "Versions: " + "; ".join(
            f"{e}: " + ", ".join(f"{k} {v}" for k, v in sorted(result["versions"].get(e,
                                                                                      {}).items()))
            for e in engines) + ".",
        "",
    ]
    header = ["workload", "ops"] + engines
    rows = []
    for w in cfg["workloads"]:
        row = [w, f"{cfg['ops'][w]:,}"]
        for e in engines:
            c = result["results"][w].get(e)
            row.append(_ops(c) if not c or e in ("rocksdict", "sqlite3") else
                       f"{_ops(c)} ({_x(c['ratio_to_rocksdict'])} R, {_x(c['ratio_to_sqlite3'])} S)")
        rows.append(row)
    lines += ["ops/s (median); in brackets the ratio to rocksdict (R) and to sqlite3 (S):", ""]
    lines += _table(header, rows) + [""]
    if any(t["met"] is not None for t in result["targets"]):
        trows = []
        for t in result["targets"]:
            if t["ratio"] is not None:
                got = _x(math.floor(t["ratio"] * 100) / 100)  # never rounds up to a target
            elif t.get("value_bytes") is not None:
                got = f"{t['value_bytes'] / 1e6:,.0f} MB"
            else:
                got = "–"
            verdict = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
            trows.append([t["target"], got, verdict])
        lines += ["keeldb-lsm against the issue's targets:", ""]
        lines += _table(["target", "measured", "verdict"], trows) + [""]
    lines += ["CPU time of the engine process / wall time, median (above 1: background threads on "
              "the second core; well below 1: waiting for the disk, or the machine was busy "
              "with other work):", ""]
    lines += _table(["workload"] + engines,
                    [[w] + [_share(result["runs"], e, w) for e in engines]
                     for w in cfg["workloads"]]) + [""]
    rrows = []
    for e, v in result["peak_rss"].items():
        h = v["harness_rss_bytes"]
        rrows.append([e, f"{v['peak_rss_bytes_median'] / 1e6:,.0f}",
                      f"{v['peak_rss_bytes_max'] / 1e6:,.0f}",
                      "–" if h is None else f"{h / 1e6:,.0f}"])
    lines += ["Peak RSS of each engine (MB): the larger of the engine process's `ru_maxrss` "
              "(from `wait4`) and the largest resident memory of the engine process plus its "
              "worker processes at one moment (keeldb's flush/compaction workers; sampled every "
              "20 ms from /proc); the harness's own share is the RSS before the first database "
              "opens:", ""]
    lines += _table(["engine", "median", "max", "harness"], rrows) + [""]
    st = result.get("keeldb_stats")
    if st:
        lines += ["keeldb stats at the end of the last run: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in st["headline"].items()) + ".", ""]
    for note in result["notes"]:
        lines.append(f"- note: {note}")
    return "\n".join(lines).rstrip() + "\n"

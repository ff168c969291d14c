"""Documented entry points of the transaction benchmark (the code lives in keeldb.bench.txn).

    python benchmarks/txn.py run [OPTIONS]      same as `keeldb bench txn [OPTIONS]`
    python benchmarks/txn.py report FILE...     print the files' points as one Markdown table
                                                (the form used in docs/benchmarks.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SHORT_KINDS = {"write-write": "ww", "read-write": "rw", "serialization_failure": "40001",
               "deadlock": "40P01", "conflict@step": "c@step",
               "conflict@commit": "c@commit"}


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def markdown(results: list[dict[str, Any]]) -> str:
    """One table for one or more result files (e.g. the random- and sorted-order runs)."""
    from keeldb.bench.txn import point_table

    lines: list[str] = []
    for r in results:
        cfg, m = r["config"], r["machine"]
        budget = f"{cfg['seconds']:g} s" if cfg["seconds"] is not None else f"{cfg['txns']} txns"
        lines += [f"- `{r['command'] or 'keeldb bench txn'}`: {cfg['clients']} clients, "
                  f"{budget} per point, {cfg['keys']:,} keys (hot set {cfg['hot_keys']}), keys "
                  f"in {cfg['key_order']} order; {r['started_utc']} – {r['finished_utc']}; "
                  f"{m['cpu_model']}, {m['cores']} cores, {m['python']}, data on "
                  f"{m['db_filesystem']}, load average at start "
                  f"{'/'.join(f'{x:.1f}' for x in m.get('loadavg_at_start') or [])}."]
    lines += ["", "| order | contention | level | system | txn/s | aborts | by kind | "
              "p50 ms | p99 ms |", "|---|---|---|---|---:|---:|---|---:|---:|"]
    for r in results:
        for p in point_table(r):
            kinds = " ".join(f"{SHORT_KINDS.get(k, k)} {v}" for k, v in
                             p["abort_kinds"].items()) or "–"
            rate = "–" if p["abort_rate"] is None else f"{100 * p['abort_rate']:.1f}%"
            lines.append(f"| {r['config']['key_order']} | {p['contention']} | {p['level']} | "
                         f"{p['system']} | {_f(p['txn_per_sec'], ',.0f')} | {rate} | {kinds} | "
                         f"{_f(p['latency_ms_p50'], '.1f')} | {_f(p['latency_ms_p99'], '.0f')} |")
    notes = [n for r in results for n in r["notes"]]
    lines += [""] + [f"- note: {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:
        from keeldb.cli.main import main as keeldb_main

        return keeldb_main(["bench", "txn", *argv[1:]])
    if len(argv) >= 2 and argv[0] == "report":
        sys.stdout.write(markdown([json.loads(Path(a).read_text()) for a in argv[1:]]))
        return 0
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

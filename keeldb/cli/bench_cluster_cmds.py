"""`keeldb bench cluster`: replicated SETs side by side (see docs/benchmarks.md)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from keeldb import limits
from keeldb.bench import cluster as bench
from keeldb.cli.app import bench_app, console, err_console, show_bench_result, split_choices
from keeldb.errors import BenchmarkFailedError, UsageError


def _concurrencies(text: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise UsageError(f"--concurrency {text!r} is not a comma-separated list of integers; "
                         "pass e.g. 1,16,64,256") from None
    top = limits.bench_cluster_concurrency_max
    if not values or not all(1 <= c <= top for c in values):
        raise UsageError(f"--concurrency {text!r}: each value must be 1..{top} "
                         "(limits.bench_cluster_concurrency_max)")
    return values


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def render(result: dict[str, Any], out: Console) -> None:
    """One table: a row per system and concurrency (ops/s, p50, p99), then targets, notes."""
    cfg = result["config"]
    t = Table(title=f"SET of {cfg['value_bytes']}-byte values, {cfg['seconds']:g} s per "
                    "point (closed loop, one load generator)")
    for col in ("system", "settings", "conc.", "ops/s", "p50 ms", "p99 ms", "errors"):
        t.add_column(col, justify="left" if col in ("system", "settings") else "right")
    for system, r in result["results"].items():
        if r["error"] and not r["points"]:
            t.add_row(system, r["settings"], "-", "[red]failed[/]", "-", "-", "-")
            continue
        for i, (c, p) in enumerate(r["points"].items()):
            t.add_row(system if i == 0 else "", r["settings"] if i == 0 else "", c,
                      f"{p['ops_per_sec']:,.0f}", _ms(p["p50_ms"]), _ms(p["p99_ms"]),
                      str(p["errors"]))
    out.print(t)
    tg = Table(title="keeldb against the issue's targets")
    for col in ("target", "keeldb", "peer", "verdict"):
        tg.add_column(col)
    for row in result["targets"]:
        if row["met"] is None:
            tg.add_row(row["target"], "-", "-", "not measured")
            continue
        mine = f"{row['keeldb_ops']:,.0f}/s p99 {_ms(row['keeldb_p99_ms'])}"
        peer = (f"{row['peer_ops']:,.0f}/s p99 {_ms(row['peer_p99_ms'])} "
                f"({row['peer_source']})")
        tg.add_row(row["target"], mine, peer, "[green]met[/]" if row["met"]
                   else "[red]not met[/]")
    out.print(tg)
    for system, r in result["results"].items():
        if r["error"]:
            out.print(f"[red]{system} failed:[/] {r['error']}", highlight=False)
    for note in result["notes"]:
        out.print(f"[yellow]note:[/] {note}", highlight=False)


@bench_app.command("cluster")
def cluster(
    systems: str = typer.Option("all", "--systems",
                                help="Comma-separated systems, or 'all': "
                                + ", ".join(bench.SYSTEMS) + "."),
    concurrency: str = typer.Option("1,16,64,256", "--concurrency",
                                    help="Comma-separated connection counts."),
    seconds: float = typer.Option(5.0, "--seconds", help="Measured seconds per point."),
    warmup: float = typer.Option(1.0, "--warmup", help="Unmeasured seconds before each point."),
    value_bytes: int = typer.Option(100, "--value-bytes", help="Bytes of each SET's value."),
    out: Path | None = typer.Option(None, "--out", help="JSON result file "
                                    "(default benchmarks/results/cluster-<date>.json)."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON result to stdout."),
    db_dir: Path | None = typer.Option(None, "--dir", help="Where the servers' temporary "
                                       "data directories go (default the system temp dir)."),
    no_uvloop: bool = typer.Option(False, "--no-uvloop",
                                   help="Drive the load with asyncio's own loop."),
) -> None:
    """keeldb 1 and 3 nodes vs Redis, etcd and PySyncObj: ops/s, p50, p99 per concurrency."""
    if seconds <= 0 or warmup < 0 or not 1 <= value_bytes <= 1 << 20:
        raise UsageError(f"--seconds ({seconds}) must be > 0, --warmup ({warmup}) >= 0 and "
                         f"--value-bytes ({value_bytes}) 1..1048576")
    config = bench.RunConfig(systems=split_choices(systems, bench.SYSTEMS, "system"), concurrencies=_concurrencies(concurrency),
                             seconds=seconds, warmup_s=warmup, value_bytes=value_bytes,
                             dir=db_dir, use_uvloop=not no_uvloop,
                             command="keeldb " + shlex.join(sys.argv[1:]))
    show = err_console if json_out else console

    def on_event(ev: bench.Event) -> None:
        d = ev.detail
        if ev.kind == "point":
            show.print(f"{ev.system} c={d['concurrency']}: {d['ops_per_sec']:,.0f}/s p50 "
                       f"{_ms(d['p50_ms'])} ms p99 {_ms(d['p99_ms'])} ms", highlight=False)
        elif ev.kind == "skip":
            show.print(f"[yellow]{ev.system} skipped:[/] {d['why']}", highlight=False)
        elif ev.kind == "error":
            show.print(f"[red]{ev.system} failed:[/] {d['error']}", highlight=False)

    result = bench.run(config, on_event)
    out_path = out or bench.default_out_path()
    bench.write_result(result, out_path)
    show_bench_result(result, out_path, json_out, render)
    failed = [s for s, r in result["results"].items() if r["error"]]
    if failed:
        raise BenchmarkFailedError(f"{', '.join(failed)} failed (see 'error' in {out_path}); "
                                   "rerun with --systems to isolate it")

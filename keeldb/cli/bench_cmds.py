"""`keeldb bench storage`: the side-by-side storage benchmark (see docs/benchmarks.md)."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keeldb.bench import storage as bench
from keeldb.bench.engines import available
from keeldb.bench.workloads import WORKLOADS
from keeldb.cli.app import bench_app, console, err_console, show_bench_result, split_choices
from keeldb.errors import BenchmarkFailedError, UsageError


def _fmt_ops(cell: dict[str, Any] | None) -> str:
    return "-" if not cell else f"{cell['ops_per_sec']:,.0f}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _short(x: float | None) -> str:
    """A ratio in 4 characters: 0.15, 1.10, 11.6, 123."""
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def render(result: dict[str, Any], out: Console) -> None:
    """Human tables: ops/s, ratios, targets, peak RSS, keeldb stats and notes."""
    engines: list[str] = result["config"]["engines_run"]
    workloads: list[str] = result["config"]["workloads"]
    ops = result["config"]["ops"]
    reps = result["config"]["repeats"]
    t = Table(title=f"ops/s, median of {reps} (N={result['config']['n']:,})")
    t.add_column("workload", no_wrap=True)
    t.add_column("ops", justify="right")
    for e in engines:
        t.add_column(e, justify="right")
    for w in workloads:
        t.add_row(w, f"{ops[w]:,}", *(_fmt_ops(result["results"][w].get(e)) for e in engines))
    out.print(t)

    r = Table(title="ratio of ops/s: to rocksdict / to sqlite3")
    r.add_column("workload", no_wrap=True)
    for e in engines:
        r.add_column(e, justify="right")
    for w in workloads:
        cells = []
        for e in engines:
            c = result["results"][w].get(e)
            cells.append("-" if not c else
                         f"{_short(c['ratio_to_rocksdict'])}/{_short(c['ratio_to_sqlite3'])}")
        r.add_row(w, *cells)
    out.print(r)

    rss = Table(title="peak RSS per engine, its worker processes included (MB)")
    for col in ("engine", "median", "max", "of which harness"):
        rss.add_column(col, justify="right" if col != "engine" else "left")
    for e, v in result["peak_rss"].items():
        h = v["harness_rss_bytes"]
        rss.add_row(e, f"{v['peak_rss_bytes_median'] / 1e6:,.0f}",
                    f"{v['peak_rss_bytes_max'] / 1e6:,.0f}", "-" if h is None else f"{h / 1e6:,.0f}")
    out.print(rss)

    if bench.KEELDB in engines:
        tg = Table(title="keeldb-lsm against the issue's targets")
        for col in ("target", "measured", "verdict"):
            tg.add_column(col)
        for row in result["targets"]:
            if row["ratio"] is not None:
                measured = _fmt_ratio(math.floor(row["ratio"] * 100) / 100)  # never rounds up
            elif row.get("value_bytes") is not None:
                measured = f"{row['value_bytes'] / 1e6:,.0f} MB"
            else:
                measured = "-"
            verdict = {True: "[green]met[/]", False: "[red]not met[/]",
                       None: "not measured"}[row["met"]]
            tg.add_row(row["target"], measured, verdict)
        out.print(tg)
        st = result.get("keeldb_stats")
        if st:
            h = st["headline"]
            out.print("keeldb stats after the run: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in h.items()))
    for note in result["notes"]:
        out.print(f"[yellow]note:[/] {note}", highlight=False)


@bench_app.command("storage")
def storage(
    n: int = typer.Option(1_000_000, "--n", help="Keys in the database (N)."),
    repeats: int = typer.Option(3, "--repeats", help="Fresh-process runs per engine; "
                                "the median is reported."),
    engines: str = typer.Option(",".join(bench.DEFAULT_ENGINES), "--engines",
                                help="Comma-separated engines, or 'all'."),
    workloads: str = typer.Option("all", "--workloads",
                                  help="Comma-separated workloads, or 'all': "
                                  + ", ".join(WORKLOADS) + "."),
    out: Path | None = typer.Option(None, "--out", help="JSON result file "
                                    "(default benchmarks/results/storage-<date>.json)."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON result to stdout."),
    db_dir: Path | None = typer.Option(None, "--dir", help="Where to create the databases "
                                       "(default a fresh temporary directory)."),
    seed: int = typer.Option(42, "--seed", help="Seed of keys, orders and values."),
    timeout: float = typer.Option(bench.CHILD_TIMEOUT_S_DEFAULT, "--timeout",
                                  help="Seconds before one engine process is killed."),
) -> None:
    """db_bench-style storage benchmark: keeldb-lsm vs rocksdict, lmdb and sqlite3."""
    eng = split_choices(engines, tuple(bench.ENGINES), "engine")
    wl = split_choices(workloads, WORKLOADS, "workload")
    if n < 1 or repeats < 1 or timeout <= 0:
        raise UsageError(f"--n ({n}), --repeats ({repeats}) and --timeout ({timeout}) must "
                         "be positive; pass e.g. --n 1000000 --repeats 3")
    out_path = out or bench.default_out_path()
    config = bench.RunConfig(n=n, repeats=repeats, engines=eng, workloads=wl, seed=seed,
                             dir=db_dir, child_timeout_s=timeout,
                             command="keeldb " + shlex.join(sys.argv[1:]))
    show = err_console if json_out else console
    runnable = [e for e in eng if available(e)[0]]
    total = len(runnable) * repeats * len(wl)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=show, transient=True) as progress:
        task = progress.add_task("starting", total=total)

        def on_event(ev: bench.Event) -> None:
            if ev.kind == "start":
                progress.update(task, description=f"{ev.engine} run {ev.repeat + 1}/{repeats}")
            elif ev.kind == "workload":
                progress.advance(task)
                progress.update(task, description=f"{ev.engine} run {ev.repeat + 1}/{repeats}: "
                                f"{ev.workload} {ev.detail['ops_per_sec']:,.0f}/s")
            elif ev.kind == "error":
                show.print(f"[red]{ev.engine} run {ev.repeat + 1} failed:[/] "
                           f"{ev.detail['error']}", highlight=False)

        result = bench.run(config, on_event)
    bench.write_result(result, out_path)
    show_bench_result(result, out_path, json_out, render)
    failed = [r for r in result["runs"] if r["error"]]
    if failed:
        raise BenchmarkFailedError(
            f"{len(failed)} of {len(result['runs'])} engine runs failed (see the notes above and "
            f"'runs' in {out_path}); rerun with --engines to isolate the failing engine")

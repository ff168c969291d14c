"""`keeldb bench checkers`: time the checkers over the public corpora (see docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keeldb.bench import checkers as bench
from keeldb.cli.app import bench_app, console, err_console, print_json
from keeldb.errors import CheckerMismatchError


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def _s(x: float) -> str:
    return f"{x:,.2f}"


def _n(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def render(result: dict[str, Any], out: Console) -> None:
    """Human tables: per corpus, slowest files, Elle histories, totals and notes."""
    t = Table(title=f"checkers over the public corpora (peak RSS by {result['rss_method']})")
    t.add_column("corpus", no_wrap=True)
    for col in ("files", "checks", "matched", "mismatched", "wall s", "CPU s", "steps",
                "peak RSS MB"):
        t.add_column(col, justify="right")
    for name, c in result["corpora"].items():
        bad = f"[red]{c['mismatched']}[/]" if c["mismatched"] else "0"
        t.add_row(name, str(c["files"]), str(c["checks"]), str(c["matched"]), bad,
                  _s(c["wall_s"]), _s(c["cpu_s"]), _n(c["steps"]), _mb(c["peak_rss_bytes"]))
    tot = result["totals"]
    t.add_row("[bold]total[/]", str(tot["files"]), str(tot["checks"]), str(tot["matched"]),
              str(tot["mismatched"]), _s(tot["wall_s"]), _s(tot["cpu_s"]), "",
              _mb(result["process_peak_rss_bytes"]))
    out.print(t)

    s = Table(title=f"slowest {bench.SLOWEST_SHOWN} files per corpus")
    s.add_column("corpus")
    s.add_column("file", no_wrap=True)
    for col in ("wall s", "CPU s", "steps"):
        s.add_column(col, justify="right")
    s.add_column("verdict")
    for name, c in result["corpora"].items():
        for f in c["slowest"]:
            s.add_row(name, f["name"], _s(f["wall_s"]), _s(f["cpu_s"]), _n(f["steps"]),
                      f["verdict"])
    out.print(s)

    if result["elle_histories"]:
        e = Table(title="Elle histories")
        e.add_column("file", no_wrap=True)
        for col in ("txns", "read s", "check s", "wall s", "CPU s"):
            e.add_column(col, justify="right")
        e.add_column("verdict")
        e.add_column("anomaly types")
        for f in result["elle_histories"]:
            d = f["detail"]
            e.add_row(f["name"].removeprefix("histories/"), _n(d.get("txn_count")),
                      _s(f["load_wall_s"]), _s(f["check_wall_s"]), _s(f["wall_s"]),
                      _s(f["cpu_s"]), f["verdict"], ", ".join(d.get("anomaly_types", [])))
        out.print(e)

    met = {True: "[green]met[/]", False: "[red]not met[/]",
           None: "not judged (only part of the corpus ran)"}[tot["target_met"]]
    out.print(f"whole corpus: {_s(tot['run_wall_s'])} s wall, {_s(tot['run_cpu_s'])} s CPU "
              f"(linearizability corpora {_s(tot['linear_wall_s'])} s wall); target under "
              f"{tot['target_wall_s']:.0f} s: {met}", highlight=False)
    for name, c in result["corpora"].items():
        for m in c["mismatches"]:
            out.print(f"[red]mismatch[/] {name}: {m}", highlight=False)
    for note in result["notes"]:
        out.print(f"[yellow]note:[/] {note}", highlight=False)


def _command(testdata: Path | None, corpora: tuple[str, ...]) -> str:
    """The command line to quote in reports (without machine paths unless given)."""
    parts = ["keeldb", "bench", "checkers"]
    if corpora != bench.CORPORA:
        parts += ["--corpus", ",".join(corpora)]
    if testdata is not None:
        parts += ["--testdata", str(testdata)]
    return " ".join(parts)


@bench_app.command("checkers")
def checkers(
    testdata: Path | None = typer.Option(
        None, "--testdata", help=f"Folder holding porcupine/, knossos/ and elle/ (default: "
        f"${bench.ENV_TESTDATA}, else shared/testdata beside the repository checkout)."),
    corpus: str = typer.Option("all", "--corpus", help="Comma-separated corpora, or 'all': "
                               + ", ".join(bench.CORPORA) + "."),
    out: Path | None = typer.Option(None, "--out", help="JSON result file "
                                    "(default: benchmarks/results/checkers-<date>.json)."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON result to stdout."),
) -> None:
    """Run every public corpus file through keeldb's checkers in one process and time it."""
    corpora = bench.parse_corpora(corpus)
    plan = bench.plan(bench.find_testdata(testdata), corpora)
    out_path = out or bench.default_out_path()
    show = err_console if json_out else console
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=show, transient=True) as progress:
        task = progress.add_task("checking", total=len(plan.jobs))

        def on_file(res: bench.FileResult) -> None:
            progress.update(task, advance=1,
                            description=f"{res.corpus}: {res.name} {res.wall_s:.2f} s")

        result = bench.run(plan, on_file, command=_command(testdata, corpora))
    bench.write_result(result, out_path)
    if json_out:
        print_json(result)
    else:
        render(result, console)
        console.print(f"wrote {out_path}")
    tot = result["totals"]
    if tot["mismatched"]:
        first = next(m for c in result["corpora"].values() for m in c["mismatches"])
        raise CheckerMismatchError(
            f"{tot['mismatched']} of {tot['checks']} verdicts differ from the recorded ones "
            f"(first: {first}); see 'mismatches' in {out_path}")

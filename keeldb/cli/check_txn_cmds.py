"""`keeldb check txn FILE --isolation ...`: the transactional-anomaly checker on a history.

Reads keeldb's JSON-lines history format or a Jepsen EDN history (one op map per line).
Exit codes: 0 valid, 3 an anomaly the level forbids was found (or the verdict is unknown:
not a pass), 2 unreadable input or a bad option (the message names the line and what is
wrong).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from keeldb.check.history import Op, parse_jsonl
from keeldb.check.txn import ISOLATION_LEVELS, WORKLOADS, transactions
from keeldb.check.txn_edn import parse_history as parse_edn
from keeldb.cli.app import (
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VIOLATION,
    check_app,
    console,
    fail,
    print_json,
    print_table,
)
from keeldb.errors import CheckError

FORMATS: tuple[str, ...] = ("auto", "jsonl", "edn")
# Jepsen's small example histories leave out :f and :process.
EDN_DEFAULTS = {"f": "txn", "process": 0}


def detect_format(text: str) -> str:
    """`edn` if the first meaningful line starts like EDN (`{:` or `[{` or `;`), else jsonl."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith((";", "{:", "[{:", "[")) and not stripped.startswith("[\""):
            return "edn"
        return "jsonl"
    return "jsonl"


def read_history(path: Path, fmt: str = "auto") -> tuple[list[Op], str]:
    """Parse a history file; raise CheckError (with the line) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckError(f"cannot read {path}: {exc}") from exc
    real = detect_format(text) if fmt == "auto" else fmt
    if real == "edn":
        return parse_edn(text, str(path), EDN_DEFAULTS), real
    return parse_jsonl(text, str(path)), real


@check_app.command("txn")
def check_txn(
    file: Path = typer.Argument(..., help="The history file."),
    isolation: str = typer.Option("serializable", "--isolation",
                                  help=f"One of: {', '.join(ISOLATION_LEVELS)} (or any model "
                                       "of Elle's lattice, e.g. repeatable-read)."),
    workload: str = typer.Option("list-append", "--workload",
                                 help=f"One of: {', '.join(WORKLOADS)}."),
    fmt: str = typer.Option("auto", "--format", help=f"One of: {', '.join(FORMATS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check FILE for isolation anomalies; exit 0 valid, 3 violation, 2 bad input."""
    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}", EXIT_USAGE)
    if workload not in WORKLOADS:
        fail(f"--workload must be one of {', '.join(WORKLOADS)}, got {workload!r}",
             EXIT_USAGE)
    started = time.monotonic()
    try:
        history, real_fmt = read_history(file, fmt)
        result = transactions(history, isolation, workload)
    except CheckError as exc:
        fail(exc.message, EXIT_USAGE)
    seconds = time.monotonic() - started
    details = result.details
    if as_json:
        print_json({"file": str(file), "format": real_fmt, "isolation": isolation,
                    "seconds": round(seconds, 3), **result.to_json()})
    else:
        style = "green" if result.valid else "red"
        console.print(f"[bold {style}]{result.verdict}[/]  {file}  ({real_fmt}, {workload}, "
                      f"{isolation}, {details['txn_count']} txns, {details['edge_count']} "
                      f"edges, {seconds:.2f} s)", highlight=False)
        if not result.valid:
            console.print(result.explanation, highlight=False, markup=False)
        if details["found_types"]:
            print_table("isolation levels", ("level", "holds", "violated by"),
                        [(level, "no" if bad else "yes", ", ".join(bad))
                         for level, bad in details["levels"].items()])
    raise typer.Exit(EXIT_OK if result.valid else EXIT_VIOLATION)

"""The typer apps every command module registers on, and the shared output helpers.

Pattern (DESIGN.md house rule 12): verbs as subcommands, long flags, human tables by default,
`--json` for scripts, exit codes 0 ok / 1 operating error / 2 usage error / 3 violation found,
one-line errors, tracebacks only with `--debug`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from keeldb.errors import UsageError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VIOLATION = 3

app = typer.Typer(
    name="keeldb",
    help="keeldb: an embedded, replicated, transactional key-value store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
check_app = typer.Typer(help="Check histories: linearizability and transactional anomalies.",
                        no_args_is_help=True)
bench_app = typer.Typer(help="Run side-by-side benchmarks and write their results.",
                        no_args_is_help=True)
app.add_typer(check_app, name="check")
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class _State:
    debug = False


state = _State()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    state.debug = debug


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print a one-line error and exit with `code`."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def split_choices(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma-separated option ("" or "all" = every choice), deduplicated in order; an unknown
    name is a UsageError listing the choices."""
    if text.strip() in ("", "all"):
        return allowed
    names = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [x for x in names if x not in allowed]
    if unknown:
        raise UsageError(f"unknown {what} {', '.join(unknown)}; "
                         f"choose from {', '.join(allowed)} or 'all'")
    return names


def show_bench_result(result: dict[str, Any], out_path: Any, json_out: bool,
                      render: Callable[[dict[str, Any], Console], None]) -> None:
    """A benchmark's result, already written to `out_path`: as JSON on stdout, or as tables."""
    if json_out:
        print_json(result)
    else:
        render(result, console)
        console.print(f"wrote {out_path}")


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console.print(table)


def show_bytes(data: bytes) -> str:
    """Render bytes for humans: text when printable UTF-8, else a hex literal."""
    try:
        text = data.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "0x" + data.hex()


def parse_bytes(text: str) -> bytes:
    """Parse a CLI key/value: `0x...` is hex, anything else is UTF-8 text."""
    if text.startswith("0x") and len(text) > 2:
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            pass
    return text.encode("utf-8")

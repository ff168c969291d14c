"""Entry point of the `keeldb` command: imports every command module, maps errors to exits."""

from __future__ import annotations

import importlib
import sys

import typer

from keeldb.cli.app import EXIT_ERROR, EXIT_USAGE, app, err_console, state
from keeldb.errors import KeeldbError, UsageError

# Each module registers its commands on keeldb.cli.app's typer apps when imported.
COMMAND_MODULES: tuple[str, ...] = (
    "keeldb.cli.storage_cmds",
    "keeldb.cli.bench_cmds",
    "keeldb.cli.bench_check_cmds",
    "keeldb.cli.check_linear_cmds",
    "keeldb.cli.check_txn_cmds",
    "keeldb.cli.sim_cmds",
    "keeldb.cli.node_cmds",
    "keeldb.cli.serve_cmds",
    "keeldb.cli.cluster_cmds",
    "keeldb.cli.bench_cluster_cmds",
    "keeldb.cli.bench_txn_cmds",
)


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module
                raise


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (also used by `python -m keeldb`)."""
    _load_commands()
    args = sys.argv[1:] if argv is None else argv
    try:
        # Without standalone mode click returns the exit code (typer.Exit) instead of raising.
        rc = app(args=args, prog_name="keeldb", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        return EXIT_ERROR
    except Exception as exc:  # click usage errors and keeldb operating errors
        # typer vendors its own click: recognise its usage errors by shape, not by class.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return EXIT_USAGE if code else 0
        if isinstance(exc, KeeldbError) and not state.debug:
            err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
        raise
    return int(rc) if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""`keeldb node ...`: run one node as a real process and inject link faults through its admin port.

    keeldb node run --system register --id n1 --peers n1=127.0.0.1:7001 --data ./n1
    keeldb node status --admin 127.0.0.1:7101
    keeldb node partition --admin 127.0.0.1:7101 --drop-to n2 --drop-from n2
    keeldb node isolate --admin 127.0.0.1:7101
    keeldb node heal --admin 127.0.0.1:7101
"""

from __future__ import annotations

from typing import Any

import typer

from keeldb.cli.app import EXIT_USAGE, app, console, fail, print_json, print_table
from keeldb.errors import KeeldbError

node_app = typer.Typer(help="Run a node as a real process; inject link faults via its admin port.",
                       no_args_is_help=True)
app.add_typer(node_app, name="node")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        fail(f"--admin must be HOST:PORT, got {text!r}", EXIT_USAGE)
    return host, int(port)


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _show_faults(faults: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(faults)
        return
    print_table("link faults", ["fault", "peers / value"],
                [(k, ", ".join(map(str, v)) if isinstance(v, list) else v)
                 for k, v in sorted(faults.items())])


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except KeeldbError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"cannot reach the admin port: {exc.strerror or exc}; is the node running?")


@node_app.command("run", context_settings={"allow_extra_args": True,
                                           "ignore_unknown_options": True})
def run(ctx: typer.Context) -> None:
    """Run one node in the foreground (options as `python -m keeldb.runtime.real.runner`)."""
    from keeldb.runtime.real import runner

    raise typer.Exit(runner.main(list(ctx.args)))


@node_app.command("status")
def status(admin: str = typer.Option(..., "--admin", help="the node's admin HOST:PORT"),
           as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Show a node's id, ports, link faults and transport counters."""
    from keeldb.runtime.real import admin as admin_api

    answer = _call(admin_api.status, _address(admin))
    if as_json:
        print_json(answer)
        return
    rows = [(k, v) for k, v in sorted(answer.items()) if not isinstance(v, (dict, list))]
    print_table("node status", ["field", "value"], rows)
    for key, value in sorted(answer.items()):
        if isinstance(value, dict):
            console.print(f"[bold]{key}[/]: {value}", highlight=False)


@node_app.command("partition")
def partition(
    admin: str = typer.Option(..., "--admin", help="the node's admin HOST:PORT"),
    drop_to: str = typer.Option("", "--drop-to", help="peer ids whose outgoing traffic is dropped"),
    drop_from: str = typer.Option("", "--drop-from", help="peer ids whose incoming traffic is dropped"),
    delay_to: str = typer.Option("", "--delay-to", help="peer ids whose outgoing traffic is delayed"),
    delay_from: str = typer.Option("", "--delay-from", help="peer ids whose incoming traffic is delayed"),
    delay_ms: int = typer.Option(0, "--delay-ms", help="delay in milliseconds"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Replace the node's link faults (drop or delay traffic to/from the given peers)."""
    from keeldb.runtime.real import admin as admin_api

    faults = _call(admin_api.partition, _address(admin), drop_to=_ids(drop_to),
                   drop_from=_ids(drop_from), delay_to=_ids(delay_to),
                   delay_from=_ids(delay_from), delay_ms=delay_ms)
    _show_faults(faults, as_json)


@node_app.command("isolate")
def isolate(admin: str = typer.Option(..., "--admin", help="the node's admin HOST:PORT"),
            as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Cut the node off from every peer, both directions."""
    from keeldb.runtime.real import admin as admin_api

    _show_faults(_call(admin_api.isolate, _address(admin)), as_json)


@node_app.command("heal")
def heal(admin: str = typer.Option(..., "--admin", help="the node's admin HOST:PORT"),
         as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Clear every link fault of the node."""
    from keeldb.runtime.real import admin as admin_api

    _show_faults(_call(admin_api.heal, _address(admin)), as_json)

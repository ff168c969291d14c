"""`keeldb check linear FILE --model ...`: the linearizability checker on a history file.

Exit codes: 0 linearizable, 3 not linearizable or unknown (the search gave up: not a pass),
2 unreadable input or bad option (the message names the line and what is wrong).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from keeldb import limits
from keeldb.check.jepsen_log import FORMATS, detect_format, parse_history
from keeldb.check.linear import check_operations, pair_history
from keeldb.check.models import MODEL_NAMES, model_by_name
from keeldb.check.timeline import render_html
from keeldb.cli.app import EXIT_OK, EXIT_USAGE, EXIT_VIOLATION, check_app, console, fail, print_json
from keeldb.errors import CheckError


def _model_options(model: str, fmt: str, initial: str | None, nil_read: str,
                   failed_cas: str) -> dict[str, Any]:
    """Model constructor options from the flags; `auto` picks each format's convention."""
    opts: dict[str, Any] = {}
    if initial is not None:
        if model not in ("register", "cas-register", "multi-register"):
            fail(f"--initial applies to register, cas-register and multi-register, not {model}",
                 EXIT_USAGE)
        try:
            opts["initial"] = json.loads(initial)
        except json.JSONDecodeError:
            fail(f"--initial must be JSON (e.g. 0, null, '{{\"x\": 0}}'), got {initial!r}",
                 EXIT_USAGE)
    if model in ("register", "cas-register"):
        # Jepsen EDN: a nil read matches anything; Porcupine's etcd logs: nil means empty.
        opts["nil_read_any"] = nil_read == "any" or (nil_read == "auto" and fmt == "edn")
        # Porcupine's etcd logs: a failed cas says the value was not `from`.
        if failed_cas == "auto":
            failed_cas = "not-from" if fmt == "jepsen-log" else "no-effect"
        opts["failed_cas"] = failed_cas
    return opts


@check_app.command("linear")
def check_linear(
    file: Path = typer.Argument(..., help="The history file."),
    model: str = typer.Option("cas-register", "--model",
                              help=f"One of: {', '.join(MODEL_NAMES)}."),
    fmt: str = typer.Option("auto", "--format", help=f"One of: {', '.join(FORMATS)}."),
    html: Path | None = typer.Option(None, "--html", help="Write an HTML/SVG timeline here."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    initial: str | None = typer.Option(None, "--initial",
                                       help="Initial state as JSON (registers: null)."),
    nil_read: str = typer.Option("auto", "--nil-read",
                                 help="auto|any|empty: what a read of nil means (auto: any "
                                      "for EDN, empty otherwise)."),
    failed_cas: str = typer.Option("auto", "--failed-cas",
                                   help="auto|no-effect|not-from (auto: not-from for "
                                        "jepsen-log, no-effect otherwise)."),
    steps_max: int = typer.Option(limits.linear_search_steps_max, "--steps-max",
                                  help="Search steps per part before answering unknown."),
) -> None:
    """Check that FILE is linearizable under --model; exit 0 valid, 3 violation, 2 bad input."""
    if model not in MODEL_NAMES:
        fail(f"--model must be one of {', '.join(MODEL_NAMES)}, got {model!r}", EXIT_USAGE)
    if nil_read not in ("auto", "any", "empty"):
        fail(f"--nil-read must be auto, any or empty, got {nil_read!r}", EXIT_USAGE)
    if failed_cas not in ("auto", "no-effect", "not-from"):
        fail(f"--failed-cas must be auto, no-effect or not-from, got {failed_cas!r}",
             EXIT_USAGE)
    if steps_max < 1:
        fail(f"--steps-max must be at least 1, got {steps_max}", EXIT_USAGE)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}", EXIT_USAGE)
    try:
        real_fmt = detect_format(text) if fmt == "auto" else fmt
        history = parse_history(text, real_fmt, str(file))
        m = model_by_name(model, **_model_options(model, real_fmt, initial, nil_read,
                                                  failed_cas))
        ops = pair_history(history)
        result, _ = check_operations(ops, m, steps_max)
    except CheckError as exc:
        fail(exc.message, EXIT_USAGE)
    if html is not None:
        html.write_text(render_html(ops, result, m, title=file.name), encoding="utf-8")
    if as_json:
        print_json({"file": str(file), "format": real_fmt, **result.to_json()})
    else:
        style = "green" if result.valid else "red"
        console.print(f"[bold {style}]{result.verdict}[/]  {file}  ({real_fmt}, model "
                      f"{m.name}, {len(ops)} ops, {result.details['steps']} steps)",
                      highlight=False)
        if not result.valid:
            console.print(result.explanation, highlight=False, markup=False)
        if html is not None:
            console.print(f"timeline written to {html}", highlight=False)
    raise typer.Exit(EXIT_OK if result.valid else EXIT_VIOLATION)

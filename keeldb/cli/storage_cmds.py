"""Storage commands: `keeldb put|get|del|scan --path DIR`, `keeldb stats PATH`,
`keeldb check-store PATH`.

Each command opens the embedded database for the duration of one call (taking the directory
lock), so it fails with a one-line `LockedError` message while another process has it open.
Keys and values on the command line are UTF-8 text, or hex when written `0x...`; output shows
them the same way (text when printable, else `0x` hex), so what `scan` prints can be passed back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from keeldb import limits
from keeldb.cli.app import app, console, parse_bytes, print_json, print_table, show_bytes
from keeldb.errors import CorruptionError, NotFoundError

if TYPE_CHECKING:
    from keeldb.embedded import DB
    from keeldb.storage.engine import VerifyReport

# Verification with at least this many files shows a progress bar (on a terminal).
PROGRESS_FILES_MIN = 8

_PATH_HELP = "Directory of the store."
_JSON_HELP = "Print JSON for scripts instead of a table."


@contextmanager
def _opened(path: Path, *, create: bool = False, sync: str = "batch") -> Iterator[DB]:
    """Open the store at `path` for one command; a missing store is an operating error."""
    from keeldb.embedded import open as open_db  # lazy: keeps `keeldb --help` fast

    if not create and not path.is_dir():
        raise NotFoundError(
            f"no store at {str(path)!r}; create one with `keeldb put --path {path} KEY VALUE`"
        )
    db = open_db(str(path), sync=sync, create=create)
    try:
        yield db
    finally:
        db.close()


def _pair_json(key: bytes, value: bytes | None) -> dict[str, Any]:
    return {"key": show_bytes(key), "value": None if value is None else show_bytes(value)}


# --- put / get / del ------------------------------------------------------------------------


@app.command("put")
def put_cmd(
    key: str = typer.Argument(..., help="Key: UTF-8 text, or hex as 0x..."),
    value: str = typer.Argument(..., help="Value: UTF-8 text, or hex as 0x..."),
    path: Path = typer.Option(..., "--path", help=_PATH_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Write VALUE under KEY (fsynced before the command returns); creates the store."""
    k, v = parse_bytes(key), parse_bytes(value)
    with _opened(path, create=True, sync="always") as db:
        db.put(k, v)
    if as_json:
        print_json({"ok": True, **_pair_json(k, v)})
    else:
        console.print(f"put {show_bytes(k)} ({len(v)} bytes)", highlight=False, markup=False)


@app.command("get")
def get_cmd(
    key: str = typer.Argument(..., help="Key: UTF-8 text, or hex as 0x..."),
    path: Path = typer.Option(..., "--path", help=_PATH_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Print the value of KEY; exit 1 when it is absent."""
    k = parse_bytes(key)
    with _opened(path) as db:
        value = db.get(k)
    if as_json:
        print_json({"found": value is not None, **_pair_json(k, value)})
    elif value is not None:
        sys.stdout.write(show_bytes(value) + "\n")
    if value is None:  # a typed error, so `keeldb.cli.main` prints one line and exits 1
        raise NotFoundError(f"key {show_bytes(k)!r} not found in {str(path)!r}")


@app.command("del")
def del_cmd(
    key: str = typer.Argument(..., help="Key: UTF-8 text, or hex as 0x..."),
    path: Path = typer.Option(..., "--path", help=_PATH_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Delete KEY (deleting an absent key is not an error)."""
    k = parse_bytes(key)
    with _opened(path, sync="always") as db:
        existed = db.get(k) is not None
        db.delete(k)
    if as_json:
        print_json({"ok": True, "key": show_bytes(k), "existed": existed})
    else:
        what = "deleted" if existed else "deleted (was absent)"
        console.print(f"{what} {show_bytes(k)}", highlight=False, markup=False)


# --- scan ------------------------------------------------------------------------------------


@app.command("scan")
def scan_cmd(
    path: Path = typer.Option(..., "--path", help=_PATH_HELP),
    start: str | None = typer.Option(None, "--start", help="First key (inclusive)."),
    end: str | None = typer.Option(None, "--end", help="Stop before this key (exclusive)."),
    reverse: bool = typer.Option(False, "--reverse", help="Descending key order."),
    limit: int | None = typer.Option(
        None, "--limit", min=0, max=limits.scan_limit_max, help="Print at most N pairs."
    ),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Print the pairs with START <= key < END in key order.

    The table shows at most `limits.cli_table_rows_max` rows (a table is rendered in memory);
    `--json` streams any number of pairs as one JSON array.
    """
    lo = None if start is None else parse_bytes(start)
    hi = None if end is None else parse_bytes(end)
    with _opened(path) as db:
        pairs = db.scan(start=lo, end=hi, reverse=reverse, limit=limit)
        if as_json:
            _stream_json(pairs)
        else:
            _print_scan_table(pairs, title=f"scan of {path}")


def _stream_json(pairs: Iterator[tuple[bytes, bytes]]) -> None:
    """Write a JSON array one pair at a time: memory stays bounded whatever the scan size."""
    out = sys.stdout
    out.write("[")
    for i, (k, v) in enumerate(pairs):
        out.write(("," if i else "") + "\n  " + json.dumps(_pair_json(k, v), sort_keys=True))
    out.write("\n]\n")


def _print_scan_table(pairs: Iterator[tuple[bytes, bytes]], *, title: str) -> None:
    rows: list[tuple[str, str]] = []
    more = False
    for k, v in pairs:
        if len(rows) == limits.cli_table_rows_max:
            more = True
            break
        rows.append((show_bytes(k), show_bytes(v)))
    print_table(title, ["key", "value"], rows)
    note = f"{len(rows)} pairs"
    if more:
        note += (f"; stopped at cli_table_rows_max={limits.cli_table_rows_max}, "
                 "use --limit/--start to page or --json to stream all")
    console.print(note, highlight=False, markup=False)


# --- stats -----------------------------------------------------------------------------------


@app.command("stats")
def stats_cmd(
    path: Path = typer.Argument(..., help=_PATH_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Per-level files and bytes, amplification, bloom filter and cache counters."""
    with _opened(path) as db:
        stats = db.stats()
    data = dataclasses.asdict(stats)
    if as_json:
        print_json(data)
        return
    levels = data.pop("levels")
    deepest = max((lv["level"] for lv in levels if lv["files"]), default=0)
    print_table(
        f"levels of {path}",
        ["level", "files", "bytes"],
        [(lv["level"], lv["files"], lv["bytes"]) for lv in levels if lv["level"] <= deepest],
    )
    # Counters (reads, bytes written, cache and bloom figures) count since this open.
    print_table("counters since open", ["metric", "value"],
                [(k, _fmt(v)) for k, v in data.items()])


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# --- check-store -----------------------------------------------------------------------------

_FILE_IN_MESSAGE = re.compile(r"\b(\d+\.(?:sst|log)|MANIFEST(?:\.tmp)?)\b")
_OFFSET_IN_MESSAGE = re.compile(r"\boffset (\d+)")


def _problem(message: str) -> dict[str, Any]:
    """Split a verify problem (a message naming the file and offset) into JSON fields."""
    file = _FILE_IN_MESSAGE.search(message)
    offset = _OFFSET_IN_MESSAGE.search(message)
    return {
        "file": file.group(1) if file else "",
        "offset": int(offset.group(1)) if offset else -1,
        "message": message,
    }


def _verify(path: Path, show_progress: bool) -> VerifyReport:
    """Verify without opening the database: recovery would modify the files being checked
    (replay the log into a table, cut a torn tail), and a corrupt log would stop it."""
    from keeldb.runtime.real.disk import RealDisk
    from keeldb.storage.manifest import verify_store

    disk = RealDisk(str(path), create=False)
    if not show_progress:
        return verify_store(disk)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("verifying {task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        progress.add_task(str(path), total=None)
        return verify_store(disk)


@app.command("check-store")
def check_store_cmd(
    path: Path = typer.Argument(..., help=_PATH_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Read the manifest, every table block and every log record and verify every checksum.

    Does not open (and so never modifies) the store; run it while no process writes to it.
    Exit 0 when clean; exit 1 with one line per problem (file and offset) when corrupt.
    """
    if not path.is_dir():
        raise NotFoundError(f"no store at {str(path)!r}; check the path")
    file_count = sum(1 for e in os.scandir(path) if e.is_file())
    show_progress = not as_json and console.is_terminal and file_count >= PROGRESS_FILES_MIN
    report = _verify(path, show_progress)
    problems = [_problem(p) for p in report.problems]
    if as_json:
        print_json({"ok": not problems, "files_checked": report.files_checked,
                    "blocks_checked": report.blocks_checked,
                    "entries_checked": report.entries_checked, "problems": problems})
    else:
        for p in problems:
            console.print(f"CORRUPT {p['file'] or '?'} at offset {p['offset']}: {p['message']}",
                          highlight=False, markup=False, soft_wrap=True)
        verdict = "clean" if not problems else f"{len(problems)} problem(s)"
        console.print(
            f"{path}: {report.files_checked} files, {report.blocks_checked} blocks, "
            f"{report.entries_checked} entries checked, {verdict}",
            highlight=False, markup=False, soft_wrap=True)
    if problems:  # exit 1 through the typed error
        raise CorruptionError(
            f"{len(problems)} problem(s) in {str(path)!r}; restore the named files from a "
            "backup or re-create the store",
            path=str(problems[0]["file"]), offset=int(problems[0]["offset"]),
        )

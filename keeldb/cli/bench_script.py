"""The shared body of the `benchmarks/<name>.py` entry scripts: `run` forwards to
`keeldb bench <name>`, `report FILE` prints a result file as the Markdown of docs/benchmarks.md."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(argv: list[str], command: str, markdown: Callable[[dict[str, Any]], str],
         usage: str) -> int:
    if argv[:1] == ["run"]:
        from keeldb.cli.main import main as keeldb_main

        return keeldb_main(["bench", command, *argv[1:]])
    if len(argv) == 2 and argv[0] == "report":
        sys.stdout.write(markdown(json.loads(Path(argv[1]).read_text())))
        return 0
    sys.stderr.write(usage)
    return 2

"""Documented entry points of the cluster benchmark (the code lives in keeldb.bench.cluster).

    python benchmarks/cluster.py run [OPTIONS]    same as `keeldb bench cluster [OPTIONS]`
    python benchmarks/cluster.py report FILE      print FILE's tables as Markdown
                                                  (the form used in docs/benchmarks.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:
        from keeldb.cli.main import main as keeldb_main

        return keeldb_main(["bench", "cluster", *argv[1:]])
    if len(argv) == 2 and argv[0] == "report":
        from keeldb.bench.cluster import markdown

        sys.stdout.write(markdown(json.loads(Path(argv[1]).read_text())))
        return 0
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Documented entry points of the storage benchmark (the code lives in keeldb.bench).

    python benchmarks/storage.py run [OPTIONS]    same as `keeldb bench storage [OPTIONS]`
    python benchmarks/storage.py report FILE      print FILE's tables as Markdown
                                                  (the form used in docs/benchmarks.md)
"""

from __future__ import annotations

import sys

from keeldb.cli.bench_script import main

if __name__ == "__main__":
    from keeldb.bench.report import markdown

    sys.exit(main(sys.argv[1:], "storage", markdown, __doc__ or ""))

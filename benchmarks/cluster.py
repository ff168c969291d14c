"""Documented entry points of the cluster benchmark (the code lives in keeldb.bench.cluster).

    python benchmarks/cluster.py run [OPTIONS]    same as `keeldb bench cluster [OPTIONS]`
    python benchmarks/cluster.py report FILE      print FILE's tables as Markdown
                                                  (the form used in docs/benchmarks.md)
"""

from __future__ import annotations

import sys

from keeldb.cli.bench_script import main

if __name__ == "__main__":
    from keeldb.bench.cluster import markdown

    sys.exit(main(sys.argv[1:], "cluster", markdown, __doc__ or ""))

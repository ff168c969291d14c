"""Side-by-side benchmarks run by `keeldb bench`.

`storage` (the runner and its report), `workloads` (the db_bench-style loops run inside one
fresh child process per engine and repeat) and `engines` (one small adapter per engine:
keeldb-lsm, sqlite3, lmdb, rocksdict). Nothing here is imported by the engine itself.
"""

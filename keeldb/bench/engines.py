"""One small adapter per benchmarked engine, each using that engine's natural fastest API.

Every adapter offers the same calls (batched write, single put, point read, seek + next N,
a put usable from a second thread) and states its exact durability settings, so the runner
can print them beside the numbers. Durability is matched across engines:

- non-sync workloads: every engine hands its log to the OS without fsync (survives a process
  crash, not an OS crash);
- `fillsync`: every engine fsyncs each write before acknowledging it.

Peers are imported lazily: a missing optional package only makes `available()` say why.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

Pair = tuple[bytes, bytes]
Getter = Callable[[bytes], "bytes | None"]
Putter = Callable[[bytes, bytes], None]

# rocksdict's bloom filter, as a user tuning RocksDB for point reads would set it.
ROCKSDB_BLOOM_BITS_PER_KEY = 10
# LMDB needs its map size up front; it is a sparse reservation, not memory.
LMDB_MAP_BYTES_MIN = 1 << 30
LMDB_MAP_BYTES_PER_KEY = 4096


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class BenchEngine(abc.ABC):
    """The calls the workloads make. Subclasses bind them to one engine."""

    name = ""
    module = ""  # import name whose absence makes the engine unavailable
    extra = ""  # how to install it

    def __init__(self) -> None:
        self.path: Path | None = None
        self.sync = False

    @abc.abstractmethod
    def open(self, path: Path, sync: bool) -> None:
        ...

    @abc.abstractmethod
    def write_batch(self, pairs: list[Pair]) -> None:
        """Write `pairs` atomically in one batch/transaction."""
        ...

    @abc.abstractmethod
    def putter(self) -> Putter:
        """A single-put callable for the calling thread (one put = one commit)."""
        ...

    def thread_putter(self) -> tuple[Putter, Callable[[], None]]:
        """A put callable for a second thread, and the call that releases it."""
        return self.putter(), lambda: None

    @abc.abstractmethod
    def reader(self) -> Getter:
        """A point-read callable on a fresh read view (workloads renew it every chunk)."""
        ...

    def end_reads(self) -> None:
        """Drop the read view of `reader()` (LMDB: a held read txn stops page reuse)."""
        return None

    @abc.abstractmethod
    def scan(self, start: bytes, count: int) -> list[Pair]:
        """Seek to the first key >= start and return the next `count` pairs."""
        ...

    @abc.abstractmethod
    def close(self) -> None:
        ...

    @abc.abstractmethod
    def settings(self) -> dict[str, str]:
        """The exact configuration in force, durability first."""
        ...

    @abc.abstractmethod
    def versions(self) -> dict[str, str]:
        ...

    def stats(self) -> dict[str, Any] | None:
        """Engine statistics after the run, when the engine reports any."""
        return None


class KeeldbEngine(BenchEngine):
    """keeldb's embedded LSM through the public API (`keeldb.open`)."""

    name = "keeldb-lsm"
    module = "keeldb.embedded"
    extra = "part of keeldb"

    def __init__(self) -> None:
        super().__init__()
        self._db: Any = None

    def open(self, path: Path, sync: bool) -> None:
        from keeldb.embedded import open as keeldb_open

        self.path, self.sync = path, sync
        self._db = keeldb_open(str(path), sync="always" if sync else "never")

    def write_batch(self, pairs: list[Pair]) -> None:
        with self._db.write_batch() as wb:
            put = wb.put
            for key, value in pairs:
                put(key, value)

    def putter(self) -> Putter:
        put: Putter = self._db.put
        return put

    def reader(self) -> Getter:
        get: Getter = self._db.get
        return get

    def scan(self, start: bytes, count: int) -> list[Pair]:
        return list(self._db.scan(start=start, limit=count))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def settings(self) -> dict[str, str]:
        return {
            "durability": 'keeldb.open(path, sync="always")' if self.sync
            else 'keeldb.open(path, sync="never")',
            "options": "defaults (memtable, block cache, bloom 10 bits/key, compaction)",
            "batch": "db.write_batch() context, wb.put per key",
            "read": "db.get per key",
            "scan": "list(db.scan(start=key, limit=100))",
        }

    def versions(self) -> dict[str, str]:
        from keeldb import __version__

        # The engine changes faster than its version number: name the exact source measured.
        digest = hashlib.sha256()
        root = Path(__file__).resolve().parent.parent  # the keeldb package
        for src in sorted(root.rglob("*.py")):
            digest.update(src.relative_to(root).as_posix().encode() + b"\0" + src.read_bytes())
        return {"keeldb": __version__, "keeldb_source_sha256": digest.hexdigest()[:16]}

    def stats(self) -> dict[str, Any] | None:
        if self._db is None:
            return None
        st = self._db.stats()
        if dataclasses.is_dataclass(st) and not isinstance(st, type):
            return dataclasses.asdict(st)
        return dict(st)


class SqliteEngine(BenchEngine):
    """stdlib sqlite3 in WAL mode, one clustered table `kv(k BLOB PRIMARY KEY, v BLOB)`."""

    name = "sqlite3"
    module = "sqlite3"
    extra = "Python standard library"
    _SQL_PUT = "INSERT OR REPLACE INTO kv(k, v) VALUES (?, ?)"
    _SQL_GET = "SELECT v FROM kv WHERE k = ?"
    _SQL_SCAN = "SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT ?"
    _BUSY_TIMEOUT_S = 30.0

    def __init__(self) -> None:
        super().__init__()
        self._conn: sqlite3.Connection | None = None
        self._file: Path | None = None

    def _connect(self) -> sqlite3.Connection:
        assert self._file is not None
        conn = sqlite3.connect(self._file, isolation_level=None, check_same_thread=False,
                               timeout=self._BUSY_TIMEOUT_S)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.sync else 'NORMAL'}")
        return conn

    def open(self, path: Path, sync: bool) -> None:
        self.path, self.sync = path, sync
        path.mkdir(parents=True, exist_ok=True)
        self._file = path / "kv.sqlite"
        self._conn = self._connect()
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")

    def write_batch(self, pairs: list[Pair]) -> None:
        assert self._conn is not None
        self._conn.execute("BEGIN")
        self._conn.executemany(self._SQL_PUT, pairs)
        self._conn.execute("COMMIT")

    def _put_on(self, conn: sqlite3.Connection) -> Putter:
        execute, sql = conn.execute, self._SQL_PUT

        def put(key: bytes, value: bytes) -> None:
            execute(sql, (key, value))  # autocommit: one transaction per put

        return put

    def putter(self) -> Putter:
        assert self._conn is not None
        return self._put_on(self._conn)

    def thread_putter(self) -> tuple[Putter, Callable[[], None]]:
        conn = self._connect()  # SQLite: one connection per thread
        return self._put_on(conn), conn.close

    def reader(self) -> Getter:
        assert self._conn is not None
        execute, sql = self._conn.execute, self._SQL_GET

        def get(key: bytes) -> bytes | None:
            row = execute(sql, (key,)).fetchone()
            return None if row is None else bytes(row[0])

        return get

    def scan(self, start: bytes, count: int) -> list[Pair]:
        assert self._conn is not None
        return self._conn.execute(self._SQL_SCAN, (start, count)).fetchall()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def settings(self) -> dict[str, str]:
        return {
            "durability": "PRAGMA journal_mode=WAL; PRAGMA synchronous="
            + ("FULL (fsync of the WAL at every commit)" if self.sync
               else "NORMAL (WAL written per commit, fsync only at checkpoints)"),
            "options": "defaults (page cache 2 MB, autocheckpoint 1000 pages); "
            "table kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID",
            "batch": "BEGIN; executemany(INSERT OR REPLACE); COMMIT",
            "read": "SELECT v FROM kv WHERE k = ?",
            "scan": "SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT 100",
        }

    def versions(self) -> dict[str, str]:
        return {"sqlite": sqlite3.sqlite_version}


class LmdbEngine(BenchEngine):
    """py-lmdb: one copy-on-write B+tree in a memory map; one read txn per read chunk."""

    name = "lmdb"
    module = "lmdb"
    extra = "pip install 'keeldb[bench]'"

    def __init__(self) -> None:
        super().__init__()
        self._env: Any = None
        self._rtxn: Any = None
        self._map_bytes = LMDB_MAP_BYTES_MIN

    def size_for(self, n_keys: int) -> None:
        self._map_bytes = max(LMDB_MAP_BYTES_MIN, n_keys * LMDB_MAP_BYTES_PER_KEY)

    def open(self, path: Path, sync: bool) -> None:
        import lmdb

        self.path, self.sync = path, sync
        path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=self._map_bytes, sync=sync, metasync=sync,
                              writemap=False, max_dbs=0)

    def write_batch(self, pairs: list[Pair]) -> None:
        with self._env.begin(write=True) as txn:
            txn.cursor().putmulti(pairs)

    def putter(self) -> Putter:
        begin = self._env.begin

        def put(key: bytes, value: bytes) -> None:
            with begin(write=True) as txn:  # one write transaction per put
                txn.put(key, value)

        return put

    def reader(self) -> Getter:
        self.end_reads()
        self._rtxn = self._env.begin(buffers=False)
        get: Getter = self._rtxn.get
        return get

    def end_reads(self) -> None:
        if self._rtxn is not None:
            self._rtxn.abort()
            self._rtxn = None

    def scan(self, start: bytes, count: int) -> list[Pair]:
        with self._env.begin() as txn:
            cur = txn.cursor()
            if not cur.set_range(start):
                return []
            return list(itertools.islice(cur.iternext(), count))

    def close(self) -> None:
        self.end_reads()
        if self._env is not None:
            self._env.close()
            self._env = None

    def settings(self) -> dict[str, str]:
        return {
            "durability": ("lmdb.open(sync=True, metasync=True): fsync at every commit"
                           if self.sync else
                           "lmdb.open(sync=False, metasync=False): pages written per commit, "
                           "no fsync"),
            "options": f"writemap=False, map_size={self._map_bytes} (sparse)",
            "batch": "one write txn, cursor.putmulti(pairs)",
            "read": "txn.get per key, one read txn per 1000 reads",
            "scan": "cursor.set_range(key) + 100 x iternext in one read txn",
        }

    def versions(self) -> dict[str, str]:
        import lmdb

        return {"py-lmdb": _dist_version("lmdb"),
                "liblmdb": ".".join(str(p) for p in lmdb.version())}


class RocksdictEngine(BenchEngine):
    """rocksdict (RocksDB through Rust bindings), raw bytes mode, 10-bit bloom filter."""

    name = "rocksdict"
    module = "rocksdict"
    extra = "pip install 'keeldb[bench]'"

    def __init__(self) -> None:
        super().__init__()
        self._db: Any = None

    def open(self, path: Path, sync: bool) -> None:
        from rocksdict import BlockBasedOptions, Options, Rdict, WriteOptions

        self.path, self.sync = path, sync
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_bloom_filter(ROCKSDB_BLOOM_BITS_PER_KEY, False)
        opts.set_block_based_table_factory(table)
        self._db = Rdict(str(path), opts)
        wopts = WriteOptions()
        wopts.sync = sync
        self._db.set_write_options(wopts)

    def write_batch(self, pairs: list[Pair]) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        put = wb.put
        for key, value in pairs:
            put(key, value)
        self._db.write(wb)

    def putter(self) -> Putter:
        put: Putter = self._db.put
        return put

    def reader(self) -> Getter:
        get: Getter = self._db.get
        return get

    def scan(self, start: bytes, count: int) -> list[Pair]:
        return list(itertools.islice(self._db.items(from_key=start), count))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def settings(self) -> dict[str, str]:
        return {
            "durability": "WriteOptions.sync=" + (
                "True: WAL fsync before each write returns" if self.sync
                else "False (default): WAL write() per batch/put, no fsync"),
            "options": f"Options(raw_mode=True) defaults + BlockBasedOptions.set_bloom_filter("
            f"{ROCKSDB_BLOOM_BITS_PER_KEY}, False) (full filter); default block cache",
            "batch": "WriteBatch, wb.put per key, db.write(wb)",
            "read": "db.get per key",
            "scan": "islice(db.items(from_key=key), 100)",
        }

    def versions(self) -> dict[str, str]:
        out = {"rocksdict": _dist_version("rocksdict")}
        if self.path is not None:
            for opt_file in sorted(self.path.glob("OPTIONS-*")):
                for line in opt_file.read_text(errors="replace").splitlines():
                    if line.strip().startswith("rocksdb_version="):
                        out["rocksdb"] = line.split("=", 1)[1].strip()
        return out


ENGINES: dict[str, type[BenchEngine]] = {
    cls.name: cls for cls in (KeeldbEngine, SqliteEngine, LmdbEngine, RocksdictEngine)
}


def available(name: str) -> tuple[bool, str]:
    """Whether engine `name` can run here, and if not, why and how to get it."""
    cls = ENGINES[name]
    try:
        found = importlib.util.find_spec(cls.module) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return True, ""
    return False, f"{name} skipped: module {cls.module!r} is not importable ({cls.extra})"

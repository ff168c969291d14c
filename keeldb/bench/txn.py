"""`keeldb bench txn`: transaction throughput and abort rates, keeldb vs PostgreSQL.

The workload is YCSB-A-like: every transaction touches 4 distinct keys, each one read (50%)
or blindly updated with a fresh 100-byte value (50%), by default in the order generated (so a
lock-based engine can deadlock as an application's would; `--key-order sorted` touches them in
key order instead). Two key distributions:

- `low` contention: keys uniform over the whole table (`--keys`, default 100,000);
- `high` contention: keys uniform over a hot set of the first `--hot-keys` keys (default 16).

Every client thread draws its transactions from its own seeded generator, so each system and
level runs the same sequence of logical transactions per client. An aborted attempt (keeldb's
retryable `TransactionConflict`/`TransactionTooOldError`; PostgreSQL's SQLSTATE 40001
serialization failure or 40P01 deadlock) is counted and retried as a new transaction with the
same operations after a full-jitter backoff, at most `RETRIES_MAX` attempts: one retry policy
for every system. Reported per (system, level, contention): committed transactions per second,
abort rate = aborts / attempts, and p50/p99 latency of a committed transaction (from its first
attempt to its commit, retries included) and of its commit call alone.

System adapters: `EmbeddedSystem` (`keeldb.open`), `ClusterSystem` (a `keeldb.connect`
client of a running cluster; the CLI starts and stops the cluster) and `PostgresSystem` (a
throwaway `initdb` cluster in a temporary directory, stopped by PID). This module returns data;
the tables are drawn by `keeldb.cli.bench_txn_cmds`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from keeldb import limits
from keeldb.bench import txn_pg
from keeldb.errors import (
    RetryableError,
    SerializationConflict,
    TransactionConflict,
    UsageError,
)
from keeldb.txn.retry import backoff_seconds

SCHEMA = "keeldb.bench.txn/1"
EMBEDDED, CLUSTER, POSTGRES = "keeldb-embedded", "keeldb-3node", "postgresql"
SYSTEMS: tuple[str, ...] = (EMBEDDED, CLUSTER, POSTGRES)
LEVELS: tuple[str, ...] = ("read_committed", "snapshot", "serializable")
CONTENTIONS: tuple[str, ...] = ("low", "high")
KEY_ORDERS: tuple[str, ...] = ("random", "sorted")

OPS_PER_TXN = 4
READ_FRACTION = 0.5
VALUE_BYTES = 100
KEYS_DEFAULT = 100_000
KEYS_MAX = 10_000_000
HOT_KEYS_DEFAULT = 16
CLIENTS_DEFAULT = 8
CLIENTS_MAX = 64
SECONDS_DEFAULT = 3.0
SECONDS_MAX = 3600.0
TXNS_MAX = 10_000_000
RETRIES_MAX = 100  # attempts per logical transaction before it is given up
BACKOFF_MS_MIN = limits.txn_backoff_ms_min
BACKOFF_MS_MAX = 100  # shorter than `transactional`'s 1 s: a few-second point stays busy
LATENCY_SAMPLES_MAX = 200_000  # per client and point; later samples are not kept
LOAD_BATCH_KEYS = 1_000  # keys written per loading transaction


def key_of(i: int) -> bytes:
    """The i-th key of the table (the same bytes in every system)."""
    return b"user%010d" % i


Op = tuple[bytes, bytes | None]  # (key, None) reads the key; (key, value) writes it


@dataclass(frozen=True)
class Workload:
    """Which keys a transaction draws from: all `keys`, or the hot set under `high`."""

    contention: str
    keys: int = KEYS_DEFAULT
    hot_keys: int = HOT_KEYS_DEFAULT
    key_order: str = "random"  # or "sorted": every transaction touches its keys in key order

    def __post_init__(self) -> None:
        if self.contention not in CONTENTIONS:
            raise UsageError(f"contention {self.contention!r} is not one of {CONTENTIONS}")
        if self.key_order not in KEY_ORDERS:
            raise UsageError(f"--key-order {self.key_order!r} is not one of {KEY_ORDERS}")
        if not OPS_PER_TXN <= self.keys <= KEYS_MAX:
            raise UsageError(f"--keys {self.keys} must be between {OPS_PER_TXN} and "
                             f"{KEYS_MAX:,} (a transaction touches {OPS_PER_TXN} distinct keys)")
        if not OPS_PER_TXN <= self.hot_keys <= self.keys:
            raise UsageError(f"--hot-keys {self.hot_keys} must be between {OPS_PER_TXN} and "
                             f"--keys ({self.keys})")

    @property
    def key_space(self) -> int:
        return self.hot_keys if self.contention == "high" else self.keys


def make_txn(rng: random.Random, workload: Workload) -> tuple[Op, ...]:
    """One YCSB-A-like transaction: 4 distinct keys, each read or written with p = 0.5."""
    idx = rng.sample(range(workload.key_space), OPS_PER_TXN)
    if workload.key_order == "sorted":
        idx.sort()  # a global lock order: lock-based engines then never deadlock
    return tuple((key_of(i), None if rng.random() < READ_FRACTION else rng.randbytes(VALUE_BYTES))
                 for i in idx)


def client_rng(seed: int, contention: str, client: int) -> random.Random:
    """The generator of client `client`'s transactions: the same for every system and level."""
    return random.Random(f"{seed}:txn:{contention}:{client}")


# --- systems -------------------------------------------------------------------------------

class Aborted(Exception):
    """An attempt lost to a concurrent transaction; `kind` names how (for the breakdown)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Client(Protocol):
    """One connection (or thread's handle) of a system."""

    def run_txn(self, level: str, ops: Sequence[Op]) -> float:
        """Run `ops` in one transaction at `level` and commit it; return the commit call's
        seconds. Raise `Aborted` if the system aborted it (nothing of it is then written)."""
        ...

    def close(self) -> None: ...


class System(Protocol):
    name: str

    def load(self, keys: int, value_bytes: int, seed: int) -> None: ...

    def client(self) -> Client: ...

    def settings(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def keeldb_abort_kind(exc: BaseException, at_commit: bool = True) -> str | None:
    """The abort kind of a keeldb error, or None when it is not a retryable abort.

    The embedded store names the conflict (write-write, read-write); the cluster's
    TXNCONFLICT does not, so it is told apart by where it came: a read or write step (a key
    changed after the snapshot) or the commit's validation."""
    if isinstance(exc, SerializationConflict):
        return exc.kind  # write-write | read-write
    if isinstance(exc, TransactionConflict):
        return "conflict@commit" if at_commit else "conflict@step"
    if isinstance(exc, RetryableError):
        return type(exc).__name__
    return None


class _KeeldbClient:
    """Runs transactions through anything with `transaction(isolation=...)`."""

    def __init__(self, db: Any, owned: bool) -> None:
        self.db = db
        self.owned = owned  # close the handle with the client (a network connection)

    def run_txn(self, level: str, ops: Sequence[Op]) -> float:
        tx = self.db.transaction(isolation=level)
        committing = False
        try:
            for key, value in ops:
                if value is None:
                    tx.get(key)
                else:
                    tx.put(key, value)
            committing = True
            t0 = time.perf_counter()
            tx.commit()
            return time.perf_counter() - t0
        except Exception as exc:
            tx.rollback()
            kind = keeldb_abort_kind(exc, at_commit=committing)
            if kind is None:
                raise
            raise Aborted(kind) from exc

    def close(self) -> None:
        if self.owned:
            self.db.close()


def _keeldb_load(db: Any, keys: int, value_bytes: int, seed: int) -> None:
    rng = random.Random(f"{seed}:load")
    for lo in range(0, keys, LOAD_BATCH_KEYS):
        with db.transaction(isolation="read_committed") as tx:
            for i in range(lo, min(keys, lo + LOAD_BATCH_KEYS)):
                tx.put(key_of(i), rng.randbytes(value_bytes))


class EmbeddedSystem:
    """keeldb in this process (`keeldb.open`); the client threads share one `DB`."""

    name = EMBEDDED

    def __init__(self, directory: Path, sync: str = "always") -> None:
        from keeldb.embedded import open as open_db
        self.sync = sync
        self.root = Path(tempfile.mkdtemp(prefix="keeldb-bench-embedded-", dir=directory))
        self.db = open_db(str(self.root / "db"), sync=sync)

    def load(self, keys: int, value_bytes: int, seed: int) -> None:
        _keeldb_load(self.db, keys, value_bytes, seed)
        # Settle before measuring (as VACUUM ANALYZE does for PostgreSQL): otherwise the
        # compaction debt of the load runs in the background of the first points.
        self.db.compact()

    def client(self) -> Client:
        return _KeeldbClient(self.db, owned=False)

    def settings(self) -> dict[str, Any]:
        return {"sync": self.sync, "durability": f'keeldb.open(sync="{self.sync}"): every '
                "commit's batch is fsynced before the commit returns"}

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class ClusterSystem:
    """A running keeldb cluster reached with `keeldb.connect` (one connection per client)."""

    name = CLUSTER

    def __init__(self, connect: Callable[[], Any], description: dict[str, Any],
                 stop: Callable[[], None] = lambda: None) -> None:
        self._connect = connect
        self.description = description
        self._stop = stop  # stops the cluster when this benchmark started it

    def load(self, keys: int, value_bytes: int, seed: int) -> None:
        """MSET batches (one Raft entry each): on the server, transactions read and write
        the ordinary keyspace, and a transaction per batch costs a round trip per key."""
        rng = random.Random(f"{seed}:load")
        conn = self._connect()
        try:
            for lo in range(0, keys, LOAD_BATCH_KEYS):
                args: list[bytes] = [b"MSET"]
                for i in range(lo, min(keys, lo + LOAD_BATCH_KEYS)):
                    args += [key_of(i), rng.randbytes(value_bytes)]
                conn.execute(*args, write=True)
            with conn.transaction(isolation="serializable") as tx:
                got = tx.get(key_of(keys - 1))
            assert got is not None and len(got) == value_bytes, f"load not visible: {got!r}"
        finally:
            conn.close()

    def client(self) -> Client:
        return _KeeldbClient(self._connect(), owned=True)

    def settings(self) -> dict[str, Any]:
        return dict(self.description)

    def close(self) -> None:
        self._stop()


PostgresSystem = txn_pg.PostgresSystem


# --- accounting ------------------------------------------------------------------------------

@dataclass
class ClientStats:
    """What one client thread saw during one point."""

    commits: int = 0
    aborts: int = 0
    gave_up: int = 0  # logical transactions that used up RETRIES_MAX attempts
    abandoned: int = 0  # logical transactions cut off by the end of the point mid-retry
    abort_kinds: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    commit_latencies_s: list[float] = field(default_factory=list)

    def committed(self, latency_s: float, commit_s: float) -> None:
        self.commits += 1
        if len(self.latencies_s) < LATENCY_SAMPLES_MAX:
            self.latencies_s.append(latency_s)
            self.commit_latencies_s.append(commit_s)

    def aborted(self, kind: str) -> None:
        self.aborts += 1
        self.abort_kinds[kind] += 1


def run_logical(client: Client, level: str, ops: Sequence[Op], stats: ClientStats,
                rng: random.Random, *, stop: Callable[[], bool] = lambda: False,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.perf_counter) -> bool:
    """Run one logical transaction to its commit, retrying aborts; True if it committed.

    Every attempt is counted: a commit in `stats.commits`, each abort in `stats.aborts` (by
    kind). After an abort it waits a full-jitter backoff and tries again with a new
    transaction, unless `RETRIES_MAX` attempts are used up (`gave_up`) or `stop()` says the
    point is over (`abandoned`).
    """
    t0 = clock()
    for attempt in range(RETRIES_MAX):
        try:
            commit_s = client.run_txn(level, ops)
        except Aborted as exc:
            stats.aborted(exc.kind)
            if attempt + 1 >= RETRIES_MAX:
                stats.gave_up += 1
                return False
            if stop():
                stats.abandoned += 1
                return False
            sleep(backoff_seconds(attempt, rng, BACKOFF_MS_MIN, BACKOFF_MS_MAX))
            continue
        stats.committed(clock() - t0, commit_s)
        return True
    raise AssertionError("unreachable: the loop returns")


def _pct(samples: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of `samples` in milliseconds."""
    if not samples:
        return None
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] * 1000.0


def summarize_point(stats: Sequence[ClientStats], elapsed_s: float) -> dict[str, Any]:
    """Totals of a point's clients: throughput, abort rate, latency percentiles."""
    commits = sum(s.commits for s in stats)
    aborts = sum(s.aborts for s in stats)
    attempts = commits + aborts
    kinds: Counter[str] = Counter()
    for s in stats:
        kinds.update(s.abort_kinds)
    lat = [x for s in stats for x in s.latencies_s]
    clat = [x for s in stats for x in s.commit_latencies_s]
    return {
        "commits": commits, "aborts": aborts, "attempts": attempts,
        "abort_rate": aborts / attempts if attempts else None,
        "abort_kinds": dict(sorted(kinds.items())),
        "gave_up": sum(s.gave_up for s in stats),
        "abandoned": sum(s.abandoned for s in stats),
        "elapsed_s": elapsed_s,
        "txn_per_sec": commits / elapsed_s if elapsed_s > 0 else None,
        "latency_ms_p50": _pct(lat, 0.50), "latency_ms_p99": _pct(lat, 0.99),
        "commit_ms_p50": _pct(clat, 0.50), "commit_ms_p99": _pct(clat, 0.99),
        "latency_samples": len(lat),
    }


# --- one point -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PointSpec:
    system: str
    level: str
    workload: Workload
    clients: int
    seconds: float | None  # run for this long, or
    txns: int | None  # until this many logical transactions were run
    seed: int


class _Budget:
    """The end of a point: a deadline, or a count of logical transactions left to hand out."""

    def __init__(self, seconds: float | None, txns: int | None) -> None:
        assert (seconds is None) != (txns is None), "exactly one of seconds and txns"
        self.seconds, self._left = seconds, txns
        self._deadline = float("inf")
        self._lock = threading.Lock()
        self.failed = threading.Event()

    def start(self) -> None:
        if self.seconds is not None:
            self._deadline = time.perf_counter() + self.seconds

    def over(self) -> bool:
        return self.failed.is_set() or time.perf_counter() >= self._deadline

    def take(self) -> bool:
        """May this client begin another logical transaction?"""
        if self.over():
            return False
        if self._left is None:
            return True
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def run_point(system: System, spec: PointSpec) -> dict[str, Any]:
    """`spec.clients` threads, one client each, run transactions until the budget is spent."""
    budget = _Budget(spec.seconds, spec.txns)
    stats = [ClientStats() for _ in range(spec.clients)]
    errors: list[str] = []
    times: dict[str, float] = {}

    def started() -> None:  # the barrier's action: runs once, before any client goes
        budget.start()
        times["start"] = time.perf_counter()

    barrier = threading.Barrier(spec.clients, action=started)

    def worker(i: int) -> None:
        client: Client | None = None
        try:
            client = system.client()
            barrier.wait()
            gen = client_rng(spec.seed, spec.workload.contention, i)
            backoff = random.Random(f"{spec.seed}:backoff:{spec.system}:{spec.level}:"
                                    f"{spec.workload.contention}:{i}")
            while budget.take():
                run_logical(client, spec.level, make_txn(gen, spec.workload), stats[i],
                            backoff, stop=budget.over)
        except threading.BrokenBarrierError:
            pass  # another client failed to connect; its error is recorded
        except Exception as exc:
            errors.append(f"client {i}: {type(exc).__name__}: {exc}")
            budget.failed.set()
            barrier.abort()
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception as exc:
                    errors.append(f"client {i} close: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,), name=f"bench-txn-{i}")
               for i in range(spec.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - times["start"] if "start" in times else 0.0
    out = {"system": spec.system, "level": spec.level, "contention": spec.workload.contention,
           "clients": spec.clients, **summarize_point(stats, elapsed),
           "error": "; ".join(errors[:3]) or None}
    return out


# --- the run -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunConfig:
    systems: tuple[str, ...] = (EMBEDDED, POSTGRES)
    levels: tuple[str, ...] = LEVELS
    contentions: tuple[str, ...] = CONTENTIONS
    clients: int = CLIENTS_DEFAULT
    seconds: float | None = SECONDS_DEFAULT
    txns: int | None = None
    keys: int = KEYS_DEFAULT
    hot_keys: int = HOT_KEYS_DEFAULT
    key_order: str = "random"
    seed: int = 42
    dir: Path | None = None
    command: str = ""

    def __post_init__(self) -> None:
        for name, got, allowed in (("system", self.systems, SYSTEMS),
                                   ("level", self.levels, LEVELS),
                                   ("contention", self.contentions, CONTENTIONS)):
            bad = [x for x in got if x not in allowed]
            if bad or not got:
                raise UsageError(f"unknown or no {name}(s) {bad or list(got)}; choose from "
                                 f"{', '.join(allowed)}")
        if not 1 <= self.clients <= CLIENTS_MAX:
            raise UsageError(f"--clients {self.clients} must be between 1 and {CLIENTS_MAX}")
        if (self.seconds is None) == (self.txns is None):
            raise UsageError("pass exactly one of --seconds and --txns")
        if self.seconds is not None and not 0 < self.seconds <= SECONDS_MAX:
            raise UsageError(f"--seconds {self.seconds} must be in (0, {SECONDS_MAX:g}]")
        if self.txns is not None and not 1 <= self.txns <= TXNS_MAX:
            raise UsageError(f"--txns {self.txns} must be between 1 and {TXNS_MAX:,}")
        Workload("high", self.keys, self.hot_keys, self.key_order)  # validates them


@dataclass
class Event:
    """Progress for the caller: a system is loading, a point finished, a system skipped."""

    kind: str  # "load" | "point" | "skip"
    system: str
    detail: dict[str, Any] = field(default_factory=dict)


def default_out_path(now: dt.datetime | None = None) -> Path:
    day = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    return Path("benchmarks") / "results" / f"txn-{day}.json"


SystemFactory = Callable[[Path], System]


def run(config: RunConfig, factories: dict[str, SystemFactory],
        on_event: Callable[[Event], None] = lambda e: None) -> dict[str, Any]:
    """Open every system (a factory may raise `Unavailable` to skip it with a note), load the
    table into each, then run every (contention, level) point on every system in turn (the
    systems interleaved, so drift of a shared machine hits them alike). Returns the JSON-ready
    result; systems are closed at the end whatever happens."""
    from keeldb.bench.storage import machine_info
    notes: list[str] = []
    made_dir = config.dir is None
    base = Path(tempfile.mkdtemp(prefix="keeldb-bench-txn-")) if config.dir is None \
        else Path(config.dir)
    base.mkdir(parents=True, exist_ok=True)
    if made_dir:
        base.chmod(0o711)  # PostgreSQL's unprivileged user must reach its directory inside
    machine = machine_info(base)
    if machine["db_filesystem"] in ("tmpfs", "ramfs"):
        notes.append(f"data is on {machine['db_filesystem']}: fsync costs nothing there; pass "
                     "--dir on a real disk")
    started = dt.datetime.now(dt.UTC)
    systems: list[System] = []
    points: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    load_s: dict[str, float] = {}
    try:
        for name in config.systems:
            try:
                system = factories[name](base)
            except txn_pg.Unavailable as exc:
                notes.append(f"{name} skipped: {exc}")
                on_event(Event("skip", name, {"note": str(exc)}))
                continue
            systems.append(system)
            on_event(Event("load", name, {"keys": config.keys}))
            t0 = time.perf_counter()
            system.load(config.keys, VALUE_BYTES, config.seed)
            load_s[name] = time.perf_counter() - t0
            settings[name] = system.settings()
        for contention in config.contentions:
            workload = Workload(contention, config.keys, config.hot_keys, config.key_order)
            for level in config.levels:
                for system in systems:
                    spec = PointSpec(system.name, level, workload, config.clients,
                                     config.seconds, config.txns, config.seed)
                    point = run_point(system, spec)
                    points.append(point)
                    if point["error"]:
                        notes.append(f"{system.name} {level} {contention}: {point['error']}")
                    on_event(Event("point", system.name, point))
    finally:
        for system in reversed(systems):
            try:
                system.close()
            except Exception as exc:
                notes.append(f"{system.name} close failed: {type(exc).__name__}: {exc}")
        if made_dir:
            shutil.rmtree(base, ignore_errors=True)
    if hasattr(os, "getloadavg"):
        machine["loadavg_at_end"] = list(os.getloadavg())
    return {
        "schema": SCHEMA,
        "command": config.command,
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {
            "systems": list(config.systems), "systems_run": [s.name for s in systems],
            "levels": list(config.levels), "contentions": list(config.contentions),
            "clients": config.clients, "seconds": config.seconds, "txns": config.txns,
            "keys": config.keys, "hot_keys": config.hot_keys, "seed": config.seed,
            "key_order": config.key_order,
            "ops_per_txn": OPS_PER_TXN, "read_fraction": READ_FRACTION,
            "value_bytes": VALUE_BYTES, "retries_max": RETRIES_MAX,
            "backoff_ms": [BACKOFF_MS_MIN, BACKOFF_MS_MAX],
            "level_names": {"postgresql": dict(txn_pg.PG_LEVELS)},
        },
        "machine": machine,
        "settings": settings,
        "load_seconds": load_s,
        "results": points,
        "notes": notes,
    }


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, out)


def point_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The points in display order: contention, level, then system."""
    order = {n: i for i, n in enumerate(SYSTEMS)}
    lv = {n: i for i, n in enumerate(LEVELS)}
    ct = {n: i for i, n in enumerate(CONTENTIONS)}
    return sorted(result["results"], key=lambda p: (ct[p["contention"]], lv[p["level"]],
                                                    order[p["system"]]))

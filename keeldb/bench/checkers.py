"""`keeldb bench checkers`: every public corpus file through keeldb's checkers, in one process.

The corpora lie beside the repository (`shared/testdata`, see `find_testdata`):

- `porcupine/` and `knossos/`: Jepsen/Porcupine histories whose expected verdict (and model)
  `verdicts.json` records; checked with `keeldb.check.linear` exactly as the conformance tests
  `tests/conformance/test_{porcupine,knossos}_corpus.py` do (same models, same options);
- `elle/`: the example histories under `histories/` (verdicts from the corpus README, held in
  `ELLE_HISTORIES`) and `elle_unit_cases.json` (69 asserted checks and 5 helper checks, the
  matching rules of `tests/conformance/test_elle_corpus.py`), checked with `keeldb.check.txn`.

Each file is timed twice over (wall `perf_counter`, CPU `process_time`), split into reading
(`load`) and checking (`check`). A verdict that differs from the recorded one is a mismatch,
which the command reports as an error: a fast wrong checker is not a result. Peak RSS is
measured per corpus by resetting the kernel's high-water mark (`/proc/self/clear_refs`) before
each corpus; where that is not possible, the process-wide `ru_maxrss` is reported instead.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keeldb.check import jepsen_log
from keeldb.check.history import Op, op_from_dict
from keeldb.check.linear import check_operations, pair_history
from keeldb.check.models import KV, CasRegister, Model, MultiRegister, Mutex
from keeldb.check.txn import g1a_cases, g1b_cases, transactions
from keeldb.check.txn_edn import parse_history as parse_edn
from keeldb.errors import KeeldbError, UsageError

SCHEMA = "keeldb.bench.checkers/1"
CORPORA: tuple[str, ...] = ("porcupine", "knossos", "elle")
LINEAR_CORPORA: tuple[str, ...] = ("porcupine", "knossos")
ENV_TESTDATA = "KEELDB_TESTDATA"
SLOWEST_SHOWN = 5  # slowest files listed per corpus
MISMATCHES_KEPT_MAX = 200  # mismatch lines kept per corpus in the result
TARGET_WALL_S = 60.0  # issue 4: the whole corpus in under 60 s on the 2-core machine
ELLE_CASES = "elle_unit_cases.json"
EDN_DEFAULTS: dict[str, Any] = {"f": "txn", "process": 0}


@dataclass(frozen=True)
class ElleExpect:
    """What the Elle README records for one example history, checked under `isolation`."""

    isolation: tuple[str, ...]
    valid: bool
    anomaly_types: tuple[str, ...] | None = None  # exact list, when the README pins it
    not_: tuple[str, ...] | None = None  # weakest models violated, when pinned


# From testdata/elle/README.md: paper-example is a G-single (item-level: G-single-item) under
# serializability; si-without-g-single with [SI, RR] is G2-item, not RR; huge-scc under Elle's
# default (strict serializable) is invalid, not strong snapshot isolation.
ELLE_HISTORIES: dict[str, ElleExpect] = {
    "paper-example.edn": ElleExpect(("serializable",), False, ("G-single-item",)),
    "si-without-g-single.edn": ElleExpect(("snapshot-isolation", "repeatable-read"), False,
                                          ("G2-item",), ("repeatable-read",)),
    "huge-scc.edn": ElleExpect(("strict-serializable",), False, None,
                               ("strong-snapshot-isolation",)),
}


@dataclass(frozen=True)
class Job:
    """One corpus file to check: `kind` is linear, txn-history or txn-cases."""

    corpus: str
    name: str  # path relative to the corpus folder
    path: Path
    kind: str
    entry: dict[str, Any] = field(default_factory=dict)  # the verdicts.json record (linear)
    expect: ElleExpect | None = None  # txn-history


@dataclass
class FileResult:
    """What checking one file gave, against what was expected, and what it cost."""

    corpus: str
    name: str
    checks: int = 0
    matched: int = 0
    mismatches: list[str] = field(default_factory=list)
    verdict: str = ""
    expected: str = ""
    events: int = 0
    steps: int | None = None  # linear search steps; the txn checker does not count steps
    load_wall_s: float = 0.0
    load_cpu_s: float = 0.0
    check_wall_s: float = 0.0
    check_cpu_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return self.load_wall_s + self.check_wall_s

    @property
    def cpu_s(self) -> float:
        return self.load_cpu_s + self.check_cpu_s

    def to_json(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "name": self.name, "checks": self.checks,
                "matched": self.matched, "mismatches": self.mismatches,
                "verdict": self.verdict, "expected": self.expected, "events": self.events,
                "steps": self.steps, "wall_s": round(self.wall_s, 6),
                "cpu_s": round(self.cpu_s, 6), "load_wall_s": round(self.load_wall_s, 6),
                "load_cpu_s": round(self.load_cpu_s, 6),
                "check_wall_s": round(self.check_wall_s, 6),
                "check_cpu_s": round(self.check_cpu_s, 6), "detail": self.detail}


@dataclass(frozen=True)
class Plan:
    testdata: Path
    corpora: tuple[str, ...]
    jobs: tuple[Job, ...]
    notes: tuple[str, ...] = ()


# --- where the corpora are ------------------------------------------------------------------

def find_testdata(explicit: Path | None = None, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> Path:
    """The testdata folder: `explicit`, else $KEELDB_TESTDATA, else `shared/testdata` beside
    the repository checkout holding `cwd` (the first ancestor with a pyproject.toml).

    Raises `UsageError` (exit 2) saying what was tried and how to point at the folder.
    """
    environ = os.environ if env is None else env
    if explicit is not None:
        tried, how = explicit, "--testdata"
    elif environ.get(ENV_TESTDATA):
        tried, how = Path(environ[ENV_TESTDATA]), f"${ENV_TESTDATA}"
    else:
        here = (cwd or Path.cwd()).resolve()
        repo = next((d for d in (here, *here.parents) if (d / "pyproject.toml").is_file()), None)
        if repo is None:
            raise UsageError(f"no repository checkout (a folder with pyproject.toml) at or "
                             f"above {here}, so no shared/testdata beside it; pass --testdata "
                             f"DIR or set {ENV_TESTDATA}")
        tried, how = repo.parent / "shared" / "testdata", "the default beside the repository"
    if not tried.is_dir():
        raise UsageError(f"testdata folder {tried} ({how}) does not exist; pass --testdata "
                         f"DIR or set {ENV_TESTDATA} to the folder holding porcupine/, "
                         f"knossos/ and elle/")
    return tried


def parse_corpora(text: str) -> tuple[str, ...]:
    """`porcupine,knossos` -> the names in CORPORA order; `all` or empty -> every corpus."""
    if text.strip() in ("", "all"):
        return CORPORA
    names = {x.strip() for x in text.split(",") if x.strip()}
    unknown = sorted(names - set(CORPORA))
    if unknown:
        raise UsageError(f"unknown corpus {', '.join(unknown)}; choose from "
                         f"{', '.join(CORPORA)} (comma-separated) or all")
    return tuple(c for c in CORPORA if c in names)


def plan(testdata: Path, corpora: Sequence[str] = CORPORA) -> Plan:
    """Every file to check, in a stable order; `UsageError` if a corpus is not there."""
    jobs: list[Job] = []
    notes: list[str] = []
    for corpus in corpora:
        root = testdata / corpus
        if not root.is_dir():
            raise UsageError(f"corpus folder {root} not found; pass --testdata DIR (the "
                             f"folder holding {', '.join(CORPORA)}) or leave {corpus} out "
                             f"with --corpus")
        if corpus in LINEAR_CORPORA:
            jobs += _linear_jobs(corpus, root)
        else:
            elle_jobs, elle_notes = _elle_jobs(root)
            jobs += elle_jobs
            notes += elle_notes
    return Plan(testdata, tuple(corpora), tuple(jobs), tuple(notes))


def _linear_jobs(corpus: str, root: Path) -> list[Job]:
    manifest = root / "verdicts.json"
    try:
        histories: dict[str, Any] = json.loads(manifest.read_text("utf-8"))["histories"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{manifest}: cannot read the recorded verdicts ({exc}); the corpus "
                         f"folder needs verdicts.json with a 'histories' map") from exc
    bad = [n for n, e in histories.items() if not isinstance(e.get("linearizable"), bool)]
    if bad:
        raise UsageError(f"{manifest}: {len(bad)} entries (first {bad[0]!r}) have no boolean "
                         f"'linearizable' verdict; fix the file or restore it from the corpus")
    return [Job(corpus, name, root / name, "linear", entry=entry)
            for name, entry in sorted(histories.items())]


def _elle_jobs(root: Path) -> tuple[list[Job], list[str]]:
    jobs, notes = [], []
    for name, expect in ELLE_HISTORIES.items():
        path = root / "histories" / name
        if path.is_file():
            jobs.append(Job("elle", f"histories/{name}", path, "txn-history", expect=expect))
        else:
            notes.append(f"elle: histories/{name} not found; skipped")
    hist_dir = root / "histories"
    extra = sorted(p.name for p in hist_dir.glob("*.edn")) if hist_dir.is_dir() else []
    notes += [f"elle: histories/{n} has no recorded verdict; skipped"
              for n in extra if n not in ELLE_HISTORIES]
    if (root / ELLE_CASES).is_file():
        jobs.append(Job("elle", ELLE_CASES, root / ELLE_CASES, "txn-cases"))
    else:
        notes.append(f"elle: {ELLE_CASES} not found; skipped")
    if not jobs:
        raise UsageError(f"{root}: none of the Elle files ({', '.join(ELLE_HISTORIES)}, "
                         f"{ELLE_CASES}) is there; leave elle out with --corpus")
    return jobs, notes


# --- checking one file ----------------------------------------------------------------------

class _Timer:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def linear_model(corpus: str, entry: dict[str, Any]) -> Model:
    """The model (and options) the conformance tests check this corpus entry with."""
    name = entry.get("model", "")
    if corpus == "porcupine" and name == "etcd-cas-register":
        # Porcupine's etcd model: starts empty, a failed cas means "the value was not `from`".
        return CasRegister(initial=None, nil_read_any=False, failed_cas="not-from")
    if corpus == "porcupine" and name.startswith("kv"):
        return KV()
    if corpus == "knossos" and name == "cas-register":
        # Jepsen's convention: a read of nil matches any state.
        return CasRegister(initial=entry.get("initial_value", 0), nil_read_any=True)
    if corpus == "knossos" and name.startswith("multi-register"):
        return MultiRegister(initial={"x": 0, "y": 0})
    if corpus == "knossos" and name == "mutex":
        return Mutex()
    raise UsageError(f"{corpus}/verdicts.json names model {name!r}, which the benchmark does "
                     f"not know; update keeldb.bench.checkers.linear_model")


def _run_linear(job: Job, res: FileResult) -> None:
    expected = bool(job.entry["linearizable"])
    res.expected, res.checks = ("valid" if expected else "invalid"), 1
    timer = _Timer()
    data = job.path.read_bytes()
    if hashlib.sha256(data).hexdigest() != job.entry.get("sha256"):
        res.mismatches.append(f"{job.name}: differs from the copy whose verdict is recorded "
                              f"(sha256)")
    history = jepsen_log.parse_history(data.decode("utf-8"), "auto", job.name)
    res.load_wall_s, res.load_cpu_s = timer.lap()
    result, _ = check_operations(pair_history(history), linear_model(job.corpus, job.entry))
    res.check_wall_s, res.check_cpu_s = timer.lap()
    res.events, res.verdict = len(history), result.verdict
    res.steps = int(result.details["steps"])
    res.detail = {"model": result.details["model"], "parts": result.details["parts"],
                  "operations": result.details["operations"]}
    if res.verdict != res.expected:
        res.mismatches.append(f"{job.name}: expected {res.expected}, got {res.verdict}")


def _run_txn_history(job: Job, res: FileResult) -> None:
    expect = job.expect
    assert expect is not None, job
    res.expected, res.checks = ("valid" if expect.valid else "invalid"), 1
    timer = _Timer()
    ops = parse_edn(job.path.read_text("utf-8"), job.name, EDN_DEFAULTS)
    res.load_wall_s, res.load_cpu_s = timer.lap()
    result = transactions(ops, list(expect.isolation))
    res.check_wall_s, res.check_cpu_s = timer.lap()
    d = result.details
    res.events, res.verdict = len(ops), result.verdict
    res.detail = {"isolation": list(expect.isolation), "anomaly_types": d["anomaly_types"],
                  "not": d["not"], "txn_count": d["txn_count"], "edge_count": d["edge_count"]}
    wrong = []
    if res.verdict != res.expected:
        wrong.append(f"verdict {res.verdict}, expected {res.expected}")
    if expect.anomaly_types is not None and d["anomaly_types"] != sorted(expect.anomaly_types):
        wrong.append(f"anomaly types {d['anomaly_types']}, expected "
                     f"{sorted(expect.anomaly_types)}")
    if expect.not_ is not None and d["not"] != sorted(expect.not_):
        wrong.append(f"not {d['not']}, expected {sorted(expect.not_)}")
    res.mismatches += [f"{job.name}: {w}" for w in wrong]


def _case_ops(case: dict[str, Any]) -> list[Op]:
    return [op_from_dict(obj, i) for i, obj in enumerate(case["history"])]


def _unit_check(case: dict[str, Any], check: dict[str, Any]) -> str | None:
    """Run one check of the Elle unit cases; None when it matches, else what differs.

    Rules of the corpus README (as in tests/conformance/test_elle_corpus.py): the verdict
    must match, and when Elle reports anomalies, the exact anomaly types and `not`.
    """
    if "g1a_cases_on_ops" in check or "g1b_cases_on_ops" in check:
        helper, want = ((g1a_cases, check["g1a_cases_on_ops"]) if "g1a_cases_on_ops" in check
                        else (g1b_cases, check["g1b_cases_on_ops"]))
        flagged = sorted({a.ops[0] for a in helper(_case_ops(case), case["workload"])})
        return None if flagged == sorted(want) else f"flagged ops {flagged}, Elle {want}"
    opts, expected = check["options"], check["expected"]
    # `{}` means Elle's default (strict serializable); named anomalies mean no model.
    models = opts.get("consistency_models",
                      None if "anomalies" in opts else ["strict-serializable"])
    result = transactions(
        _case_ops(case), models, case["workload"], anomalies=opts.get("anomalies", ()),
        linearizable_keys=opts.get("linearizable_keys", False),
        sequential_keys=opts.get("sequential_keys", False),
        wfr_keys=opts.get("wfr_keys", False), transaction_order=opts.get("transaction_order"),
        # Elle's register cases read unwritten values as stand-ins for earlier state.
        garbage_reads=case["workload"] == "list-append")
    d = result.details
    got = (d["elle_valid"], d["anomaly_types"], d["not"])
    if d["elle_valid"] != expected["valid"]:
        return f"valid {got[0]!r}, Elle {expected['valid']!r}"
    if expected["valid"] is not True and (d["anomaly_types"] != sorted(expected["anomaly_types"])
                                          or d["not"] != sorted(expected["not"])):
        return (f"anomaly types {got[1]} not {got[2]}, Elle {sorted(expected['anomaly_types'])}"
                f" not {sorted(expected['not'])}")
    return None


def _run_txn_cases(job: Job, res: FileResult) -> None:
    timer = _Timer()
    doc = json.loads(job.path.read_text("utf-8"))
    if doc.get("format") != "keeldb-elle-cases/1":
        raise UsageError(f"{job.path}: format {doc.get('format')!r}, expected "
                         f"'keeldb-elle-cases/1'")
    res.load_wall_s, res.load_cpu_s = timer.lap()
    for case in doc["cases"]:
        for i, check in enumerate(case["checks"]):
            if not ({"options", "g1a_cases_on_ops", "g1b_cases_on_ops"} & check.keys()):
                continue  # a note only: Elle asserts nothing there
            res.checks += 1
            res.events += len(case["history"])
            wrong = _unit_check(case, check)
            if wrong is not None:
                res.mismatches.append(f"{case['id']} check {i}: {wrong}")
    res.check_wall_s, res.check_cpu_s = timer.lap()
    res.expected = f"{res.checks} checks as Elle"
    res.verdict = f"{res.checks - len(res.mismatches)} of {res.checks} as Elle"
    res.detail = {"cases": len(doc["cases"])}


_RUNNERS: dict[str, Callable[[Job, FileResult], None]] = {
    "linear": _run_linear, "txn-history": _run_txn_history, "txn-cases": _run_txn_cases}


def run_job(job: Job) -> FileResult:
    """Check one file. A file the checker cannot read counts as a mismatch, not a crash."""
    res = FileResult(job.corpus, job.name)
    try:
        _RUNNERS[job.kind](job, res)
    except (KeeldbError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        res.checks = max(res.checks, 1)
        res.verdict = "error"
        res.mismatches.append(f"{job.name}: {type(exc).__name__}: {exc}")
    res.matched = max(0, res.checks - len(res.mismatches))
    return res


# --- the whole run --------------------------------------------------------------------------

def _reset_peak_rss() -> str:
    """Reset the kernel's peak-RSS mark of this process; return how peaks are measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _peak_rss_bytes(method: str) -> int:
    if method == "VmHWM":
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS: bytes; Linux: KiB


def machine_info() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""
    cpu = next((line.split(":", 1)[1].strip() for line in read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next((int(line.split()[1]) for line in read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "ram_bytes": mem_kib * 1024,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def summarize(files: Sequence[FileResult], peak_rss_bytes: int) -> dict[str, Any]:
    """One corpus: counts, totals, the slowest files and the mismatches."""
    mismatches = [m for f in files for m in f.mismatches]
    slowest = sorted(files, key=lambda f: (-f.wall_s, f.name))[:SLOWEST_SHOWN]
    return {
        "files": len(files),
        "checks": sum(f.checks for f in files),
        "matched": sum(f.matched for f in files),
        "mismatched": sum(f.checks - f.matched for f in files),
        "wall_s": round(sum(f.wall_s for f in files), 6),
        "cpu_s": round(sum(f.cpu_s for f in files), 6),
        "load_cpu_s": round(sum(f.load_cpu_s for f in files), 6),
        "check_cpu_s": round(sum(f.check_cpu_s for f in files), 6),
        # Only the linearizability checker counts search steps.
        "steps": (sum(f.steps for f in files if f.steps is not None)
                  if any(f.steps is not None for f in files) else None),
        "peak_rss_bytes": peak_rss_bytes,
        "slowest": [{"name": f.name, "wall_s": round(f.wall_s, 6), "cpu_s": round(f.cpu_s, 6),
                     "steps": f.steps, "verdict": f.verdict} for f in slowest],
        "mismatches": mismatches[:MISMATCHES_KEPT_MAX],
        "mismatches_dropped": max(0, len(mismatches) - MISMATCHES_KEPT_MAX),
    }


def run(p: Plan, on_file: Callable[[FileResult], None] = lambda r: None,
        command: str = "keeldb bench checkers") -> dict[str, Any]:
    """Check every file of the plan in this process; return the JSON-able result."""
    started = dt.datetime.now(dt.UTC)
    timer = _Timer()
    machine = machine_info()
    corpora: dict[str, Any] = {}
    files: list[FileResult] = []
    rss_method = "ru_maxrss"
    for corpus in p.corpora:
        gc.collect()  # drop the previous corpus's garbage before its peak is reset
        rss_method = _reset_peak_rss()
        done = []
        for job in (j for j in p.jobs if j.corpus == corpus):
            res = run_job(job)
            done.append(res)
            on_file(res)
        corpora[corpus] = summarize(done, _peak_rss_bytes(rss_method))
        files += done
    machine["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    run_wall, run_cpu = timer.lap()
    linear = [c for c in LINEAR_CORPORA if c in corpora]
    totals = {
        "files": len(files),
        "checks": sum(c["checks"] for c in corpora.values()),
        "matched": sum(c["matched"] for c in corpora.values()),
        "mismatched": sum(c["mismatched"] for c in corpora.values()),
        "wall_s": round(sum(c["wall_s"] for c in corpora.values()), 6),
        "cpu_s": round(sum(c["cpu_s"] for c in corpora.values()), 6),
        # The whole run in this process (files plus the harness between them).
        "run_wall_s": round(run_wall, 6),
        "run_cpu_s": round(run_cpu, 6),
        "linear_wall_s": round(sum(corpora[c]["wall_s"] for c in linear), 6),
        "linear_cpu_s": round(sum(corpora[c]["cpu_s"] for c in linear), 6),
        "target_wall_s": TARGET_WALL_S,
        # The target is about the whole corpus: judged only when every corpus ran.
        "target_met": (run_wall < TARGET_WALL_S) if set(p.corpora) == set(CORPORA) else None,
    }
    return {
        "schema": SCHEMA,
        "command": command,
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "testdata": _show_path(p.testdata),
        "rss_method": rss_method,
        # clear_refs resets ru_maxrss too, so the process peak is the largest corpus peak.
        "process_peak_rss_bytes": max((c["peak_rss_bytes"] for c in corpora.values()),
                                      default=_peak_rss_bytes("ru_maxrss")),
        "corpora_run": list(p.corpora),  # the order they ran in (JSON keys are sorted)
        "corpora": corpora,
        "totals": totals,
        "elle_histories": [f.to_json() for f in files
                           if f.corpus == "elle" and f.name.startswith("histories/")],
        "files": [f.to_json() for f in files],
        "notes": list(p.notes),
        "ok": totals["mismatched"] == 0,
    }


def _show_path(path: Path) -> str:
    """`path` relative to the current directory when that is shorter (keeps results portable)."""
    try:
        rel = os.path.relpath(path.resolve())
    except ValueError:  # another drive (Windows)
        return str(path)
    return rel if len(rel) < len(str(path.resolve())) else str(path)


def default_out_path(now: dt.datetime | None = None) -> Path:
    day = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d")
    return Path("benchmarks") / "results" / f"checkers-{day}.json"


def write_result(result: dict[str, Any], out: Path) -> None:
    """Write the JSON result atomically (temporary file, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out)

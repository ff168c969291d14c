"""Smoke tests of `keeldb bench storage` at a tiny N: every workload runs, the JSON has its
schema, and read workloads return exactly the values written. Never asserts on speed."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from keeldb.bench import storage as bench
from keeldb.bench.engines import ENGINES, SqliteEngine, available
from keeldb.bench.report import markdown
from keeldb.bench.workloads import (
    SCAN_NEXT,
    WORKLOADS,
    Child,
    ChildSpec,
    Data,
    op_count,
)
from keeldb.cli.bench_cmds import render
from keeldb.cli.main import main

TINY_N = 1500
ROW_KEYS = {"workload", "ops", "seconds", "ops_per_sec", "cpu_seconds", "rss_bytes", "checks"}


def _need(engine: str) -> None:
    ok, why = available(engine)
    if not ok:
        pytest.skip(why)


def _run_child(engine: str, tmp_path: Path, workloads: tuple[str, ...] = WORKLOADS,
               n: int = TINY_N) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    events: list[dict[str, Any]] = []
    spec = ChildSpec(engine=engine, workloads=workloads, n=n, seed=7, dir=str(tmp_path),
                     repeat=0)
    Child(spec, events.append).run()
    rows = {e["result"]["workload"]: e["result"] for e in events if e["event"] == "workload"}
    done = [e for e in events if e["event"] == "done"]
    assert len(done) == 1 and events[-1] is done[0]
    return rows, done[0]


def _assert_reads_correct(rows: dict[str, dict[str, Any]], n: int) -> None:
    for w, row in rows.items():
        assert ROW_KEYS <= set(row), w
        assert row["ops"] == op_count(w, n) and row["ops_per_sec"] > 0
        checks = row["checks"]
        assert checks.get("mismatches", 0) == 0, (w, checks)
        assert checks.get("scan_mismatches", 0) == 0, (w, checks)
        if "found" in checks:
            assert checks["found"] == checks["expected_found"], (w, checks)
        if "entries" in checks:
            assert checks["entries"] == checks["expected_entries"], (w, checks)
    assert rows["readrandom"]["checks"]["verified"] > 0
    assert rows["readmissing"]["checks"]["expected_found"] == 0
    assert rows["seekrandom"]["checks"]["scans_verified"] > 0
    assert rows["readwhilewriting"]["checks"]["writer_ops"] >= 0


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_workload_runs_and_reads_back_what_was_written(engine: str,
                                                             tmp_path: Path) -> None:
    _need(engine)
    rows, done = _run_child(engine, tmp_path)
    assert set(rows) == set(WORKLOADS)
    _assert_reads_correct(rows, TINY_N)
    assert set(done["settings"]) == {"default", "fillsync"}
    assert "durability" in done["settings"]["default"]
    # Two measurements of one process at different moments and granularities (ru_maxrss in
    # KiB vs the harness's sample): the peak may read a few pages below the sample.
    assert done["harness_rss_bytes"] > 0
    assert done["peak_rss_bytes"] >= 0.95 * done["harness_rss_bytes"]
    if engine == bench.KEELDB:
        assert done["stats"] is not None and "write_amplification" in done["stats"]
    assert not (tmp_path / f"{engine}-r0").exists()  # databases removed after the run


def test_reads_without_fill_selected_still_load_the_base_database(tmp_path: Path) -> None:
    rows, _ = _run_child("sqlite3", tmp_path, ("readrandom", "seekrandom"), n=500)
    assert set(rows) == {"readrandom", "seekrandom"}
    assert rows["readrandom"]["checks"]["found"] == 500
    assert rows["seekrandom"]["checks"]["entries"] == rows["seekrandom"]["checks"][
        "expected_entries"] > 0


class _LyingSqlite(SqliteEngine):
    """Returns a wrong value for every 7th key: the checks must notice."""

    name = "lying-sqlite"

    def reader(self):  # type: ignore[no-untyped-def]
        get = super().reader()

        def lie(key: bytes) -> bytes | None:
            v = get(key)
            return v if v is None or int(key) % 7 else v[::-1]

        return lie


def test_checks_catch_an_engine_that_returns_wrong_values(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ENGINES, "lying-sqlite", _LyingSqlite)
    rows, _ = _run_child("lying-sqlite", tmp_path, ("fillrandom", "readrandom"), n=700)
    assert rows["readrandom"]["checks"]["mismatches"] > 0
    assert rows["fillrandom"]["checks"]["mismatches"] > 0


def test_data_is_deterministic_and_values_are_distinct() -> None:
    a, b = Data(1000, 3), Data(1000, 3)
    assert list(a.order("x")) == list(b.order("x")) != list(range(1000))
    assert sorted(a.order("x")) == list(range(1000))
    assert a.key(5) == b"0000000000000010" and a.missing_key(5) == b"0000000000000011"
    assert a.value(5, 0) == b.value(5, 0) != a.value(5, 1)
    assert len({a.value(i, 0) for i in range(1000)}) == 1000
    assert len(a.value(999, 2)) == 100


def _fake_run(engine: str, rep: int, ops: dict[str, float], rss: int) -> dict[str, Any]:
    return {"engine": engine, "repeat": rep, "error": None, "peak_rss_bytes": rss,
            "harness_rss_bytes": 10, "versions": {}, "settings": {}, "stats": None,
            "workloads": [{"workload": w, "ops_per_sec": v} for w, v in ops.items()]}


def test_summary_takes_medians_ratios_and_judges_targets() -> None:
    runs = [
        _fake_run("keeldb-lsm", 0, {"fillrandom": 300.0, "readrandom": 100.0}, 600_000_000),
        _fake_run("keeldb-lsm", 1, {"fillrandom": 500.0, "readrandom": 180.0}, 400_000_000),
        _fake_run("keeldb-lsm", 2, {"fillrandom": 400.0, "readrandom": 160.0}, 450_000_000),
        _fake_run("rocksdict", 0, {"fillrandom": 400.0, "readrandom": 100.0}, 1),
        _fake_run("sqlite3", 0, {"fillrandom": 20.0, "readrandom": 50.0}, 1),
    ]
    s = bench.summarize(runs, ["keeldb-lsm", "rocksdict", "sqlite3"],
                        ["fillrandom", "readrandom"])
    cell = s["results"]["fillrandom"]["keeldb-lsm"]
    assert cell["ops_per_sec"] == 400.0 and cell["samples"] == [300.0, 500.0, 400.0]
    assert cell["ratio_to_rocksdict"] == 1.0 and cell["ratio_to_sqlite3"] == 20.0
    assert s["results"]["readrandom"]["keeldb-lsm"]["ratio_to_rocksdict"] == 1.6
    assert s["peak_rss"]["keeldb-lsm"]["peak_rss_bytes_max"] == 600_000_000
    verdicts = {t["target"]: t["met"] for t in bench.check_targets(s["results"],
                                                                     s["peak_rss"], 1_000_000)}
    assert verdicts["fillrandom >= 1x rocksdict"] is True
    assert verdicts["readrandom >= 1.5x rocksdict"] is True
    assert verdicts["fillrandom >= 10x sqlite3"] is True
    assert verdicts["readrandom >= 0.5x lmdb"] is None  # lmdb not in the run
    assert verdicts["peak RSS <= 500 MB"] is False
    small = {t["target"]: t["met"] for t in bench.check_targets(s["results"], s["peak_rss"], 1000)}
    assert small["peak RSS <= 500 MB"] is None  # judged only at N = 1,000,000


def test_runner_uses_fresh_processes_and_writes_the_json_schema(tmp_path: Path) -> None:
    config = bench.RunConfig(n=400, repeats=2, engines=("sqlite3",),
                             workloads=("fillrandom", "readrandom", "seekrandom"),
                             dir=tmp_path / "db")
    events: list[bench.Event] = []
    result = bench.run(config, events.append)
    assert result["schema"] == bench.SCHEMA
    assert {"machine", "config", "results", "peak_rss", "targets", "runs", "versions",
            "settings", "notes", "keeldb_stats"} <= set(result)
    assert {"cpu_model", "cores", "ram_bytes", "kernel", "python", "libraries"} <= set(
        result["machine"])
    assert [r["repeat"] for r in result["runs"]] == [0, 1]
    assert all(r["error"] is None and r["peak_rss_bytes"] > 0 for r in result["runs"])
    cell = result["results"]["readrandom"]["sqlite3"]
    assert len(cell["samples"]) == 2 and cell["ratio_to_sqlite3"] == 1.0
    assert cell["ratio_to_rocksdict"] is None
    assert sum(e.kind == "workload" for e in events) == 6
    assert result["versions"]["sqlite3"]["sqlite"]
    assert result["config"]["ops"]["seekrandom"] == max(1, 400 // 50)
    assert SCAN_NEXT == 100
    md = markdown(result)
    assert "| readrandom | 400 |" in md and "sqlite3: sqlite" in md
    text = io.StringIO()
    render(result, Console(file=text, width=200))
    assert "readrandom" in text.getvalue() and "peak RSS" in text.getvalue()
    out = tmp_path / "r.json"
    bench.write_result(result, out)
    assert json.loads(out.read_text())["results"].keys() == result["results"].keys()


def test_a_crashing_engine_process_is_reported_not_fatal(tmp_path: Path) -> None:
    config = bench.RunConfig(n=100, repeats=1, engines=("sqlite3",),
                             workloads=("readrandom",), dir=tmp_path / "db",
                             child_timeout_s=0.001)
    result = bench.run(config)
    assert result["runs"][0]["error"] is not None
    assert any("sqlite3 repeat 0" in note for note in result["notes"])


def test_cli_writes_json_and_rejects_unknown_names(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res.json"
    code = main(["bench", "storage", "--n", "300", "--repeats", "1", "--engines", "sqlite3",
                 "--workloads", "fillrandom,readmissing", "--out", str(out), "--json",
                 "--dir", str(tmp_path / "db")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert printed["results"] == saved["results"]
    assert set(saved["results"]) == {"fillrandom", "readmissing"}
    assert saved["command"].startswith("keeldb ")
    assert main(["bench", "storage", "--engines", "nosuchdb", "--out", str(out)]) == 2
    assert main(["bench", "storage", "--workloads", "readall", "--out", str(out)]) == 2
    assert main(["bench", "storage", "--n", "0", "--out", str(out)]) == 2
    # An engine process that dies (here: killed by the timeout) makes the command exit 1.
    assert main(["bench", "storage", "--n", "100", "--repeats", "1", "--engines", "sqlite3",
                 "--timeout", "0.001", "--out", str(out), "--dir", str(tmp_path / "db")]) == 1
    assert json.loads(out.read_text())["runs"][0]["error"]

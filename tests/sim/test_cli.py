"""`keeldb sim`: exit codes, repro lines, JSON, swarm summary, fault list, bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import keeldb.cli.sim_cmds  # noqa: F401  (registers `sim` on the app)
from keeldb.check.history import parse_jsonl
from keeldb.cli.app import app


class _Out:
    out = ""


_last = _Out()


def main(args: list[str]) -> int:
    """Run `keeldb ARGS` in-process in standalone mode (real exit codes); keep stdout."""
    result = CliRunner().invoke(app, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    _last.out = result.stdout
    return result.exit_code


def test_failing_run_exits_3_and_prints_its_repro_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--system", "primary-backup", "--seed", "2"])
    out = _last.out
    assert code == 3
    repro = next(line for line in out.splitlines() if line.startswith("reproduce: "))
    again = main(repro.removeprefix("reproduce: keeldb ").split() + ["--json"])
    result = json.loads(_last.out)
    assert again == 3 and result["repro"] == repro.removeprefix("reproduce: ")


def test_passing_run_with_trace_and_history(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "h.jsonl"
    code = main(["sim", "--system", "register", "--seed", "5", "--faults", "crash,drop",
                 "--trace", "--history-out", str(out_file)])
    out = _last.out
    assert code == 0 and "client->n1" in out and "verdict" in out
    ops = parse_jsonl(out_file.read_text())
    assert ops and {op.type for op in ops} >= {"invoke", "ok"}


def test_swarm_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--system", "primary-backup", "--seeds", "4", "--json"])
    summary = json.loads(_last.out)
    assert code == 3 and summary["seeds"] == 4 and summary["failed"] >= 1
    assert all(f["repro"].startswith("keeldb sim --system primary-backup --seed ")
               for f in summary["failures"])
    assert summary["seeds_exercising_fault"]


def test_swarm_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--system", "register", "--seeds", "3", "--seed-start", "10"])
    out = _last.out
    assert code == 0 and "seeds run" in out and "faults exercised" in out


def test_list_faults_and_bench(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--list-faults", "--json"]) == 0
    faults = json.loads(_last.out)
    assert {"drop", "torn-write", "clock-jump", "pause"} <= {f["fault"] for f in faults}
    assert main(["sim", "--bench", "--json"]) == 0
    bench = json.loads(_last.out)
    assert bench["deliveries"] > 1000 and bench["deliveries_per_s"] > 0


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--system", "nope"]) == 2
    assert main(["sim", "--faults", "fire"]) == 2
    assert main(["sim", "--workload", "queue"]) == 2
    assert main(["sim", "--system", "echo"]) == 2


def test_the_keeldb_entry_point_runs_sim(capsys: pytest.CaptureFixture[str]) -> None:
    from keeldb.cli.main import main as keeldb_main

    assert keeldb_main(["sim", "--system", "primary-backup", "--seed", "2", "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["ok"] is False
    assert keeldb_main(["sim", "--system", "register", "--seed", "2", "--json"]) == 0

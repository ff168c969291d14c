"""`keeldb check txn`: exit codes, formats, JSON output and one-line input errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import keeldb.cli.check_txn_cmds as cmds  # registers `check txn` on the app
from keeldb.cli.app import EXIT_OK, EXIT_USAGE, EXIT_VIOLATION, app

runner = CliRunner()

WRITE_SKEW = [
    {"index": 0, "process": 0, "type": "ok", "f": "txn",
     "value": [["r", "x", None], ["append", "y", 1]]},
    {"index": 1, "process": 1, "type": "ok", "f": "txn",
     "value": [["r", "y", None], ["append", "x", 1]]},
]


def write_jsonl(path: Path, ops: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in ops), encoding="utf-8")
    return path


def test_exit_codes_follow_the_isolation_level(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "h.jsonl", WRITE_SKEW)
    res = runner.invoke(app, ["check", "txn", str(f), "--isolation", "snapshot-isolation"])
    assert res.exit_code == EXIT_OK, res.output
    assert "valid" in res.output
    res = runner.invoke(app, ["check", "txn", str(f), "--isolation", "serializable"])
    assert res.exit_code == EXIT_VIOLATION, res.output
    assert "G2-item" in res.output and "observed the initial (empty) state" in res.output


def test_json_output(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "h.jsonl", WRITE_SKEW)
    res = runner.invoke(app, ["check", "txn", str(f), "--json"])
    assert res.exit_code == EXIT_VIOLATION
    out = json.loads(res.output)
    assert out["verdict"] == "invalid" and out["format"] == "jsonl"
    assert out["details"]["anomaly_types"] == ["G2-item"]
    assert out["details"]["levels"]["snapshot-isolation"] == []
    assert out["anomalies"][0]["data"]["steps"][0]["type"] == "rw"


def test_edn_input(tmp_path: Path) -> None:
    f = tmp_path / "h.edn"
    f.write_text("{:type :ok, :value [[:w 1 1] [:r 2 1]]}\n"
                 "{:type :ok, :value [[:w 2 1] [:r 1 1]]}\n", encoding="utf-8")
    res = runner.invoke(app, ["check", "txn", str(f), "--workload", "rw-register",
                              "--isolation", "read-committed"])
    assert res.exit_code == EXIT_VIOLATION, res.output
    assert "G1c" in res.output
    assert cmds.detect_format(f.read_text()) == "edn"


def test_unreadable_input_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "h.jsonl"
    f.write_text(json.dumps(WRITE_SKEW[0]) + "\n{not json\n", encoding="utf-8")
    res = runner.invoke(app, ["check", "txn", str(f)])
    assert res.exit_code == EXIT_USAGE
    assert "h.jsonl:2" in res.output
    edn = tmp_path / "h.edn"
    edn.write_text("{:type :ok :value [[:append 1 2]]}\n{:type :ok :value [", encoding="utf-8")
    res = runner.invoke(app, ["check", "txn", str(edn)])
    assert res.exit_code == EXIT_USAGE and "h.edn:2" in res.output


def test_bad_options(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "h.jsonl", WRITE_SKEW)
    for args in (["--workload", "bank"], ["--format", "xml"], ["--isolation", "snapshot"]):
        res = runner.invoke(app, ["check", "txn", str(f), *args])
        assert res.exit_code == EXIT_USAGE, (args, res.output)

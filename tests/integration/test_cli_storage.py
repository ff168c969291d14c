"""The storage commands of the `keeldb` CLI: put, get, del, scan, stats, check-store.

Most tests call `keeldb.cli.main.main(argv)` in-process (fast) and read what it printed; a
few run `python -m keeldb` as a real subprocess to pin the exit codes a shell sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import keeldb
from keeldb.cli.main import main

REPO = Path(__file__).resolve().parent.parent.parent


class Cli:
    """Runs the CLI in-process and returns (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(list(args))
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def json(self, *args: str) -> Any:
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


@pytest.fixture
def store(tmp_path: Path, cli: Cli) -> str:
    path = str(tmp_path / "db")
    for k in ["apple", "banana", "cherry", "date", "elder"]:
        assert cli("put", "--path", path, k, f"{k}-value")[0] == 0
    return path


def test_put_then_get(cli: Cli, tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    code, out, _ = cli("put", "--path", path, "hello", "world")
    assert code == 0 and "hello" in out
    code, out, _ = cli("get", "--path", path, "hello")
    assert (code, out) == (0, "world\n")
    # The data is really in the store, not just echoed.
    with keeldb.open(path) as db:
        assert db.get(b"hello") == b"world"


def test_get_missing_key_exits_1_with_one_line(cli: Cli, store: str) -> None:
    code, out, err = cli("get", "--path", store, "nope")
    assert code == 1 and out == ""
    assert err.startswith("error:") and "Traceback" not in err
    assert "nope" in err and "not found" in err


def test_get_json(cli: Cli, store: str) -> None:
    assert cli.json("get", "--path", store, "banana") == {
        "found": True, "key": "banana", "value": "banana-value"}
    code, out, _ = cli("get", "--path", store, "nope", "--json")
    assert code == 1 and json.loads(out)["found"] is False


def test_hex_keys_and_values_round_trip(cli: Cli, tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    assert cli("put", "--path", path, "0x00ff", "0x01fe")[0] == 0
    with keeldb.open(path) as db:
        assert db.get(b"\x00\xff") == b"\x01\xfe"
    code, out, _ = cli("get", "--path", path, "0x00ff")
    assert (code, out) == (0, "0x01fe\n")
    assert cli.json("scan", "--path", path) == [{"key": "0x00ff", "value": "0x01fe"}]


def test_del(cli: Cli, store: str) -> None:
    assert cli.json("del", "--path", store, "banana") == {
        "ok": True, "key": "banana", "existed": True}
    assert cli("get", "--path", store, "banana")[0] == 1
    assert cli.json("del", "--path", store, "banana")["existed"] is False
    code, out, _ = cli("del", "--path", store, "cherry")
    assert code == 0 and "deleted cherry" in out


def test_scan_bounds_order_and_limit(cli: Cli, store: str) -> None:
    def keys(*args: str) -> list[str]:
        return [p["key"] for p in cli.json("scan", "--path", store, *args)]

    assert keys() == ["apple", "banana", "cherry", "date", "elder"]
    assert keys("--start", "banana", "--end", "date") == ["banana", "cherry"]
    assert keys("--reverse") == ["elder", "date", "cherry", "banana", "apple"]
    assert keys("--reverse", "--limit", "2") == ["elder", "date"]
    assert keys("--start", "c", "--limit", "1") == ["cherry"]
    assert keys("--start", "zzz") == []
    pairs = cli.json("scan", "--path", store, "--limit", "1")
    assert pairs == [{"key": "apple", "value": "apple-value"}]


def test_scan_table(cli: Cli, store: str) -> None:
    code, out, _ = cli("scan", "--path", store, "--end", "c")
    assert code == 0
    assert "apple-value" in out and "banana-value" in out and "cherry" not in out
    assert "2 pairs" in out


def test_stats(cli: Cli, store: str) -> None:
    stats = cli.json("stats", store)
    assert isinstance(stats["levels"], list) and stats["levels"]
    assert {"level", "files", "bytes"} <= set(stats["levels"][0])
    for field in ("write_amplification", "space_amplification", "bloom_false_positive_rate",
                  "block_cache_hit_rate", "tables_touched_per_read", "last_seq"):
        assert field in stats
    assert stats["last_seq"] >= 5  # five puts
    code, out, _ = cli("stats", store)
    assert code == 0 and "level" in out and "write_amplification" in out


def test_check_store_clean(cli: Cli, store: str) -> None:
    code, out, _ = cli("check-store", store)
    assert code == 0 and "clean" in out
    report = cli.json("check-store", store)
    assert report["ok"] is True and report["problems"] == []
    assert report["files_checked"] >= 1


def test_missing_store_is_an_operating_error(cli: Cli, tmp_path: Path) -> None:
    absent = str(tmp_path / "absent")
    for args in (["get", "--path", absent, "k"], ["scan", "--path", absent],
                 ["stats", absent], ["check-store", absent], ["del", "--path", absent, "k"]):
        code, _, err = cli(*args)
        assert code == 1, args
        assert "no store" in err
    assert not Path(absent).exists()  # reading never creates a store


def test_usage_errors_exit_2(cli: Cli, store: str) -> None:
    assert cli("get", "hello")[0] == 2  # --path missing
    assert cli("scan", "--path", store, "--limit", "-1")[0] == 2
    assert cli("scan", "--path", store, "--bogus")[0] == 2
    code, _, err = cli("put", "--path", store, "", "v")  # empty key: InvalidKeyError
    assert code == 2 and "empty" in err


def test_locked_store_names_the_holder(cli: Cli, store: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, keeldb\ndb = keeldb.open(sys.argv[1])\nprint('locked', flush=True)\n"
         "sys.stdin.readline()\ndb.close()", store],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli("get", "--path", store, "apple")
        assert code == 1 and str(holder.pid) in err
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=60)
        holder.stdout.close()
    assert cli("get", "--path", store, "apple")[0] == 0


def test_subprocess_exit_codes(tmp_path: Path) -> None:
    path = str(tmp_path / "db")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keeldb", *args], capture_output=True,
                              text=True, cwd=REPO, timeout=120)

    assert run("put", "--path", path, "k", "v").returncode == 0
    missing = run("get", "--path", path, "other")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert run("get", "k").returncode == 2  # usage error: --path missing


def test_help_lists_the_storage_commands(cli: Cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    for command in ("put", "get", "del", "scan", "stats", "check-store"):
        assert command in out

"""`keeldb bench checkers` on a small copy of the public corpora: verdicts, exit codes, JSON.

Never asserts on time: only that times are recorded, and that verdicts match the corpora's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from keeldb.bench import checkers as bench
from keeldb.cli.main import main
from keeldb.errors import UsageError

# A few small files per corpus, with both verdicts where the corpus has them.
PICKS: dict[str, list[str]] = {
    "porcupine": ["kv/c01-ok.txt", "kv/c01-bad.txt"],
    "knossos": ["data/cas-register/good/cas-register-bug.edn",
                "data/cas-register/bad/immediate-failure.edn"],
}
ELLE_PICKS = ["histories/paper-example.edn", "histories/si-without-g-single.edn",
              bench.ELLE_CASES]


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@pytest.fixture()
def mini(testdata_dir: Path, tmp_path: Path) -> Path:
    """A testdata folder holding only PICKS and ELLE_PICKS, with verdicts.json cut to match."""
    root = tmp_path / "testdata"
    for corpus, names in PICKS.items():
        doc = json.loads((testdata_dir / corpus / "verdicts.json").read_text())
        doc["histories"] = {n: doc["histories"][n] for n in names}
        (root / corpus).mkdir(parents=True)
        (root / corpus / "verdicts.json").write_text(json.dumps(doc))
        for n in names:
            _copy(testdata_dir / corpus / n, root / corpus / n)
    for n in ELLE_PICKS:
        _copy(testdata_dir / "elle" / n, root / "elle" / n)
    return root


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    rc = main(["bench", "checkers", *args, "--json"])
    out = capsys.readouterr().out
    return rc, (json.loads(out) if out.strip() else None)


def test_mini_corpus_verdicts_and_schema(mini: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    rc, printed = _run(capsys, "--testdata", str(mini), "--out", str(out))
    assert rc == 0
    result = json.loads(out.read_text())
    assert printed == result
    assert result["schema"] == bench.SCHEMA and result["ok"] is True
    assert {"cpu_model", "cores", "python"} <= result["machine"].keys()
    assert result["machine"]["cores"] >= 1

    assert result["corpora_run"] == ["porcupine", "knossos", "elle"] == sorted(
        result["corpora"], key=bench.CORPORA.index)
    for corpus in PICKS:
        c = result["corpora"][corpus]
        assert (c["files"], c["checks"], c["matched"], c["mismatched"]) == (2, 2, 2, 0)
        assert c["peak_rss_bytes"] > 0 and c["cpu_s"] >= 0 and c["steps"] > 0
        assert {f["name"] for f in c["slowest"]} == set(PICKS[corpus])
        assert all(f["steps"] > 0 for f in c["slowest"])
    elle = result["corpora"]["elle"]
    assert elle["files"] == 3 and elle["mismatched"] == 0 and elle["steps"] is None
    assert elle["checks"] == elle["matched"] >= 70  # 69 asserted unit checks + helpers + 2

    by_name = {(f["corpus"], f["name"]): f for f in result["files"]}
    # The verdict each file got is the one its corpus records.
    for corpus, names in PICKS.items():
        recorded = json.loads((mini / corpus / "verdicts.json").read_text())["histories"]
        for n in names:
            want = "valid" if recorded[n]["linearizable"] else "invalid"
            assert by_name[(corpus, n)]["verdict"] == want == by_name[(corpus, n)]["expected"]
    assert {f["verdict"] for f in result["files"] if f["corpus"] != "elle"} == {"valid",
                                                                               "invalid"}
    hist = {f["name"]: f for f in result["elle_histories"]}
    assert set(hist) == {"histories/paper-example.edn", "histories/si-without-g-single.edn"}
    assert hist["histories/paper-example.edn"]["detail"]["anomaly_types"] == ["G-single-item"]
    assert hist["histories/si-without-g-single.edn"]["detail"]["not"] == ["repeatable-read"]
    for f in hist.values():
        assert f["wall_s"] == pytest.approx(f["load_wall_s"] + f["check_wall_s"], abs=1e-5)
        assert f["detail"]["txn_count"] == 4
    assert any("huge-scc.edn not found" in n for n in result["notes"])
    t = result["totals"]
    assert (t["files"], t["mismatched"]) == (7, 0)
    assert t["run_wall_s"] >= 0 and t["run_cpu_s"] >= 0
    assert t["target_met"] in (True, False)  # every corpus ran, so the target is judged


def test_a_wrong_recorded_verdict_is_a_mismatch(mini: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    manifest = mini / "knossos" / "verdicts.json"
    doc = json.loads(manifest.read_text())
    bad = "data/cas-register/bad/immediate-failure.edn"
    doc["histories"][bad]["linearizable"] = True
    manifest.write_text(json.dumps(doc))
    out = tmp_path / "r.json"
    rc, result = _run(capsys, "--testdata", str(mini), "--corpus", "knossos", "--out", str(out))
    assert rc == 1
    assert result["ok"] is False and list(result["corpora"]) == ["knossos"]
    assert result["corpora_run"] == ["knossos"]
    c = result["corpora"]["knossos"]
    assert (c["matched"], c["mismatched"]) == (1, 1)
    assert c["mismatches"] == [f"{bad}: expected valid, got invalid"]
    assert result["totals"]["target_met"] is None  # only part of the corpus ran


def test_a_changed_file_is_a_mismatch(mini: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = mini / "porcupine" / "kv" / "c01-ok.txt"
    path.write_text(path.read_text() + "\n")
    rc, result = _run(capsys, "--testdata", str(mini), "--corpus", "porcupine", "--out",
                      str(tmp_path / "r.json"))
    assert rc == 1
    assert any("sha256" in m for m in result["corpora"]["porcupine"]["mismatches"])


def test_usage_errors_exit_2(mini: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.json")
    assert main(["bench", "checkers", "--testdata", str(tmp_path / "nowhere"), "--out",
                 out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "checkers", "--testdata", str(mini), "--corpus", "jepsen", "--out",
                 out]) == 2
    assert "unknown corpus jepsen" in capsys.readouterr().err
    shutil.rmtree(mini / "elle")
    assert main(["bench", "checkers", "--testdata", str(mini), "--out", out]) == 2
    assert not (tmp_path / "r.json").exists()


def test_find_testdata_order(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    (repo / "docs").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\n")
    beside = tmp_path / "shared" / "testdata"
    beside.mkdir(parents=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert bench.find_testdata(None, {}, repo / "docs") == beside
    assert bench.find_testdata(None, {bench.ENV_TESTDATA: str(other)}, repo) == other
    assert bench.find_testdata(other, {bench.ENV_TESTDATA: str(beside)}, repo) == other
    with pytest.raises(UsageError, match="pyproject.toml"):
        bench.find_testdata(None, {}, tmp_path)
    beside.rmdir()
    with pytest.raises(UsageError, match="does not exist"):
        bench.find_testdata(None, {}, repo)


def test_parse_corpora() -> None:
    assert bench.parse_corpora("all") == bench.CORPORA
    assert bench.parse_corpora("elle, porcupine") == ("porcupine", "elle")
    with pytest.raises(UsageError, match="unknown corpus"):
        bench.parse_corpora("porcupine,hermitage")

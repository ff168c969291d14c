"""Unit tests of the linearizability checker, its models, readers, timeline and CLI."""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import keeldb.cli.check_linear_cmds  # noqa: F401  (registers `keeldb check linear`)
from keeldb.check import Model, Result, linearizable
from keeldb.check.history import Op
from keeldb.check.jepsen_log import detect_format, parse_history, parse_jepsen_log
from keeldb.check.linear import check_operations, pair_history
from keeldb.check.models import CasRegister, Input, Output, model_by_name
from keeldb.check.timeline import render_html
from keeldb.cli.app import app
from keeldb.cli.main import main
from keeldb.errors import CheckError


def h(*events: tuple[Any, ...]) -> list[Op]:
    """Events as (process, type, f, value) or (process, type, f, value, key)."""
    ops = []
    for i, ev in enumerate(events):
        proc, typ, f, value = ev[:4]
        key = ev[4] if len(ev) > 4 else None
        ops.append(Op(index=i, process=proc, type=typ, f=f, key=key, value=value))
    return ops


# --- registers -------------------------------------------------------------------------------

def test_sequential_register_is_linearizable() -> None:
    hist = h((1, "invoke", "write", 1), (1, "ok", "write", 1),
             (2, "invoke", "read", None), (2, "ok", "read", 1))
    r = linearizable(hist, "register")
    assert r.valid and r.verdict == "valid" and not r.anomalies


def test_stale_read_after_completed_write_is_not_linearizable() -> None:
    hist = h((1, "invoke", "write", 1), (1, "ok", "write", 1),
             (1, "invoke", "write", 2), (1, "ok", "write", 2),
             (2, "invoke", "read", None), (2, "ok", "read", 1))
    r = linearizable(hist, "register")
    assert not r.valid and not r.unknown and r.verdict == "invalid"
    assert r.anomaly_kinds == ["nonlinearizable"]
    assert r.details["blocking"] == 4  # the read, named by its invocation's index
    assert "read" in r.explanation and "index 4..5" in r.explanation


def test_concurrent_read_may_see_either_value() -> None:
    for seen in (1, 2):
        hist = h((1, "invoke", "write", 1), (1, "ok", "write", 1),
                 (1, "invoke", "write", 2), (2, "invoke", "read", None),
                 (2, "ok", "read", seen), (1, "ok", "write", 2))
        assert linearizable(hist, "register").valid


def test_reads_must_agree_on_one_order() -> None:
    # Two writes concurrent with two sequential reads by different processes: the reads see
    # 1 then 2, and a third read (after both) sees 1 again: impossible.
    hist = h((1, "invoke", "write", 1), (2, "invoke", "write", 2),
             (3, "invoke", "read", None), (3, "ok", "read", 2),
             (3, "invoke", "read", None), (3, "ok", "read", 1),
             (1, "ok", "write", 1), (2, "ok", "write", 2),
             (4, "invoke", "read", None), (4, "ok", "read", 2))
    assert not linearizable(hist, "register").valid


def test_info_write_may_take_effect_late_or_never() -> None:
    base = [(1, "invoke", "write", 1), (1, "info", "write", 1),
            (2, "invoke", "read", None), (2, "ok", "read", None)]
    assert linearizable(h(*base), "register").valid  # never took effect (yet)
    later = base + [(3, "invoke", "read", None), (3, "ok", "read", 1)]
    assert linearizable(h(*later), "register").valid  # took effect between the reads
    back = later + [(2, "invoke", "read", None), (2, "ok", "read", None)]
    assert not linearizable(h(*back), "register").valid  # cannot un-happen


def test_invocation_without_completion_is_open_until_the_end() -> None:
    hist = h((1, "invoke", "write", 7), (2, "invoke", "read", None), (2, "ok", "read", 7))
    assert linearizable(hist, "register").valid
    ops = pair_history(hist)
    assert ops[0].open and ops[0].output.status == "info"


def test_failed_cas_semantics_are_a_model_option() -> None:
    hist = h((1, "invoke", "write", 1), (1, "ok", "write", 1),
             (2, "invoke", "cas", [1, 2]), (2, "fail", "cas", [1, 2]))
    # Jepsen/Knossos: a fail did not happen, so nothing is wrong.
    assert linearizable(hist, "cas-register").valid
    # Porcupine's etcd logs: a failed cas says the value was not 1, but it was.
    assert not linearizable(hist, "cas-register", failed_cas="not-from").valid


def test_info_cas_applies_only_when_it_matches() -> None:
    hist = h((1, "invoke", "cas", [0, 5]), (1, "info", "cas", [0, 5]),
             (2, "invoke", "read", None), (2, "ok", "read", 5))
    assert linearizable(hist, "cas-register", initial=0).valid
    assert not linearizable(hist, "cas-register", initial=3).valid


def test_nil_read_matches_anything_only_when_asked() -> None:
    hist = h((1, "invoke", "read", None), (1, "ok", "read", None))
    assert linearizable(hist, "cas-register", initial=0, nil_read_any=True).valid
    assert not linearizable(hist, "cas-register", initial=0).valid


def test_register_model_refuses_cas() -> None:
    hist = h((1, "invoke", "cas", [0, 1]), (1, "ok", "cas", [0, 1]))
    with pytest.raises(CheckError, match="no function 'cas'"):
        linearizable(hist, "register")


# --- pairing ---------------------------------------------------------------------------------

def test_completion_without_invocation_is_an_error() -> None:
    with pytest.raises(CheckError, match="index 0: ok 'read' of process 1 has no open"):
        pair_history(h((1, "ok", "read", 1)))


def test_a_process_runs_one_op_at_a_time() -> None:
    with pytest.raises(CheckError, match="still open"):
        pair_history(h((1, "invoke", "read", None), (1, "invoke", "read", None)))


def test_nemesis_events_are_ignored() -> None:
    hist = h(("nemesis", "invoke", "start", None), (1, "invoke", "acquire", None),
             ("nemesis", "info", "start", None), (1, "ok", "acquire", None))
    assert linearizable(hist, "mutex").valid


# --- other models and partitioning ------------------------------------------------------------

def test_mutex_double_acquire_is_not_linearizable() -> None:
    hist = h((1, "invoke", "acquire", None), (1, "ok", "acquire", None),
             (2, "invoke", "acquire", None), (2, "ok", "acquire", None))
    assert not linearizable(hist, "mutex").valid
    ok = h((1, "invoke", "acquire", None), (1, "ok", "acquire", None),
           (1, "invoke", "release", None), (2, "invoke", "acquire", None),
           (2, "ok", "acquire", None), (1, "ok", "release", None))
    assert linearizable(ok, "mutex").valid


def test_kv_append_and_get() -> None:
    hist = h((1, "invoke", "append", "a", "k"), (1, "ok", "append", "a", "k"),
             (2, "invoke", "append", "b", "k"), (2, "ok", "append", "b", "k"),
             (3, "invoke", "get", None, "k"), (3, "ok", "get", "ab", "k"))
    assert linearizable(hist, "kv").valid
    wrong = hist[:-1] + [Op(5, 3, "ok", "get", key="k", value="ba")]
    assert not linearizable(wrong, "kv").valid


def test_partitions_stop_at_the_first_failing_key() -> None:
    events: list[tuple[Any, ...]] = []
    for k in range(5):
        events += [(1, "invoke", "put", f"v{k}", f"k{k}"), (1, "ok", "put", f"v{k}", f"k{k}")]
    events += [(2, "invoke", "get", None, "k3"), (2, "ok", "get", "v0", "k3")]
    r = linearizable(h(*events), "kv")
    assert not r.valid and r.details["failed_key"] == "k3"
    verdicts = {p["key"]: p["verdict"] for p in r.details["per_part"]}
    assert verdicts["k3"] == "invalid" and r.details["parts"] == 5
    assert set(verdicts.values()) <= {"valid", "invalid", "unchecked"}


def test_multi_register_transactions() -> None:
    model = model_by_name("multi-register", initial={"x": 0, "y": 0})
    hist = h((1, "invoke", "txn", [["write", "x", 1], ["write", "y", 1]]),
             (1, "ok", "txn", [["write", "x", 1], ["write", "y", 1]]),
             (2, "invoke", "txn", [["read", "x", None], ["read", "y", None]]),
             (2, "ok", "txn", [["read", "x", 1], ["read", "y", 0]]))
    assert not linearizable(hist, model).valid  # a torn read of an atomic write


class Counter(Model):
    """A user-written model, as in the docs."""

    name = "counter"

    def init(self) -> Hashable:
        return 0

    def step(self, state: Any, inp: Input, out: Output) -> tuple[bool, Hashable]:
        if inp.f == "incr":
            return True, state + 1
        return out.status != "ok" or out.value == state, state


def test_a_user_model_plugs_in() -> None:
    hist = h((1, "invoke", "incr", None), (2, "invoke", "read", None),
             (2, "ok", "read", 0), (1, "ok", "incr", None),
             (2, "invoke", "read", None), (2, "ok", "read", 1))
    assert linearizable(hist, Counter()).valid
    bad = hist[:-1] + [Op(5, 2, "ok", "read", value=2)]
    assert not linearizable(bad, Counter()).valid


def test_budget_exhaustion_is_unknown_never_valid() -> None:
    # Many concurrent writes then a read of a value never written: exhausting the search
    # takes far more than 2,000 steps.
    events: list[tuple[Any, ...]] = [(p, "invoke", "write", p) for p in range(12)]
    events += [(p, "ok", "write", p) for p in range(12)]
    events += [(99, "invoke", "read", None), (99, "ok", "read", 42)]
    r = linearizable(h(*events), "register", steps_max=2_000)
    assert r.unknown and not r.valid and r.verdict == "unknown" and not bool(r)
    assert linearizable(h(*events), "register").verdict == "invalid"


# --- result and explanation -------------------------------------------------------------------

def test_result_to_json_round_trips() -> None:
    hist = h((1, "invoke", "write", 1), (1, "ok", "write", 1),
             (2, "invoke", "read", None), (2, "ok", "read", 3))
    r = linearizable(hist, "register")
    data = json.loads(json.dumps(r.to_json()))
    assert data["verdict"] == "invalid" and data["checker"] == "linearizable"
    assert data["anomalies"][0]["kind"] == "nonlinearizable"
    assert data["details"]["linearized"] == [0]
    assert Result(valid=True, checker="x").to_json()["valid"] is True
    with pytest.raises(AssertionError):
        Result(valid=True, checker="x", unknown=True)


# --- readers ---------------------------------------------------------------------------------

def test_jepsen_log_reader() -> None:
    text = ("INFO  jepsen.util - 3\t:invoke\t:cas\t[3 0]\n"
            "some other log line\n"
            "INFO  jepsen.util - 3\t:fail\t:cas\t[3 0]\n"
            "INFO  jepsen.util - 4  :invoke  :read  nil\n"
            "INFO  jepsen.util - 4  :fail  :read  :timed-out\n")
    assert detect_format(text) == "jepsen-log"
    ops = parse_jepsen_log(text)
    assert [(o.process, o.type, o.f, o.value) for o in ops] == [
        (3, "invoke", "cas", [3, 0]), (3, "fail", "cas", [3, 0]),
        (4, "invoke", "read", None), (4, "fail", "read", None)]


def test_jepsen_log_errors_name_the_line() -> None:
    with pytest.raises(CheckError, match=r"x\.log:2: type must be"):
        parse_jepsen_log("\nINFO  jepsen.util - 3 :bogus :read nil\n", "x.log")


def test_history_given_as_text_or_path(tmp_path: Path) -> None:
    hist = h((1, "invoke", "write", 1), (1, "ok", "write", 1),
             (2, "invoke", "read", None), (2, "ok", "read", 2))
    text = "".join(json.dumps(o.to_json()) + "\n" for o in hist)
    assert linearizable(text, "register").verdict == "invalid"
    path = tmp_path / "h.jsonl"
    path.write_text(text)
    assert linearizable(path, "register").verdict == "invalid"
    assert linearizable(str(path), "register", fmt="jsonl").verdict == "invalid"
    edn = "[{:process 1 :type :invoke :f :write :value 1} {:process 1 :type :ok :f :write}]"
    assert linearizable(edn, "register").valid


def test_porcupine_kv_reader_and_detection() -> None:
    text = ('{:process 9, :type :invoke, :f :append, :key "0", :value "x 9 0 y"}\n'
            '{:process 9, :type :ok, :f :append, :key "0", :value "x 9 0 y"}\n')
    assert detect_format(text) == "porcupine-kv"
    ops = parse_history(text)
    assert ops[1] == Op(1, 9, "ok", "append", key="0", value="x 9 0 y")
    assert parse_history(text, "edn") == ops  # the generic EDN reader agrees


# --- timeline --------------------------------------------------------------------------------

def test_timeline_highlights_the_failing_operations() -> None:
    hist = h((1, "invoke", "write", 1, "a"), (1, "ok", "write", 1, "a"),
             (2, "invoke", "read", None, "a"), (2, "ok", "read", 5, "a"),
             (3, "invoke", "write", 1, "b"))
    ops = pair_history(hist)
    model = CasRegister()
    result, _ = check_operations(ops, model)
    page = render_html(ops, result, model, title="t")
    assert page.startswith("<!DOCTYPE html>") and "INVALID" in page
    assert page.count("<rect") >= 2 and "#e53935" in page  # the read is red
    assert "key &#x27;a&#x27;" in page and "process 3" not in page  # only the failed key


def test_timeline_of_a_valid_history_shows_every_operation() -> None:
    hist = h((1, "invoke", "write", 1, "a"), (1, "ok", "write", 1, "a"),
             (3, "invoke", "write", 2, "b"))
    ops = pair_history(hist)
    model = CasRegister()
    result, _ = check_operations(ops, model)
    page = render_html(ops, result, model)
    assert "VALID" in page and "process 1" in page and "process 3" in page
    assert 'fill="url(#open)"' in page  # the never-completed write is drawn open


# --- CLI -------------------------------------------------------------------------------------

def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["check", "linear", *args])


def _write(tmp_path: Path, name: str, ops: list[Op]) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(o.to_json()) + "\n" for o in ops))
    return path


def test_cli_exit_codes(tmp_path: Path) -> None:
    good = _write(tmp_path, "good.jsonl", h((1, "invoke", "write", 1), (1, "ok", "write", 1)))
    bad = _write(tmp_path, "bad.jsonl", h((1, "invoke", "write", 1), (1, "ok", "write", 1),
                                          (2, "invoke", "read", None), (2, "ok", "read", 2)))
    assert _cli(str(good), "--model", "register").exit_code == 0
    out = tmp_path / "t.html"
    res = _cli(str(bad), "--model", "register", "--html", str(out), "--json")
    assert res.exit_code == 3, res.output
    assert json.loads(res.output)["verdict"] == "invalid" and "<svg" in out.read_text()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"process": 1, "type": "invoke", "f": "read"}\n{"process": 1,\n')
    res = _cli(str(broken))
    assert res.exit_code == 2 and "broken.jsonl:2" in res.output
    assert _cli(str(good), "--model", "nope").exit_code == 2
    # The `keeldb` entry point passes the codes through.
    assert main(["check", "linear", str(good), "--model", "register"]) == 0
    assert main(["check", "linear", str(bad), "--model", "register"]) == 3
    assert main(["check", "linear", str(broken)]) == 2


def test_cli_unknown_is_not_a_pass(tmp_path: Path) -> None:
    events: list[tuple[Any, ...]] = [(p, "invoke", "write", p) for p in range(12)]
    events += [(p, "ok", "write", p) for p in range(12)]
    events += [(99, "invoke", "read", None), (99, "ok", "read", 42)]
    path = _write(tmp_path, "hard.jsonl", h(*events))
    res = _cli(str(path), "--model", "register", "--steps-max", "2000", "--json")
    assert res.exit_code == 3 and json.loads(res.output)["verdict"] == "unknown"


def test_cli_reads_a_jepsen_log_with_porcupine_semantics(tmp_path: Path) -> None:
    log = tmp_path / "etcd.log"
    # A failed cas [1 2] while the register holds 1: a violation only under the etcd reading.
    log.write_text("INFO  jepsen.util - 0\t:invoke\t:write\t1\n"
                   "INFO  jepsen.util - 0\t:ok\t:write\t1\n"
                   "INFO  jepsen.util - 1\t:invoke\t:cas\t[1 2]\n"
                   "INFO  jepsen.util - 1\t:fail\t:cas\t[1 2]\n")
    assert _cli(str(log)).exit_code == 3
    assert _cli(str(log), "--failed-cas", "no-effect").exit_code == 0

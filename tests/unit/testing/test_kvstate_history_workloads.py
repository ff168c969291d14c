"""The reference systems' state machine and log format, the recorder and the workloads."""

from __future__ import annotations

import json
import random

import pytest

from keeldb.check.history import parse_jsonl
from keeldb.errors import UsageError
from keeldb.testing.history import HistoryRecorder
from keeldb.testing.kvstate import BANK_INITIAL, apply_command, decode_records, encode_record
from keeldb.testing.workloads import WORKLOADS, make_workload


def test_commands() -> None:
    s: dict[object, object] = {}
    assert apply_command(s, "read", "x", None) == ("ok", None)
    assert apply_command(s, "write", "x", 1) == ("ok", 1)
    assert apply_command(s, "cas", "x", [2, 3])[0] == "fail"
    assert apply_command(s, "cas", "x", [1, 3])[0] == "ok" and s["x"] == 3
    kind, done = apply_command(s, "txn", None, [["append", "l", 1], ["append", "l", 2],
                                                ["r", "l", None], ["w", "y", 5]])
    assert kind == "ok" and done[2] == ["r", "l", [1, 2]] and s["y"] == 5
    done[2][2].append(99)  # results never alias the state
    assert s["l"] == [1, 2]
    assert apply_command(s, "transfer", None, ["a", "b", 30]) == ("ok", ["a", "b", 30])
    assert apply_command(s, "transfer", None, ["a", "b", 1000])[0] == "fail"
    assert apply_command(s, "read-accounts", None, ["a", "b", "c"]) == (
        "ok", {"a": BANK_INITIAL - 30, "b": BANK_INITIAL + 30, "c": BANK_INITIAL})
    with pytest.raises(UsageError, match="unknown function"):
        apply_command(s, "explode", None, None)


def test_records_stop_at_a_torn_or_corrupt_tail() -> None:
    data = encode_record([1, "write", "x", 1]) + encode_record([2, "write", "x", 2])
    assert decode_records(data) == ([[1, "write", "x", 1], [2, "write", "x", 2]], len(data))
    first = len(encode_record([1, "write", "x", 1]))
    assert decode_records(data[:-3]) == ([[1, "write", "x", 1]], first)
    corrupt = bytearray(data)
    corrupt[-1] ^= 1
    assert decode_records(bytes(corrupt))[1] == first


def test_recorder_writes_the_history_format() -> None:
    r = HistoryRecorder()
    r.invoke(0, "write", "x", 1, 10)
    r.invoke(1, "read", "x", None, 11)
    r.complete(0, "ok", 1, 12)
    r.close_all(20)
    ops = parse_jsonl("".join(r.jsonl()))
    assert [(o.process, o.type, o.f, o.time) for o in ops] == [
        (0, "invoke", "write", 10), (1, "invoke", "read", 11), (0, "ok", "write", 12),
        (1, "info", "read", 20)]
    assert json.loads(next(r.jsonl()))["key"] == "x"
    with pytest.raises(AssertionError, match="already has an open operation"):
        r.invoke(0, "read", "x", None, 30)
        r.invoke(0, "read", "x", None, 31)


def test_workloads_generate_unique_values_and_final_reads() -> None:
    reg = make_workload("register")
    rng = random.Random(1)
    written = [v for f, _, v in (reg.next_op(rng) for _ in range(300)) if f == "write"]
    assert len(written) == len(set(written)) > 50
    assert {f for f, _, _ in reg.final_ops()} == {"read"}
    la = make_workload("list-append")
    appended = [v for _, _, micro in (la.next_op(rng) for _ in range(200))
                for mf, _, v in micro if mf == "append"]
    assert len(appended) == len(set(appended)) > 50
    bank = make_workload("bank")
    assert {f for f, _, _ in (bank.next_op(rng) for _ in range(50))} == {"transfer",
                                                                         "read-accounts"}
    assert set(WORKLOADS) == {"register", "list-append", "bank"}
    with pytest.raises(UsageError, match="unknown workload"):
        make_workload("queue")

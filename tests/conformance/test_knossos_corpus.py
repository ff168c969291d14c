"""Knossos's public histories: 120 cas-register, one multi-register, one mutex; every verdict.

Jepsen's conventions (corpus README): a `fail` op did not happen, `info` ops may happen or not,
a read of nil matches any state, cas-registers start at 0, the multi-register at x=0, y=0.
Where Knossos's tests pin down the operation that cannot be linearized, ours must name it too.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from keeldb.check.jepsen_log import load_history
from keeldb.check.linear import check_operations, pair_history
from keeldb.check.models import CasRegister, Model, MultiRegister, Mutex

CORPUS = "knossos"
# "failing op {:process 21 :type :ok :f :read :value 2 :index 14}" or "process 1 read 3 index 3"
_DETAIL = re.compile(r"process (\d+)\b.*?(?::f :read :value |read )(\d+).*?index (\d+)")


def _verdicts(testdata_dir: Path) -> dict[str, Any]:
    histories: dict[str, Any] = json.loads(
        (testdata_dir / CORPUS / "verdicts.json").read_text())["histories"]
    return histories


def _model(entry: dict[str, Any]) -> Model:
    if entry["model"] == "cas-register":
        return CasRegister(initial=entry.get("initial_value", 0), nil_read_any=True)
    if entry["model"].startswith("multi-register"):
        return MultiRegister(initial={"x": 0, "y": 0})
    assert entry["model"] == "mutex", entry["model"]
    return Mutex()


def _check(testdata_dir: Path, part: str) -> tuple[int, int, list[str]]:
    """Check every history under data/<part>/; return (checked, pinned ops matched, wrong)."""
    checked, pinned, wrong = 0, 0, []
    for name, entry in sorted(_verdicts(testdata_dir).items()):
        if not name.startswith(f"data/{part}/"):
            continue
        path = testdata_dir / CORPUS / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
        ops = pair_history(load_history(path))
        result, _ = check_operations(ops, _model(entry))
        checked += 1
        if result.unknown or result.valid != entry["linearizable"]:
            wrong.append(f"{name}: expected linearizable={entry['linearizable']}, "
                         f"got {result.verdict}")
            continue
        m = _DETAIL.search(entry.get("detail") or "")
        if m is not None and not result.valid:
            process, value, index = (int(g) for g in m.groups())
            blocking = next(o for o in ops if o.call_index == result.details["blocking"])
            got = (blocking.process, blocking.input.f, blocking.output.value, blocking.ret_index)
            if got != (process, "read", value, index):
                wrong.append(f"{name}: Knossos names {(process, 'read', value, index)} as the "
                             f"op that cannot be linearized, we name {got}")
            pinned += 1
    return checked, pinned, wrong


def test_counts(testdata_dir: Path) -> None:
    h = _verdicts(testdata_dir)
    cas = [n for n in h if "/cas-register/" in n]
    assert len(cas) == 120 and sum(h[n]["linearizable"] for n in cas) == 113


def test_every_cas_register_verdict(testdata_dir: Path) -> None:
    checked, pinned, wrong = _check(testdata_dir, "cas-register")
    assert wrong == []
    assert checked == 120 and pinned == 5


def test_multi_register_verdict(testdata_dir: Path) -> None:
    assert _check(testdata_dir, "multi-register") == (1, 0, [])


def test_mutex_verdict(testdata_dir: Path) -> None:
    assert _check(testdata_dir, "mutex") == (1, 0, [])

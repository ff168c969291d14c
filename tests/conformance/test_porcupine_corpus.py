"""Porcupine's public histories (102 Jepsen etcd logs, 6 key-value histories): every verdict.

The verdicts come from Porcupine's own tests (see the corpus README and verdicts.json). The etcd
logs use Porcupine's etcd model: the register starts empty (a nil read means "nothing written
yet") and a failed cas says the value was not `from`. Each group is one test that checks every
history and lists every disagreement.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from keeldb.check import Model, linearizable
from keeldb.check.models import KV, CasRegister

CORPUS = "porcupine"


def _verdicts(testdata_dir: Path) -> dict[str, Any]:
    histories: dict[str, Any] = json.loads(
        (testdata_dir / CORPUS / "verdicts.json").read_text())["histories"]
    return histories


def _disagreements(testdata_dir: Path, prefix: str, model: Model) -> tuple[int, list[str]]:
    checked, wrong = 0, []
    for name, entry in sorted(_verdicts(testdata_dir).items()):
        if not name.startswith(prefix):
            continue
        path = testdata_dir / CORPUS / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], \
            f"{name} differs from the copy whose verdict is recorded"
        result = linearizable(path, model)
        checked += 1
        if result.unknown or result.valid != entry["linearizable"]:
            wrong.append(f"{name}: expected linearizable={entry['linearizable']}, "
                         f"got {result.verdict}")
        elif not result.valid:
            assert result.details["blocking"] is not None and result.explanation
    return checked, wrong


def test_counts(testdata_dir: Path) -> None:
    h = _verdicts(testdata_dir)
    etcd = [n for n in h if n.startswith("jepsen_etcd/")]
    assert len(etcd) == 102 and sum(h[n]["linearizable"] for n in etcd) == 23
    assert len([n for n in h if n.startswith("kv/")]) == 6


def test_every_etcd_verdict(testdata_dir: Path) -> None:
    etcd = CasRegister(initial=None, nil_read_any=False, failed_cas="not-from")
    checked, wrong = _disagreements(testdata_dir, "jepsen_etcd/", etcd)
    assert checked == 102 and wrong == []


def test_every_kv_verdict(testdata_dir: Path) -> None:
    checked, wrong = _disagreements(testdata_dir, "kv/", KV())
    assert checked == 6 and wrong == []


@pytest.mark.slow
def test_etcd_verdicts_do_not_depend_on_failed_cas_reading(testdata_dir: Path) -> None:
    """The README: the verdicts are the same when a failed cas means "did not happen"."""
    checked, wrong = _disagreements(testdata_dir, "jepsen_etcd/",
                                    CasRegister(failed_cas="no-effect"))
    assert checked == 102 and wrong == []

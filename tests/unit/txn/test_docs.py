"""The examples of docs/transactions.md run, and print what the page shows."""

from __future__ import annotations

import doctest
import tempfile
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "transactions.md"


def test_transactions_guide_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' database goes here
    failures, tried = doctest.testfile(str(DOC), module_relative=False,
                                       optionflags=doctest.ELLIPSIS)
    assert tried >= 20
    assert failures == 0
    assert any(tmp_path.iterdir())

"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _testdata() -> Path:
    """Public test material (histories with known verdicts), kept beside the repository.

    Set KEELDB_TESTDATA to point elsewhere.
    """
    env = os.environ.get("KEELDB_TESTDATA")
    return Path(env) if env else REPO.parent / "shared" / "testdata"


TESTDATA = _testdata()


@pytest.fixture(scope="session")
def testdata_dir() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip(f"public test material not found at {TESTDATA}; set KEELDB_TESTDATA")
    return TESTDATA

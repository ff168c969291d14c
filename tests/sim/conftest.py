"""Many-seed swarms are marked `slow` and run only when asked for: `pytest -m slow tests/sim`."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="many-seed swarm: run with `python -m pytest -m slow tests/sim`")
    for item in items:
        if "slow" in item.keywords and "tests/sim" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)

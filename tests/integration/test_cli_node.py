"""`keeldb node status|partition|isolate|heal` against a real node process on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keeldb.runtime.real.launch import NodeProcess, local_cluster


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    spec = local_cluster("echo", ["n1", "n2"], tmp_path)[0]
    proc = NodeProcess(spec)
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


def _keeldb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keeldb", *args], capture_output=True,
                          text=True, timeout=60)


def test_partition_status_and_heal_through_the_cli(node: NodeProcess) -> None:
    admin = f"127.0.0.1:{node.spec.admin_port}"
    out = _keeldb("node", "partition", "--admin", admin, "--drop-to", "n2", "--json")
    assert out.returncode == 0, out.stderr
    faults = json.loads(out.stdout)
    assert faults["drop_to"] == ["n2"]
    status = json.loads(_keeldb("node", "status", "--admin", admin, "--json").stdout)
    assert status["transport"]["faults"]["drop_to"] == ["n2"]
    healed = json.loads(_keeldb("node", "heal", "--admin", admin, "--json").stdout)
    assert healed["drop_to"] == []
    isolated = json.loads(_keeldb("node", "isolate", "--admin", admin, "--json").stdout)
    assert "n2" in isolated["drop_to"] and "n2" in isolated["drop_from"]


def test_unreachable_admin_port_is_a_one_line_error(tmp_path: Path) -> None:
    from keeldb.runtime.real.launch import free_port

    out = _keeldb("node", "status", "--admin", f"127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "error" in out.stderr


def test_bad_admin_address_is_a_usage_error() -> None:
    out = _keeldb("node", "status", "--admin", "nonsense")
    assert out.returncode == 2

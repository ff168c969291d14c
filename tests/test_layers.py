"""The import rules of DESIGN.md, enforced by walking every module's AST.

- Imports go downward only (see LAYERS).
- Below `runtime/` (the sans-IO cores) no asyncio, socket, threading, time, os, subprocess,
  select, signal, module-level random, and no call to the builtin `open`.
- `runtime.real` and `runtime.sim` never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "keeldb"

# Lower number = lower layer. A module may import only from layers <= its own.
LAYERS: dict[str, int] = {
    "limits": 0, "types": 0, "errors": 0,
    "ports": 1, "codec": 1,
    "storage": 2, "consensus": 2, "replication": 2, "sharding": 2, "check": 2,
    "txn": 3, "changefeed": 3,
    "node": 4,
    "runtime": 5,
    "server": 6, "client": 6, "embedded": 6, "testing": 6, "bench": 6, "cli": 7,
    "__init__": 8, "__main__": 8,
}
SANS_IO_MAX_LAYER = 4
FORBIDDEN_SANS_IO = {"asyncio", "socket", "threading", "time", "os", "subprocess", "select",
                     "signal", "multiprocessing", "shutil", "tempfile"}
# check/ reads history files; it is analysis, not a protocol core.
OPEN_ALLOWED = {"check"}


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py"))


def _part(path: Path) -> tuple[str, ...]:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts


def _top(parts: tuple[str, ...]) -> str:
    return parts[0] if parts else "__init__"


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "keeldb":
                found += [(f"keeldb.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
    return found


def test_every_top_level_module_has_a_layer() -> None:
    tops = {_top(_part(p)) for p in _modules()}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_layers(path: Path) -> None:
    parts = _part(path)
    top = _top(parts)
    layer = LAYERS[top]
    tree = ast.parse(path.read_text(), filename=str(path))
    problems: list[str] = []
    for name, line in _imports(tree):
        root = name.split(".")[0]
        if root == "keeldb":
            target_parts = name.split(".")[1:]
            if not target_parts:
                if layer < LAYERS["__init__"] and top != "__init__":
                    problems.append(f"line {line}: imports the package root 'keeldb'")
                continue
            target = target_parts[0]
            if target not in LAYERS:
                continue  # an attribute of the root such as keeldb.errors handled above
            if LAYERS[target] > layer:
                problems.append(f"line {line}: {top} (layer {layer}) imports {name} "
                                f"(layer {LAYERS[target]})")
            if parts[:2] == ("runtime", "real") and target_parts[:2] == ["runtime", "sim"]:
                problems.append(f"line {line}: runtime.real imports runtime.sim")
            if parts[:2] == ("runtime", "sim") and target_parts[:2] == ["runtime", "real"]:
                problems.append(f"line {line}: runtime.sim imports runtime.real")
        elif layer <= SANS_IO_MAX_LAYER and root in FORBIDDEN_SANS_IO:
            if not (top in OPEN_ALLOWED and root == "os"):
                problems.append(f"line {line}: sans-IO module imports {root}")
    if layer <= SANS_IO_MAX_LAYER:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "open" and top not in OPEN_ALLOWED):
                problems.append(f"line {node.lineno}: sans-IO module calls open()")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "random"
                    and node.func.attr != "Random"):
                problems.append(f"line {node.lineno}: uses module-level random.{node.func.attr}; "
                                "take a seeded random.Random instead")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)

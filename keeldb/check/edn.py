"""Read Jepsen's EDN histories into keeldb `Op`s (via the `edn_format` package).

Keywords become plain strings (`:invoke` -> "invoke"), vectors and lists become lists, maps
become dicts, `nil` becomes None. A file may hold one vector of maps or one map per line.
"""

from __future__ import annotations

from typing import Any

import edn_format
from edn_format import Keyword, Symbol

from keeldb.check.history import Op, op_from_dict
from keeldb.errors import CheckError


def to_python(value: Any) -> Any:
    """Convert a value read by `edn_format` into plain Python data."""
    if isinstance(value, Keyword):
        return value.name
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, dict) or hasattr(value, "items"):
        return {to_python(k): to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ImmutableList":
        return [to_python(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_python(v) for v in value]
    return value


def parse_edn_values(text: str, source: str = "<edn>") -> list[Any]:
    """Parse every top-level EDN value in `text` into plain Python data."""
    try:
        values = edn_format.loads_all(text)
    except Exception as exc:  # edn_format raises its own EDNDecodeError and others
        raise CheckError(f"{source}: not valid EDN ({exc})") from exc
    return [to_python(v) for v in values]


def parse_edn_history(
    text: str, source: str = "<edn>", defaults: dict[str, Any] | None = None
) -> list[Op]:
    """Parse a Jepsen EDN history (a vector of op maps, or one op map per line)."""
    values = parse_edn_values(text, source)
    if len(values) == 1 and isinstance(values[0], list):
        values = values[0]
    ops: list[Op] = []
    for i, obj in enumerate(values):
        ops.append(op_from_dict(obj, len(ops), f"{source}: op {i}: ", defaults))
    return ops

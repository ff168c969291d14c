"""The verdict every checker returns: `Result`.

Shared by the linearizability checker (`keeldb.check.linear`) and the transactional checker
(`keeldb.check.txn`). A verdict is three-valued in spirit: `valid` is True (checked, no
violation), False (a violation was found), and `unknown` marks a search that ran out of its
budget before deciding; an unknown result always has `valid` False so that no caller ever
mistakes it for a pass, and `verdict` spells the three cases out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

VERDICT_VALID = "valid"
VERDICT_INVALID = "invalid"
VERDICT_UNKNOWN = "unknown"


@dataclass(frozen=True)
class Anomaly:
    """One thing found wrong: a short name, a readable explanation and its evidence.

    `kind` is a stable identifier (`nonlinearizable`, `G1c`, `G-single`, ...); `ops` lists the
    history indexes involved; `data` holds anything else a tool may want (cycles, keys, ...).
    """

    kind: str
    explanation: str
    ops: tuple[int, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "explanation": self.explanation, "ops": list(self.ops),
                "data": _jsonable(self.data)}


@dataclass(frozen=True)
class Result:
    """The outcome of a check.

    - `valid`: True only when the checker proved the history has no violation it looks for;
    - `unknown`: True when the checker gave up (budget exhausted); then `valid` is False;
    - `checker`: which checker produced it (`linearizable`, `transactions`, ...);
    - `anomalies`: what was found (empty when valid);
    - `explanation`: a few human-readable lines summarising the verdict;
    - `details`: checker-specific data (per-key verdicts, counts, steps, ...), JSON-able.
    """

    valid: bool
    checker: str
    anomalies: tuple[Anomaly, ...] = ()
    explanation: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    unknown: bool = False

    def __post_init__(self) -> None:
        assert not (self.valid and self.unknown), "an unknown result cannot be valid"
        assert not (self.valid and self.anomalies), "a valid result carries no anomalies"

    def __bool__(self) -> bool:
        return self.valid

    @property
    def verdict(self) -> str:
        """`valid`, `invalid` or `unknown`."""
        if self.valid:
            return VERDICT_VALID
        return VERDICT_UNKNOWN if self.unknown else VERDICT_INVALID

    @property
    def anomaly_kinds(self) -> list[str]:
        """The distinct anomaly kinds found, sorted."""
        return sorted({a.kind for a in self.anomalies})

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (stable keys) for `--json` output and files."""
        return {
            "checker": self.checker,
            "valid": self.valid,
            "unknown": self.unknown,
            "verdict": self.verdict,
            "anomaly_kinds": self.anomaly_kinds,
            "anomalies": [a.to_json() for a in self.anomalies],
            "explanation": self.explanation,
            "details": _jsonable(self.details),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


def _jsonable(value: Any) -> Any:
    """Convert tuples, sets and other values to plain JSON types (sets sorted by repr)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [_jsonable(v) for v in sorted(value, key=repr)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_json"):
        return _jsonable(value.to_json())
    return repr(value)

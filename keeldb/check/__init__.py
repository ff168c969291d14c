"""History checkers: linearizability and transactional anomalies (pure Python).

- `linearizable(history, model)`: Wing & Gong / Lowe search with P-compositionality;
- `transactions(history, isolation=...)`: Elle-style dependency-cycle checker
  (from `keeldb.check.txn`, imported on first use);
- `Result`: the verdict both return; models for the linearizability checker.
"""

from __future__ import annotations

from typing import Any

from keeldb.check.jepsen_log import load_history, parse_history
from keeldb.check.linear import linearizable, pair_history
from keeldb.check.models import (
    KV,
    MODEL_NAMES,
    CasRegister,
    Input,
    Model,
    MultiRegister,
    Mutex,
    Operation,
    Output,
    Register,
    model_by_name,
)
from keeldb.check.result import Anomaly, Result

__all__ = [
    "KV",
    "MODEL_NAMES",
    "Anomaly",
    "CasRegister",
    "Input",
    "Model",
    "MultiRegister",
    "Mutex",
    "Operation",
    "Output",
    "Register",
    "Result",
    "linearizable",
    "load_history",
    "model_by_name",
    "pair_history",
    "parse_history",
    "transactions",
]


def transactions(history: Any, *args: Any, **kwargs: Any) -> Result:
    """Check a transactional history for isolation anomalies; see `keeldb.check.txn`.

    Imported lazily so that the linearizability checker works on its own.
    """
    from keeldb.check import txn

    result: Result = txn.transactions(history, *args, **kwargs)
    return result

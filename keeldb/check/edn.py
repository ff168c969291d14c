"""Read Jepsen's EDN histories into keeldb `Op`s (via the `edn_format` package).

Keywords become plain strings (`:invoke` -> "invoke"), vectors and lists become lists, maps
become dicts, `nil` becomes None. A file may hold one vector of maps or one map per line.
"""

from __future__ import annotations

import re
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


# The subset of EDN Jepsen histories use, read by a fast tokenizer; anything else (tags,
# sets, characters, decimals) goes to `edn_format`, which is exact but about 20x slower.
_TOKEN = re.compile(r"""[\s,]+|;[^\n]*|(?P<str>"(?:[^"\\]|\\.)*")|(?P<open>[\[({])|"""
                    r"""(?P<close>[\])}])|(?P<atom>[^\s,;\[\](){}"]+)""")
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_CLOSERS = {"[": "]", "(": ")", "{": "}"}


class _Unsupported(Exception):
    """The fast reader met syntax it leaves to `edn_format`."""


def _atom(tok: str) -> Any:
    if tok == "nil":
        return None
    if tok in ("true", "false"):
        return tok == "true"
    if tok[0] == ":":
        return tok[1:]
    if tok[0] in "#\\":
        raise _Unsupported(tok)
    if _INT.fullmatch(tok):
        return int(tok)
    if _FLOAT.fullmatch(tok):
        return float(tok)
    if tok[0].isdigit() or (len(tok) > 1 and tok[0] in "+-" and tok[1].isdigit()):
        raise _Unsupported(tok)  # 1N, 2.5M, ratios: the exact reader knows them
    return tok  # a symbol, by name


def _string(tok: str) -> str:
    body = tok[1:-1]
    if "\\" not in body:
        return body
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise _Unsupported(tok)
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _fast_values(text: str) -> list[Any]:
    """Parse with the fast reader; raise `_Unsupported` or `ValueError` when it cannot."""
    top: list[Any] = []
    stack: list[tuple[str, list[Any]]] = []
    cur = top
    pos, n = 0, len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _Unsupported(text[pos:pos + 10])
        pos = m.end()
        kind = m.lastgroup
        if kind is None:
            continue
        tok = m.group(kind)
        if kind == "open":
            stack.append((tok, cur))
            cur = []
        elif kind == "close":
            if not stack:
                raise ValueError(f"unmatched {tok!r}")
            opener, parent = stack.pop()
            if _CLOSERS[opener] != tok:
                raise ValueError(f"{opener!r} closed by {tok!r}")
            if opener == "{":
                if len(cur) % 2:
                    raise ValueError("a map needs an even number of forms")
                value: Any = dict(zip(cur[::2], cur[1::2], strict=True))
            else:
                value = cur
            parent.append(value)
            cur = parent
        elif kind == "str":
            cur.append(_string(tok))
        else:
            cur.append(_atom(tok))
    if stack:
        raise ValueError("unexpected end of input")
    return top


def parse_edn_values(text: str, source: str = "<edn>") -> list[Any]:
    """Parse every top-level EDN value in `text` into plain Python data."""
    try:
        return _fast_values(text)
    except (_Unsupported, ValueError, TypeError, IndexError):
        pass  # exact reader below: same result or a proper error message
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

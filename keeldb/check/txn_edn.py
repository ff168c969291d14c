"""A fast reader for Jepsen history EDN (the subset histories use).

`edn_format` (used by `keeldb.check.edn`) is general but slow on multi-megabyte histories:
several seconds for Elle's 2.8 MB `huge-scc.edn`. Histories use a small part of EDN: maps,
vectors, lists, sets, keywords, integers, floats, strings, nil/true/false, comments and the
odd tagged literal (`#inst "..."`, `#object[...]`, read as the tagged value). This reader
tokenises with one regular expression and builds values with an explicit stack, producing
the same plain data as `keeldb.check.edn.to_python` (keywords and symbols become strings).
Errors name the line.
"""

from __future__ import annotations

import bisect
import json
import re
from typing import Any

from keeldb import limits
from keeldb.check.history import Op, op_from_dict
from keeldb.errors import CheckError

# Blanks and comments are skipped by finditer's scanning; "bad" catches an unterminated string.
_TOKEN = re.compile(r"""
    (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<open>\#\{|[\[({])
  | (?P<close>[\])}])
  | (?P<atom>[^\s,;"\[\](){}]+)
  | (?P<comment>;[^\n]*)
  | (?P<bad>")
""", re.VERBOSE | re.DOTALL)
_INT = re.compile(r"[-+]?\d+N?")
_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?M?")
_CLOSERS = {"[": "]", "(": ")", "{": "}", "#{": "}"}
_CONSTANTS: dict[str, Any] = {"nil": None, "true": True, "false": False}
_TAG = object()  # marks a pending tagged literal on the stack


def _atom(text: str) -> Any:
    if text in _CONSTANTS:
        return _CONSTANTS[text]
    if text[0] == ":":
        return text[1:]
    if _INT.fullmatch(text):
        return int(text.rstrip("N"))
    if _FLOAT.fullmatch(text):
        return float(text.rstrip("M"))
    if text[0] == "\\":  # a character literal
        return text[1:]
    return text  # a symbol


def _string(token: str) -> str:
    try:
        value = json.loads(token)
    except json.JSONDecodeError:  # EDN allows escapes JSON does not; keep the raw text
        value = token[1:-1]
    assert isinstance(value, str)
    return value


class _Lines:
    def __init__(self, text: str) -> None:
        self.starts = [m.end() for m in re.finditer("\n", text)]

    def at(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos) + 1


def read_all(text: str, source: str = "<edn>") -> list[tuple[int, Any]]:
    """Every top-level value with the line it starts on."""
    lines = _Lines(text)
    out: list[tuple[int, Any]] = []
    # Each open collection: (opening token, items, start); tags wait as (_TAG, name, start).
    stack: list[tuple[Any, Any, int]] = []
    atoms: dict[str, Any] = {}  # histories repeat the same keywords and numbers
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        tok = m.group()
        if kind == "atom":
            if tok[0] == "#" and tok != "#":
                stack.append((_TAG, tok, m.start()))
                continue
            try:
                value = atoms[tok]
            except KeyError:
                value = atoms[tok] = _atom(tok)
        elif kind == "open":
            if len(stack) >= limits.txn_edn_depth_max:
                raise CheckError(f"{source}:{lines.at(m.start())}: EDN nested deeper than "
                                 f"{limits.txn_edn_depth_max} (limits.txn_edn_depth_max)")
            stack.append((tok, [], m.start()))
            continue
        elif kind == "close":
            if not stack or stack[-1][0] is _TAG or _CLOSERS[stack[-1][0]] != tok:
                raise CheckError(f"{source}:{lines.at(m.start())}: unexpected {tok!r}")
            opener, items, begin = stack.pop()
            value = items
            if opener == "{":
                if len(items) % 2:
                    raise CheckError(f"{source}:{lines.at(begin)}: a map needs an even "
                                     "number of forms")
                value = {_key(items[i]): items[i + 1] for i in range(0, len(items), 2)}
        elif kind == "str":
            value = _string(tok)
        elif kind == "comment":
            continue
        else:
            raise CheckError(f"{source}:{lines.at(m.start())}: a string is never closed")
        while stack and stack[-1][0] is _TAG:  # a tagged literal reads as its value
            stack.pop()
        if stack:
            stack[-1][1].append(value)
        else:
            out.append((lines.at(m.start()) if kind != "close" else lines.at(begin), value))
    if stack:
        what = stack[-1][1] if stack[-1][0] is _TAG else stack[-1][0]
        raise CheckError(f"{source}:{lines.at(stack[-1][2])}: {what!r} is never closed")
    return out


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def parse_history(text: str, source: str = "<edn>",
                  defaults: dict[str, Any] | None = None) -> list[Op]:
    """A Jepsen EDN history (one op map per line, or one vector of maps) as `Op`s."""
    values = read_all(text, source)
    if len(values) == 1 and isinstance(values[0][1], list):
        line = values[0][0]
        values = [(line, v) for v in values[0][1]]
    ops: list[Op] = []
    for line, obj in values:
        ops.append(op_from_dict(obj, len(ops), f"{source}:{line}: ", defaults))
    return ops

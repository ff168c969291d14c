"""Read the history formats the linearizability checker accepts.

- `jsonl`: keeldb's own JSON-lines history (`keeldb.check.history`);
- `edn`: a Jepsen/Knossos EDN vector of op maps (`keeldb.check.edn`);
- `jepsen-log`: Jepsen 0.0.x text logs as in Porcupine's etcd corpus, one op per line:
  `INFO  jepsen.util - <process> <type> <f> <value>`, fields split on whitespace; other log
  lines are ignored;
- `porcupine-kv`: Porcupine's key-value histories, one EDN map per line with `:process`,
  `:type`, `:f`, `:key` and `:value` (a fast reader; anything else falls back to EDN).

Every reader raises `CheckError` naming the source, the line and what is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from keeldb.check.edn import parse_edn_history, parse_edn_values
from keeldb.check.history import OP_TYPES, Op, parse_jsonl
from keeldb.errors import CheckError

FORMATS: tuple[str, ...] = ("auto", "jsonl", "edn", "jepsen-log", "porcupine-kv")

_JEPSEN_MARK = "jepsen.util -"
_KV_LINE = re.compile(
    r'^\{:process (\d+), :type :(\w+), :f :(\w+), :key "((?:[^"\\]|\\.)*)", '
    r':value (nil|"(?:[^"\\]|\\.)*")\}$')


def detect_format(text: str) -> str:
    """Guess a history's format from its first meaningful line."""
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(";"):
            continue
        if _JEPSEN_MARK in s:
            return "jepsen-log"
        if s.startswith("{\""):
            return "jsonl"
        if _KV_LINE.match(s):
            return "porcupine-kv"
        return "edn"
    return "jsonl"  # an empty file is an empty history in any format


def parse_history(text: str, fmt: str = "auto", source: str = "<history>") -> list[Op]:
    """Parse `text` in format `fmt` (see FORMATS) into `Op`s."""
    if fmt not in FORMATS:
        raise CheckError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(text)
    if fmt == "jsonl":
        return parse_jsonl(text, source)
    if fmt == "jepsen-log":
        return parse_jepsen_log(text, source)
    if fmt == "porcupine-kv":
        return parse_porcupine_kv(text, source)
    return parse_edn_history(text, source)


def load_history(path: Path, fmt: str = "auto") -> list[Op]:
    """Read and parse a history file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckError(f"cannot read history {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CheckError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    return parse_history(text, fmt, str(path))


def parse_jepsen_log(text: str, source: str = "<jepsen-log>") -> list[Op]:
    """Parse a Jepsen 0.0.x text log (`INFO jepsen.util - 3 :invoke :cas [3 0]`)."""
    ops: list[Op] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        at = line.find(_JEPSEN_MARK)
        if at < 0:
            continue
        where = f"{source}:{lineno}: "
        fields = line[at + len(_JEPSEN_MARK):].split(None, 3)
        if len(fields) < 3:
            raise CheckError(f"{where}expected '<process> <type> <f> [value]' after "
                             f"{_JEPSEN_MARK!r}, got {line.strip()!r}")
        proc_s, type_s, f_s = fields[:3]
        value_s = fields[3].strip() if len(fields) > 3 else "nil"
        process: Any = int(proc_s) if proc_s.lstrip("-").isdigit() else proc_s.lstrip(":")
        typ = type_s.lstrip(":")
        if typ not in OP_TYPES:
            raise CheckError(f"{where}type must be one of :{', :'.join(OP_TYPES)}, "
                             f"got {type_s!r}")
        if not f_s.startswith(":"):
            raise CheckError(f"{where}the function must be a keyword like :read, got {f_s!r}")
        value = _jepsen_value(value_s, where)
        if value == "timed-out" and typ in ("info", "fail"):
            value = None  # the log puts the error where the value goes
        ops.append(Op(index=len(ops), process=process, type=typ, f=f_s[1:], value=value))
    return ops


def _jepsen_value(s: str, where: str) -> Any:
    if s == "nil":
        return None
    if s.lstrip("-").isdigit():
        return int(s)
    values = parse_edn_values(s, where.rstrip(": "))
    if len(values) != 1:
        raise CheckError(f"{where}expected one value, got {s!r}")
    return values[0]


def parse_porcupine_kv(text: str, source: str = "<porcupine-kv>") -> list[Op]:
    """Parse Porcupine's kv histories (one EDN map per line); unusual lines go through EDN."""
    ops: list[Op] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith(";"):
            continue
        m = _KV_LINE.match(s)
        if m is None:
            parsed = parse_edn_history(s, f"{source}:{lineno}")
            if len(parsed) != 1:
                raise CheckError(f"{source}:{lineno}: expected one op map, got {s!r}")
            op = parsed[0]
            ops.append(Op(index=len(ops), process=op.process, type=op.type, f=op.f,
                          key=op.key, value=op.value))
            continue
        proc, typ, f, key, raw = m.groups()
        if typ not in OP_TYPES:
            raise CheckError(f"{source}:{lineno}: type must be one of {', '.join(OP_TYPES)}, "
                             f"got {typ!r}")
        value = None if raw == "nil" else _unquote(raw)
        ops.append(Op(index=len(ops), process=int(proc), type=typ, f=f, key=_unquote_body(key),
                      value=value))
    return ops


def _unquote(raw: str) -> str:
    return _unquote_body(raw[1:-1])


def _unquote_body(body: str) -> str:
    if "\\" not in body:
        return body
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)

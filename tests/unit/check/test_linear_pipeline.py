"""The linearizability checker's order constraint for pipelined requests (`after` links)."""

from __future__ import annotations

from typing import Any

from keeldb.check import linearizable
from keeldb.check.history import Op, dump_jsonl, parse_jsonl


def ev(i: int, proc: Any, typ: str, f: str, key: str, value: Any,
       after: int | None = None) -> Op:
    return Op(index=i, process=proc, type=typ, f=f, key=key, value=value, after=after)


def set_then_get(get_after: int | None, got: Any) -> list[Op]:
    """One connection pipelines `SET k v1; GET k` (both sent before either answer); "" is nil."""
    return [ev(0, (7, 0), "invoke", "put", "k", "v1"),
            ev(1, (7, 1), "invoke", "get", "k", None, after=get_after),
            ev(2, (7, 1), "ok", "get", "k", got),
            ev(3, (7, 0), "ok", "put", "k", "v1")]


def test_pipelined_get_seeing_nil_is_linearizable_only_without_the_constraint() -> None:
    assert linearizable(set_then_get(None, ""), "kv").valid
    r = linearizable(set_then_get(0, ""), "kv")
    assert not r.valid and not r.unknown


def test_pipelined_get_seeing_the_set_passes_with_the_constraint() -> None:
    assert linearizable(set_then_get(0, "v1"), "kv").valid


def test_constraint_does_not_forbid_what_the_predecessor_allows() -> None:
    # GET first, SET after it: the GET reading nil is fine, reading 1 is not.
    hist = [ev(0, (7, 0), "invoke", "get", "k", None),
            ev(1, (7, 1), "invoke", "put", "k", "v1", after=0),
            ev(2, (7, 1), "ok", "put", "k", "v1"),
            ev(3, (7, 0), "ok", "get", "k", "")]
    assert linearizable(hist, "kv").valid
    bad = [*hist[:3], ev(3, (7, 0), "ok", "get", "k", "v1")]
    assert not linearizable(bad, "kv").valid


def test_constraint_follows_the_chain_through_another_key() -> None:
    # SET x 1; SET y 2; GET x -> nil, pipelined: GET x must follow SET x via SET y.
    def hist(after_get: int | None) -> list[Op]:
        return [ev(0, (1, 0), "invoke", "put", "x", "v1"),
                ev(1, (1, 1), "invoke", "put", "y", "v2", after=0),
                ev(2, (1, 2), "invoke", "get", "x", None, after=after_get),
                ev(3, (1, 2), "ok", "get", "x", ""),
                ev(4, (1, 1), "ok", "put", "y", "v2"),
                ev(5, (1, 0), "ok", "put", "x", "v1")]
    assert linearizable(hist(None), "kv").valid
    assert not linearizable(hist(1), "kv").valid


def test_unknown_outcome_predecessor_imposes_nothing() -> None:
    hist = [ev(0, (7, 0), "invoke", "put", "k", "v1"),
            ev(1, (7, 1), "invoke", "get", "k", None, after=0),
            ev(2, (7, 1), "ok", "get", "k", ""),
            ev(3, (7, 0), "info", "put", "k", "v1")]
    assert linearizable(hist, "kv").valid


def test_after_round_trips_through_jsonl_and_old_lines_load() -> None:
    ops = set_then_get(0, "")
    back = parse_jsonl("".join(dump_jsonl(ops)))
    assert [(o.index, o.after) for o in back] == [(o.index, o.after) for o in ops]
    old = parse_jsonl('{"process": 1, "type": "invoke", "f": "read", "key": "k"}\n')
    assert old[0].after is None
    assert not linearizable(back, "kv").valid

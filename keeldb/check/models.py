"""Sequential specifications (models) for the linearizability checker.

A model is a small class: an initial state, a `step` that says whether an operation with its
observed output is legal in a state (and the state after it), a `partition` that splits a
history into independent parts (P-compositionality: a history is linearizable iff every part
is), and `describe_*` helpers for explanations. States must be hashable (the search caches
(linearized set, state) pairs) and are never mutated.

Write your own by subclassing `Model`:

    class Counter(Model):
        name = "counter"
        def init(self): return 0
        def step(self, state, inp, out):
            if inp.f == "incr":
                return True, state + 1
            return out.status != "ok" or out.value == state, state   # read

Operation inputs and outputs reach `step` as `Input(f, key, value)` and
`Output(status, value)`, with values made hashable (lists as tuples, maps as sorted item
tuples) so a model can store and compare them directly; `status` is `ok`, `fail` (only for operations the model keeps with
`include`) or `info` (outcome unknown: any output is acceptable, the effect may or may not
have happened; an `info` operation is optional, the search may also leave it out).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from keeldb.errors import CheckError


class Input(NamedTuple):
    """What the client asked: function, key (None for single-object models), argument."""

    f: str
    key: Any
    value: Any


class Output(NamedTuple):
    """What the client saw: `ok`, `fail` or `info` (unknown), and the returned value."""

    status: str
    value: Any


@dataclass(frozen=True, slots=True)
class Operation:
    """One call of a paired history: its invocation, its completion (if any) and positions.

    `call` and `ret` are positions in the history's real-time order; `ret` is None when the
    operation never completed or completed with `info` (it stays open until the end).
    `call_index`/`ret_index` are the history's own `index` fields, for explanations.
    """

    id: int
    process: Any
    input: Input
    output: Output
    call: int
    ret: int | None
    call_index: int
    ret_index: int | None

    @property
    def open(self) -> bool:
        return self.ret is None


class Model:
    """Base class of all models; see the module docstring for how to write one."""

    name: str = "model"
    #: split the history by key (P-compositionality); False for models whose ops span keys
    per_key: bool = False
    #: the functions this model understands; None accepts any
    functions: frozenset[str] | None = None

    def init(self) -> Hashable:
        raise CheckError(f"model {self.name!r} must define init()")

    def step(self, state: Any, inp: Input, out: Output) -> tuple[bool, Hashable]:
        raise CheckError(f"model {self.name!r} must define step()")

    def include(self, op: Operation) -> bool:
        """Whether the search must place `op`. Default (Jepsen): a `fail` did not happen."""
        return op.output.status != "fail"

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        """Independent sub-histories, in order of first appearance (by key when `per_key`)."""
        if not self.per_key:
            return [list(ops)]
        parts: dict[Any, list[Operation]] = {}
        for op in ops:
            parts.setdefault(freeze(op.input.key), []).append(op)
        return list(parts.values())

    def validate(self, op: Operation) -> None:
        """Raise `CheckError` if the model cannot interpret `op` at all."""
        if self.functions is not None and op.input.f not in self.functions:
            raise CheckError(
                f"model {self.name!r} has no function {op.input.f!r} (op at index "
                f"{op.call_index}); it knows {', '.join(sorted(self.functions))}; "
                f"choose another --model")

    def describe_op(self, op: Operation) -> str:
        inp, out = op.input, op.output
        key = "" if inp.key is None else f"[{inp.key}]"
        arg = "" if inp.value is None else f" {inp.value!r}"
        if out.status in ("info", "fail"):
            res = "?" if out.status == "info" else "fail"
        else:
            res = "ok" if out.value is None or out.value == inp.value else repr(out.value)
        return f"{inp.f}{key}{arg} -> {res}"

    def describe_state(self, state: Any) -> str:
        return repr(state)


def freeze(value: Any) -> Hashable:
    """A hashable copy of a JSON-like value: lists become tuples, dicts sorted item tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    return value  # type: ignore[no-any-return]


class CasRegister(Model):
    """A register with read, write and compare-and-set, split by key.

    - `initial`: the value before any write (None: empty);
    - `nil_read_any`: a read that returned nil matches any state (Knossos/Jepsen); otherwise
      nil means "empty" and needs state None (Porcupine's etcd model);
    - `failed_cas`: `"no-effect"` (Jepsen: a `fail` op did not happen and is dropped) or
      `"not-from"` (Porcupine's etcd logs: a failed cas says the value was not `from`).
    """

    name = "cas-register"
    per_key = True
    functions: frozenset[str] | None = frozenset({"read", "write", "cas"})

    def __init__(self, initial: Any = None, nil_read_any: bool = False,
                 failed_cas: str = "no-effect") -> None:
        if failed_cas not in ("no-effect", "not-from"):
            raise CheckError(f"failed_cas must be 'no-effect' or 'not-from', got {failed_cas!r}")
        self.initial = freeze(initial)
        self.nil_read_any = nil_read_any
        self.failed_cas = failed_cas

    def init(self) -> Hashable:
        return self.initial

    def include(self, op: Operation) -> bool:
        if op.output.status != "fail":
            return True
        return self.failed_cas == "not-from" and op.input.f == "cas"

    def validate(self, op: Operation) -> None:
        super().validate(op)
        if op.input.f == "cas":
            v = op.input.value
            if not (isinstance(v, (list, tuple)) and len(v) == 2):
                raise CheckError(f"cas at index {op.call_index} needs a [from, to] value, "
                                 f"got {v!r}")

    def describe_op(self, op: Operation) -> str:
        if op.input.f == "read" and op.output.status == "ok":
            key = "" if op.input.key is None else f"[{op.input.key}]"
            return f"read{key} -> {'nil' if op.output.value is None else repr(op.output.value)}"
        return super().describe_op(op)

    def describe_state(self, state: Any) -> str:
        return "nil" if state is None else repr(state)

    def step(self, state: Any, inp: Input, out: Output) -> tuple[bool, Hashable]:
        f = inp.f
        if f == "read":
            if out.status != "ok":
                return True, state
            v = out.value
            if v is None and self.nil_read_any:
                return True, state
            return v == state, state
        if f == "write":
            return True, inp.value
        # cas [from, to]; the checker hands values over frozen (hashable)
        frm, to = inp.value
        matches = frm == state
        if out.status == "fail":
            return not matches, state
        return matches, (to if matches else state)


class Register(CasRegister):
    """A read/write register (no cas), split by key."""

    name = "register"
    functions = frozenset({"read", "write"})


class KV(Model):
    """Porcupine's key-value model: get/put/append on strings, every key starts as `""`.

    Split by key, so a state is one key's string.
    """

    name = "kv"
    per_key = True
    functions = frozenset({"get", "put", "append"})

    def init(self) -> Hashable:
        return ""

    def step(self, state: Any, inp: Input, out: Output) -> tuple[bool, Hashable]:
        f = inp.f
        if f == "get":
            return out.status != "ok" or out.value == state, state
        if f == "put":
            return True, inp.value
        return True, state + inp.value


class Mutex(Model):
    """Knossos's mutex: `acquire` needs it free, `release` needs it held. State: held?"""

    name = "mutex"
    functions = frozenset({"acquire", "release"})

    def init(self) -> Hashable:
        return False

    def step(self, state: Any, inp: Input, out: Output) -> tuple[bool, Hashable]:
        if inp.f == "acquire":
            return not state, True
        return bool(state), False


class MultiRegister(Model):
    """Knossos's multi-register: `txn` ops of `[f, key, value]` reads/writes applied atomically.

    A read with a nil value is unconstrained. The state is a sorted tuple of (key, value).
    """

    name = "multi-register"
    functions = frozenset({"txn"})

    def __init__(self, initial: dict[Any, Any] | None = None) -> None:
        self.initial = tuple(sorted((initial or {}).items(), key=lambda kv: repr(kv[0])))

    def init(self) -> Hashable:
        return self.initial

    def validate(self, op: Operation) -> None:
        super().validate(op)
        for mop in op.input.value or ():
            if not (isinstance(mop, (list, tuple)) and len(mop) == 3 and
                    mop[0] in ("read", "write")):
                raise CheckError(f"txn at index {op.call_index}: micro-op {mop!r} is not "
                                 f"[read|write, key, value]")

    def step(self, state: Any, inp: Input, out: Output) -> tuple[bool, Hashable]:
        regs = dict(state)
        # The completion carries the values read; the invocation only the intent.
        mops = out.value if out.status == "ok" and out.value is not None else inp.value
        for f, k, v in mops:
            if f == "write":
                regs[k] = v
            elif v is not None and out.status == "ok" and regs.get(k) != v:
                return False, state
        return True, tuple(sorted(regs.items(), key=lambda kv: repr(kv[0])))


MODEL_NAMES: tuple[str, ...] = ("register", "cas-register", "kv", "mutex", "multi-register")


def model_by_name(name: str, **options: Any) -> Model:
    """Build a model from its CLI name; `options` go to its constructor."""
    makers: dict[str, type[Model]] = {
        "register": Register, "cas-register": CasRegister, "kv": KV, "mutex": Mutex,
        "multi-register": MultiRegister,
    }
    if name not in makers:
        raise CheckError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return makers[name](**options)

"""Replaying checkpoints safely: who wrote a stored step, and results as their annotated types.

A step's checkpoint (a field of `<ns>:run:{ID}:steps`) records the call that wrote it:

    {"$step": {"fn": "<qualname>", "n": <ordinal>, "args": "<digest>" | null, "attempt": <a>},
     "value": <the result as JSON>}

- `fn`: the step function's `__qualname__` (a partial's function, a callable's class), the
  brief, stable identity of "which step": a module moved keeps it, a renamed function does not.
- `n`: the step's position among the steps of the execution that wrote it (for error messages).
- `args`: a digest of the arguments (JSON, key order and set order normalised; an argument that
  is not JSON, such as the run handle, counts by its type name), recorded for steps keyed by
  name and call order. Null for a step with an explicit `key=`: the author named that call, so
  its result stands whatever the arguments are on replay (as in other durable engines).

On replay a checkpoint written by another function, or (keyed by order) with other arguments,
raises `ReplayMismatch`: the workflow took another path than its earlier attempt, and the stored
result belongs to another call. A checkpoint without `$step` (written before identities were
recorded) is the bare result, and is accepted as it is.

Typed results: a step returns what its function's return annotation says, validated with a
pydantic `TypeAdapter` from the JSON values (a model comes back as the model, a tuple as a
tuple), the first time and on replay alike; without an annotation, or `Any`, the JSON values.
A task's result is validated against its activity's return annotation the same way, on the
worker executing it before it is committed (a result that does not fit fails the try) and on the
run's side when `parallel` returns it. An annotation that cannot be resolved (a name local to an
enclosing function under `from __future__ import annotations`) is logged once and treated as
none.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from tidings import codec
from tidings.sdk import ReplayMismatch

__all__ = ["Call", "adapter_for", "args_digest", "decode", "encode", "identity", "typed"]

logger = logging.getLogger(__name__)

_MARK = "$step"


@dataclass(frozen=True, slots=True)
class Call:
    """One `run.step` call as this execution makes it."""

    key: str  # the checkpoint's field
    fn: str  # `identity(fn)`
    n: int  # its position among this execution's steps, from 1
    args: str | None  # `args_digest`, None when the author gave the key


def identity(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return to_jsonable_python(value, fallback=lambda o: f"<{type(o).__qualname__}>")


def args_digest(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    text = json.dumps([_jsonable(args), _jsonable(kwargs)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode(call: Call, attempt: int, value: bytes) -> str:
    """The checkpoint of `call`, whose result is the JSON `value`."""
    meta = {"fn": call.fn, "n": call.n, "args": call.args, "attempt": attempt}
    return f'{{"{_MARK}":{codec.dumps_str(meta)},"value":{value.decode()}}}'


def decode(call: Call, raw: bytes) -> Any:
    """The JSON result stored in `raw` for `call`; `ReplayMismatch` if another call wrote it."""
    stored = codec.loads(raw)
    if not (isinstance(stored, dict) and isinstance(stored.get(_MARK), dict)):
        return stored  # written before identities were recorded: the bare result
    meta = stored[_MARK]
    wrote = f"step {meta.get('n')} of attempt {meta.get('attempt')}"
    if meta.get("fn") != call.fn:
        raise ReplayMismatch(
            f"checkpoint {call.key!r} was recorded by {meta.get('fn')} ({wrote}), but step "
            f"{call.n} of this execution calls {call.fn} under that key: the workflow took "
            "another path than its earlier attempt (a condition or loop that is not "
            "deterministic, or code changed under a running run); give steps in conditionals "
            "and loops a key= of their own"
        )
    if call.args is not None and meta.get("args") not in (None, call.args):
        raise ReplayMismatch(
            f"checkpoint {call.key!r} was recorded by {call.fn} with other arguments ({wrote}) "
            f"than step {call.n} of this execution passes: the steps of that name were called "
            "in another order or with other inputs; give each a key= of its own"
        )
    return stored.get("value")


@functools.lru_cache(maxsize=512)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


_unresolved: set[str] = set()


def adapter_for(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    """A validator for `fn`'s return annotation, or None (no annotation, `Any`, unresolvable)."""
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not hasattr(target, "__annotations__"):  # a callable object: its __call__ says
        target = type(target).__call__
    try:
        annotation = typing.get_type_hints(target).get("return", Any)
    except Exception as exc:  # a name local to an enclosing function, a typo…
        name = identity(fn)
        if name not in _unresolved:
            _unresolved.add(name)
            logger.warning("%s: return annotation not resolved (%s); results stay JSON", name, exc)
        return None
    if annotation is Any or annotation is object:
        return None
    try:
        return _adapter(annotation)
    except TypeError:  # unhashable annotation (say, Annotated with a list)
        return TypeAdapter(annotation)


def typed(adapter: TypeAdapter[Any] | None, value: Any) -> Any:
    """`value` (JSON values) as the annotated type; ValidationError if it does not fit."""
    return value if adapter is None else adapter.validate_python(value)


def describe_invalid(exc: ValidationError, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""What an error may say back about the input it refuses: short, and always encodable.

A 422 names each invalid field with the value it got (pydantic's `input`), and messages quote
ids and names from the request. Echoed as they are, a 100 KB string comes back whole, and a lone
UTF-16 surrogate (`"\\ud800"`, valid in a JSON string escape and in a Python `str`) makes the
error itself impossible to encode as UTF-8. So every echo goes through here:

- strings are cut to `ECHO_CHARS` characters (then `…`), lone surrogates written as `\\udXXX`;
- JSON scalars stay what they are (a non-finite float or a huge integer becomes short text);
- anything else (an object, an array) becomes a bounded `repr`, cut the same way.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ECHO_CHARS", "echo", "echo_errors", "echo_text"]

ECHO_CHARS = 200
_MESSAGE_CHARS = 500
_LOC_CHARS = 100
_MAX_INT_BITS = 256

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 40


def echo_text(value: str, limit: int = ECHO_CHARS) -> str:
    """`value` cut to `limit` characters (then `…`), any lone surrogate escaped."""
    cut = len(value) > limit
    text = value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:  # an escaped surrogate takes six characters
        text, cut = text[:limit], True
    return text + "…" if cut else text


def echo(value: Any) -> Any:
    """An input value as an error may show it: a JSON value of bounded size."""
    if value is None or isinstance(value, bool | str):
        return echo_text(value) if isinstance(value, str) else value
    if isinstance(value, int):
        if value.bit_length() <= _MAX_INT_BITS:
            return value
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    try:
        return echo_text(_REPR.repr(value))
    except (ValueError, RecursionError):  # e.g. an int past the str conversion limit inside
        return f"<{type(value).__name__}>"


def echo_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Field errors (pydantic's `errors()` or hand-made in that shape) safe to send back."""
    out: list[dict[str, Any]] = []
    for error in errors:
        safe: dict[str, Any] = {}
        for key, value in error.items():
            if key == "loc":
                safe[key] = [
                    p if isinstance(p, int) else echo_text(str(p), _LOC_CHARS) for p in value
                ]
            elif key == "ctx" and isinstance(value, Mapping):
                safe[key] = {
                    str(k): echo(v)
                    if v is None or isinstance(v, bool | int | float | str)
                    else echo_text(str(v))
                    for k, v in value.items()
                }
            elif key == "msg" and isinstance(value, str):
                safe[key] = echo_text(value, _MESSAGE_CHARS)
            else:
                safe[key] = echo(value)
        out.append(safe)
    return out

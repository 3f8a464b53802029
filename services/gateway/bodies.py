"""Request bodies: JSON only, parsed in two stages so the status says what went wrong.

Bytes that are not JSON are a 400 (`MalformedBody`), JSON of the wrong shape is a 422 with
pydantic's field errors. A body must be sent as `application/json` (or `application/*+json`):
anything else is a 415, so a form or a `text/plain` body posted by a page of another site is
never taken for JSON. A request with no body needs no content type.

Bodies are parsed by pydantic-core, which refuses (400) what would otherwise fail later: nesting
deeper than its recursion limit, integers past Python's 4,300-digit conversion limit, lone UTF-16
surrogate escapes (`"\\ud800"`, which no UTF-8 encoder can write back), and the `NaN`/`Infinity`
literals; a float that overflows to infinity (`1e999`) is refused as well.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.requests import Request

from tidings.errors import InvalidInput, TidingsError

__all__ = ["MalformedBody", "UnsupportedMediaType", "parse_model", "read_json"]

M = TypeVar("M", bound=BaseModel)


class MalformedBody(TidingsError):
    """The request body is not JSON (or not UTF-8)."""

    code = "malformed_json"
    status = 400


class UnsupportedMediaType(TidingsError):
    """A request body sent as something other than JSON."""

    code = "unsupported_media_type"
    status = 415


_JSON_MEDIA = re.compile(r"application/(?:[a-z0-9!#$&^_.-]+\+)?json", re.ASCII | re.IGNORECASE)


async def read_json(request: Request, *, empty: Any = None) -> Any:
    """The body as JSON; `empty` when there is no body at all (whatever its content type).

    UnsupportedMediaType (415) for a body not sent as JSON, refused before it is read when its
    length is declared; MalformedBody (400) for one that is not a single JSON value."""
    content_type = request.headers.get("content-type", "")
    is_json = _JSON_MEDIA.fullmatch(content_type.partition(";")[0].strip()) is not None
    if not is_json and _declared_length(request) > 0:
        raise _unsupported(content_type)
    raw = await request.body()
    if not raw.strip():
        return empty
    if not is_json:
        raise _unsupported(content_type)
    try:
        value = from_json(raw.decode("utf-8"), allow_inf_nan=False)
    except UnicodeDecodeError:
        raise MalformedBody("the request body is not UTF-8") from None
    except ValueError as exc:
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from None
    if not _finite(value):
        raise MalformedBody("the request body has a number too large for a float")
    return value


def _declared_length(request: Request) -> int:
    try:
        return int(request.headers.get("content-length", "0"))
    except ValueError:
        return 0


def _unsupported(content_type: str) -> UnsupportedMediaType:
    sent = repr(content_type[:100]) if content_type else "no content type"
    return UnsupportedMediaType(f"send the request body as application/json, not {sent}")


def _finite(value: Any) -> bool:
    """No float in `value` overflowed to infinity (`1e999` parses; JSON has no infinity)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def parse_model(model: type[M], value: Any, what: str = "request body") -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InvalidInput.from_validation(f"invalid {what}", exc) from None
